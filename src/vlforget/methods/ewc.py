"""EWC: elastic weight consolidation (Kirkpatrick et al. 2017) on refusal fine-tuning.

The refusal NLL (`lora_finetune.RefusalFinetune`) + `ewc_lambda` x
sum_i F_i (theta_i - theta*_i)^2 over the LoRA parameters. After each request the
diagonal Fisher is estimated on that request's forget pairs (squared gradients of the
refusal NLL) and accumulated; theta* is the adapter after that request. Both are kept
in the state, no raw data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.batches import Batches
from vlforget.methods.losses import answer_nll
from vlforget.methods.lora_finetune import FinetuneConfig, RefusalFinetune
from vlforget.methods.training import accumulate_squared_grads


@dataclass
class EWCConfig(FinetuneConfig):
    ewc_lambda: float = option(50.0, "weight of the EWC penalty")
    fisher_batches: int = option(4, "batches used to estimate the diagonal Fisher after each request")


@register
class EWC(RefusalFinetune):
    name = "ewc"
    description = "refusal fine-tuning with elastic weight consolidation against earlier requests"
    config_class = EWCConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        # Accumulated diagonal Fisher and the adapter values it was measured at.
        self.fisher = [torch.zeros_like(p) for p in self.params]
        self.anchor = [p.detach().clone() for p in self.params]

    def loss(self, forget, retain):
        penalty = sum((f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, self.params, self.anchor))
        return answer_nll(self.model, forget) + self.config.ewc_lambda * penalty

    def after_request(self, request):
        batches = Batches(request.forget_train, self.config.batch_size, self.config.seed + 7)
        accumulate_squared_grads(self.model, self.params, self.fisher,
                                 lambda: answer_nll(self.model, self.batch(*batches.next())), self.config.fisher_batches)
        self.anchor = [p.detach().clone() for p in self.params]

    def state_tensors(self):
        tensors = super().state_tensors()
        tensors.update({f"ewc.fisher.{i}": f for i, f in enumerate(self.fisher)})
        tensors.update({f"ewc.anchor.{i}": a for i, a in enumerate(self.anchor)})
        return tensors

    def load_state_tensors(self, tensors):
        super().load_state_tensors(tensors)
        self.fisher = [tensors[f"ewc.fisher.{i}"] for i in range(len(self.params))]
        self.anchor = [tensors[f"ewc.anchor.{i}"] for i in range(len(self.params))]
