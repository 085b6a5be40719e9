"""EWC: elastic weight consolidation (Kirkpatrick et al. 2017) on refusal fine-tuning.

IdkNLL's loss (`lora_finetune.RefusalFinetune`: refusal NLL on forget pairs + retain
NLL) + `ewc_lambda` x sum_i F_i (theta_i - theta*_i)^2 over the LoRA parameters: EWC is a
continual-learning regulariser on top of the base unlearning loss, and that loss is
IdkNLL's standard form. After each request the diagonal Fisher of that loss is estimated
on the request's training pairs (squared gradients, forget + retain batches as trained),
divided by its mean over all LoRA parameters, and accumulated; theta* is the adapter
after that request. Both are kept in the state, no raw data.

Why the Fisher is normalised: it is measured right after training on the same pairs,
where their loss is near its minimum and its squared gradients are tiny (the raw
penalty was about 1e-4 of the loss at lambda 50, so EWC was IdkNLL). Normalised to mean 1
per request, F weighs where the adapter matters relative to the rest, and `ewc_lambda`
alone sets the strength: the penalty is lambda x (a Fisher-weighted sum of squared
moves), whatever the loss scale. Measured: without the penalty one request's training
moves the adapter by a Fisher-weighted sum of ~40, against a task loss of ~0.1-3, so
lambda 0.01-0.1 is weak and 1-100 binding. Validation sequence, 3 requests
(docs/methods.md): CRR Last 21.7 / 19.2 / 33.3 / 30.0 / 28.3 at lambda 0.01 / 0.1 / 1 /
10 / 100, AR 69 / 67 / 68 / 80 / 83; the tuning rule ranks lambda 10 first (52.4, with
1 at 52.1 and 100 at 51.4): the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.batches import Batches
from vlforget.methods.lora_finetune import FinetuneConfig, RefusalFinetune
from vlforget.methods.training import accumulate_squared_grads


@dataclass
class EWCConfig(FinetuneConfig):
    ewc_lambda: float = option(10.0, "weight of the EWC penalty (on the Fisher normalised to mean 1 per request; "
                                     "validation: 0.01-0.1 act like no penalty, 1-100 hold earlier requests)")
    fisher_batches: int = option(4, "batches used to estimate the diagonal Fisher after each request")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ewc_lambda < 0 or self.fisher_batches < 1:
            raise ValueError(f"ewc_lambda >= 0 and fisher_batches >= 1 are required, got {self.ewc_lambda} and "
                             f"{self.fisher_batches}")


def normalised_fisher(fisher: list[torch.Tensor]) -> list[torch.Tensor]:
    """The diagonal Fisher divided by its mean over every parameter (all zero stays zero)."""
    mean = sum(f.sum() for f in fisher) / sum(f.numel() for f in fisher)
    return [f / mean.clamp(min=1e-30) for f in fisher]


@register
class EWC(RefusalFinetune):
    name = "ewc"
    reads = ("forget", "retain")  # IdkNLL's loss (forget + retain NLL) and its Fisher
    uses_retain = True
    description = "refusal fine-tuning with elastic weight consolidation against earlier requests"
    config_class = EWCConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        # Accumulated diagonal Fisher and the adapter values it was measured at.
        self.fisher = [torch.zeros_like(p) for p in self.params]
        self.anchor = [p.detach().clone() for p in self.params]

    def loss(self, forget, retain):
        penalty = sum((f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, self.params, self.anchor))
        return super().loss(forget, retain) + self.config.ewc_lambda * penalty

    def after_request(self, request):
        forget = Batches(request.forget_train, self.config.batch_size, self.config.seed + 7)
        retain = Batches(request.retain_train, self.config.batch_size, self.config.seed + 8) \
            if request.retain_train else None

        def task_loss() -> torch.Tensor:  # the request's own loss (penalty excluded), as trained
            return RefusalFinetune.loss(self, self.batch(*forget.next()), self.batch(*retain.next()) if retain else None)

        fisher = [torch.zeros_like(p) for p in self.params]
        accumulate_squared_grads(self.model, self.params, fisher, task_loss, self.config.fisher_batches)
        for total, f in zip(self.fisher, normalised_fisher(fisher)):
            total += f
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
