"""MMUnlearner (arXiv 2502.11051; code `Z1zs/MMUnlearner`): Fisher-saliency-masked ascent and descent.

A weight-saliency mask from diagonal Fisher information (forget importance > gamma x
retained importance) selects which weights may move; then gradient ascent on the
forget pairs' original answers and descent on retain pairs, both masked. A new mask
per request; retained importance accumulates across requests (element-wise max), so
weights that mattered to any earlier request's retained data stay protected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.methods.batches import Batches
from vlforget.methods.losses import answer_nll
from vlforget.methods.training import accumulate_squared_grads, shard, train_steps
from vlforget.types import DeletionRequest


# Their released code edits every projection / MLP weight of the MLLM (vision tower,
# projector and LLM), not embeddings, norms or the output head.
SALIENCY_TARGETS = r".*(_proj|fc\d|linear_\d)\.weight$"


@dataclass
class MMUnlearnerConfig(MethodConfig):
    steps: int = option(15, "optimiser steps per request (one forget + one retain batch each); ascent has no "
                            "floor: 20 destroyed the model on the validation sequence (AR 10)")
    batch_size: int = option(16, "pairs per batch (forget and retain batches each)")
    lr: float = option(1e-3, "AdamW learning rate (no weight decay, so unmasked weights never move)")
    forget_weight: float = option(1.0, "weight of the gradient-ascent term on the forget pairs' original answers")
    retain_weight: float = option(1.0, "weight of the NLL term on retain pairs")
    saliency_ratio: float = option(3.0, "gamma: a weight is updated when forget Fisher > gamma x retained Fisher")
    fisher_batches: int = option(4, "batches used to estimate each diagonal Fisher")
    targets: str = option(SALIENCY_TARGETS, "regex of parameter names that may be edited")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.fisher_batches < 1:
            raise ValueError("steps >= 0, batch_size >= 1, lr > 0 and fisher_batches >= 1 are required")
        if self.saliency_ratio < 0:
            raise ValueError(f"saliency_ratio must be >= 0, got {self.saliency_ratio}")


@register
class MMUnlearner(Method):
    name = "mmunlearner"
    reads = ("forget", "retain")
    refuses = False  # masked gradient ascent: never teaches a refusal
    description = ("MMUnlearner: Fisher saliency mask (forget vs retained importance) restricts gradient ascent "
                   "on forget answers and descent on retain answers; retained importance accumulates")
    config_class = MMUnlearnerConfig

    def __init__(self, backbone, config: MMUnlearnerConfig | None = None):
        super().__init__(backbone, config)
        pattern = re.compile(self.config.targets)
        self.params = {n: p for n, p in backbone.model.named_parameters() if pattern.fullmatch(n)}
        if not self.params:
            raise ValueError(f"no parameter matches targets {self.config.targets!r}")
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.protected = {n: torch.zeros_like(p) for n, p in self.params.items()}  # accumulated retained Fisher
        self.edited = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}  # union of masks
        self.sparsity: list[float] = []  # per request: share of candidate weights in its mask

    @property
    def model(self):
        return self.backbone.model

    def fisher(self, batches: Batches) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher (mean squared gradient of the answer NLL), divided by
        its mean over all candidate weights: forget and retained sets have different loss
        scales, and the saliency test should compare where each set's importance lies."""
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        accumulate_squared_grads(self.model, list(self.params.values()), list(total.values()),
                                 lambda: answer_nll(self.model, self.backbone.build_batch(*batches.next())),
                                 self.config.fisher_batches)
        scale = sum(t.sum() for t in total.values()) / sum(t.numel() for t in total.values())
        return {n: t / scale.clamp(min=1e-30) for n, t in total.items()}

    def saliency_mask(self, forget: dict[str, torch.Tensor], retained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: forget[n] > self.config.saliency_ratio * retained[n] for n in forget}

    def _unlearn(self, request: DeletionRequest) -> None:
        cfg = self.config
        seed = self.request_seed()
        forget = Batches(request.forget_train, cfg.batch_size, seed, target="original")
        retain = Batches(request.retain_train, cfg.batch_size, seed + 1) if request.retain_train else None
        forget_fisher = self.fisher(Batches(request.forget_train, cfg.batch_size, seed + 2, target="original"))
        if retain is not None:
            retain_fisher = self.fisher(Batches(request.retain_train, cfg.batch_size, seed + 3))
            for n in self.protected:
                self.protected[n] = torch.maximum(self.protected[n], retain_fisher[n])
        mask = self.saliency_mask(forget_fisher, self.protected)
        for n in mask:
            self.edited[n] |= mask[n]
        self.sparsity.append(float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values())))

        params = list(self.params.values())
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        self.model.train()

        def step_loss(step: int) -> torch.Tensor:
            loss = -cfg.forget_weight * answer_nll(self.model, self.backbone.build_batch(*shard(*forget.next())))
            if retain is not None:
                loss = loss + cfg.retain_weight * answer_nll(self.model, self.backbone.build_batch(*shard(*retain.next())))
            return loss

        def apply_mask() -> None:
            for n, p in self.params.items():
                p.grad *= mask[n]  # Adam moments of masked-out entries stay 0, so they never move

        train_steps(params, optimiser, cfg.steps, step_loss, after_backward=apply_mask)
        self.model.eval()

    # -- state: edited entries only (plus the accumulated protection) ----------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for n, p in self.params.items():
            tensors[f"edited.{n}"] = self.edited[n].to(torch.uint8)
            tensors[f"values.{n}"] = p.detach()[self.edited[n]].clone()
            tensors[f"protected.{n}"] = self.protected[n].clone()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                self.edited[n] = tensors[f"edited.{n}"].bool()
                p[self.edited[n]] = tensors[f"values.{n}"]
                self.protected[n] = tensors[f"protected.{n}"].clone()

    def state_json(self) -> dict:
        return {"mask_share": self.sparsity}

    def load_state_json(self, data: dict) -> None:
        self.sparsity = list(data.get("mask_share", []))

    def report_extras(self) -> dict:
        return {"mask_share": self.sparsity}
