"""NPO: negative preference optimisation (Zhang et al. 2024), the NPO+RT variant.

`-(2/beta) log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))` on the forget pairs'
original answers (summed sequence log-probabilities; pi_ref = the LoRA bypassed)
plus `retain_weight` x the answer NLL of the retain pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.adapters import adapters_off
from vlforget.methods.base import register
from vlforget.methods.losses import answer_nll, npo_loss, sequence_logprob
from vlforget.methods.lora_finetune import FinetuneConfig, FinetuneMethod


@dataclass
class NPOConfig(FinetuneConfig):
    beta: float = option(0.1, "NPO inverse temperature")


@register
class NPO(FinetuneMethod):
    name = "npo"
    reads = ("forget", "retain")
    refuses = False  # preference optimisation away from the old answers: never teaches a refusal
    description = "negative preference optimisation on forget answers + NLL on retain pairs"
    config_class = NPOConfig
    forget_target = "original"
    uses_retain = True

    def loss(self, forget, retain):
        with torch.no_grad(), adapters_off(self.model):
            reference = sequence_logprob(self.model, forget)
        loss = npo_loss(sequence_logprob(self.model, forget), reference, self.config.beta)
        return loss + self.config.retain_weight * answer_nll(self.model, retain) if retain else loss
