"""SCRUB: teacher-student unlearning (arXiv 2302.09880).

The teacher is the original model (the LoRA bypassed). Max-steps move the student away
from the teacher on forget queries (KL maximised on their original answers), min-steps
keep it close on retain pairs (KL + the retain task loss) and learn the refusal on
forget pairs; max-steps alternate with min-steps over the first `max_phase` steps of
each request only. Reuses `FinetuneMethod`'s loop; answers with `Backbone.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.batches import Batches
from vlforget.methods.losses import answer_kl, answer_nll
from vlforget.methods.lora_finetune import FinetuneConfig, FinetuneMethod
from vlforget.methods.training import shard


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@dataclass
class SCRUBConfig(FinetuneConfig):
    max_phase: int = option(20, "the first steps of each request on which max-steps alternate with min-steps (SCRUB stops maximising early)")
    alpha: float = option(1.0, "weight of the KL to the teacher on retain pairs (min-steps)")
    gamma: float = option(1.0, "weight of the retain task loss (answer NLL) in min-steps")
    forget_kl_weight: float = option(1.0, "weight of the KL maximised on forget pairs (max-steps)")


@register
class SCRUB(FinetuneMethod):
    name = "scrub"
    reads = ("forget", "retain")
    description = "SCRUB teacher-student: move away from the original on forget pairs, stay close on retain pairs, learn the refusal"
    config_class = SCRUBConfig
    uses_retain = True

    def before_request(self, request):
        # Max-steps push away from what the teacher says on forget queries: teacher-force
        # its original answers. The refusal batches (min-steps) come from the loop.
        seed = self.request_seed(2)
        self.original_answers = Batches(request.forget_train, self.config.batch_size, seed, target="original")
        self.step = 0

    def is_max_step(self, step: int) -> bool:
        # A min-step comes first: at the start the student equals the teacher, the KL
        # sits at its minimum and its gradient is zero, so a max-step there does nothing.
        return step < self.config.max_phase and step % 2 == 1

    def max_loss(self) -> torch.Tensor:
        batch = self.batch(*shard(*self.original_answers.next()))
        student = self.model(**_inputs(batch)).logits
        return -self.config.forget_kl_weight * answer_kl(student, self.reference_logits(batch), batch["labels"])

    def min_loss(self, forget, retain) -> torch.Tensor:
        loss = answer_nll(self.model, forget)  # the task on forget pairs here: the refusal
        if retain is not None:
            out = self.model(**retain)
            loss = loss + self.config.alpha * answer_kl(out.logits, self.reference_logits(retain), retain["labels"])
            loss = loss + self.config.gamma * out.loss
        return loss

    def loss(self, forget, retain):
        step, self.step = self.step, self.step + 1
        return self.max_loss() if self.is_max_step(step) else self.min_loss(forget, retain)
