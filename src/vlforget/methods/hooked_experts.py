"""Shared machinery of CORE's expert baselines (gmm, eproj, moe_adapters, o3; docs/methods.md).

All four are trained request after request to give each forget pair its refusal
(NLL of the refusal its forget pairs carry: `HookedMethod.fit_refusals`; gmm, which has
no gate, adds the retain pairs' answer NLL) and differ in *what* is trained and *how a
query finds it* at inference. They act through forward hooks installed only inside
`HookedMethod.hooked()`, with a per-row route, so one batch can mix queries that use
different experts (or none).

The three gated ones (eproj, moe_adapters, o3) score how much a query belongs to a
request and calibrate the cut on that request's training pairs with `gate_threshold`:
between the forget and the retain pairs' scores when retain pairs are given (as CORE's
gate uses retain pairs as negatives), else at a quantile of the forget pairs' scores
(their forget-only form, the papers' setting).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig
from vlforget.methods.batches import Batches
from vlforget.methods.features import token_bag
from vlforget.methods.output_adapter import OutputAdapter
from vlforget.methods.training import shard, train_steps
from vlforget.types import DeletionRequest


@torch.no_grad()
def query_features(backbone, images, instructions, buckets: int = 256) -> torch.Tensor:
    """[B, 2 Dv + buckets] unit-norm joint feature of image and instruction.

    Image: mean- and max-pooled frozen vision features (what the connector reads);
    max pooling keeps a small object visible next to the scene average. The image and
    instruction halves have equal norm, so a cosine is the mean of the two cosines.
    """
    vision = backbone.vision_features(list(images)).float()
    image = F.normalize(torch.cat([vision.mean(1), vision.amax(1)], 1), dim=-1)
    text = token_bag(backbone, list(instructions), buckets).to(image.device)  # built on the CPU
    return torch.cat([image, text], 1) / math.sqrt(2.0)


@dataclass
class ExpertConfig(MethodConfig):
    steps: int = option(60, "optimiser steps per request")
    batch_size: int = option(16, "forget pairs per step")
    lr: float = option(1e-3, "AdamW learning rate")
    feature_buckets: int = option(256, "hash buckets of the instruction token bag in the query features")
    negative_weight: float = option(1.0, "gated experts with retain pairs: weight of a retain pair let through "
                                    "relative to a forget pair left out when the gate's cut is placed (1 = balanced "
                                    "error; above 1 fewer false gates, at the cost of forget recall)")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.feature_buckets < 1:
            raise ValueError("steps >= 0, batch_size >= 1, lr > 0 and feature_buckets >= 1 are required")
        if self.negative_weight <= 0:
            raise ValueError(f"negative_weight must be > 0, got {self.negative_weight}")


def gate_threshold(forget: torch.Tensor, retain: torch.Tensor | None, quantile: float,
                   negative_weight: float = 1.0) -> torch.Tensor:
    """The score from which a query counts as the request's (higher score = more the request's).

    With retain scores: the cut with the least weighted error on the request's own pairs,
    (forget pairs below it) / Nf + negative_weight x (retain pairs at or above it) / Nr,
    placed midway between the two scores it separates; ties go to the lowest cut (the most
    recall). Without (no retain pairs, or use_retain off): the `quantile` of the forget
    scores, the forget-only form.
    """
    if retain is None or len(retain) == 0:
        return torch.quantile(forget, quantile)
    scores = torch.cat([forget, retain]).sort().values
    # Candidate cuts: below everything, midway between neighbours, above everything.
    cuts = torch.cat([scores[:1] - 1e-6, (scores[1:] + scores[:-1]) / 2, scores[-1:] + 1e-6])
    missed = (forget[None, :] < cuts[:, None]).float().mean(1)
    let_through = (retain[None, :] >= cuts[:, None]).float().mean(1)
    return cuts[torch.argmin(missed + negative_weight * let_through)]


class HookedMethod(Method):
    """A method that acts through hooks living only inside `hooked(route)`.

    `route` says per batch row what to apply (subclass-specific: an expert index, -1
    for none, or weights); hooks read it from `self._route`.
    """

    config_class = ExpertConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        self._route: Any = None

    def install_hooks(self) -> list:
        """Register this method's hooks; return their handles."""
        raise NotImplementedError

    def route(self, images, instructions) -> Any:
        """Per-row route of a batch at inference."""
        raise NotImplementedError

    def training_route(self, n: int) -> Any:
        """Per-row route while the current request trains (every row: the new expert)."""
        raise NotImplementedError

    @contextmanager
    def hooked(self, route):
        handles = self.install_hooks()
        self._route = route
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._route = None

    def features(self, images, instructions) -> torch.Tensor:
        return query_features(self.backbone, images, instructions, self.config.feature_buckets)

    def pair_features(self, samples: list) -> torch.Tensor | None:
        """Query features of training pairs (None for none: no retain pairs, or use_retain off)."""
        if not samples:
            return None
        return self.features([s.image for s in samples], [s.instruction for s in samples])

    def generate(self, images, instructions, batch_size: int = 64, **kwargs) -> list[str]:
        # Route chunk by chunk so the hooks see exactly the rows they were routed for.
        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            ims, ins = list(images[start:start + batch_size]), list(instructions[start:start + batch_size])
            with self.hooked(self.route(ims, ins)):
                answers += self.backbone.generate(ims, ins, batch_size=batch_size, **kwargs)
        return answers

    def fit_refusals(self, request: DeletionRequest, params: list[torch.Tensor], extra_loss=None,
                     after_backward=None, retain_weight: float = 0.0) -> None:
        """The shared loop: NLL of the refusal on the request's forget pairs (+ `retain_weight`
        x the NLL of the retain pairs' own answers through the same route, when given)."""
        cfg = self.config
        batches = Batches(request.forget_train, cfg.batch_size, self.request_seed())
        retain = (Batches(request.retain_train, cfg.batch_size, self.request_seed(500))
                  if retain_weight > 0 and request.retain_train else None)
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        model = self.backbone.model
        model.eval()  # frozen parts behave as at inference (no dropout)

        def nll(drawn) -> torch.Tensor:
            images, instructions, targets = shard(*drawn)  # this process's slice of the batch
            batch = self.backbone.build_batch(images, instructions, targets)
            with self.hooked(self.training_route(len(images))):
                return model(**batch).loss

        def step_loss(step: int) -> torch.Tensor:
            loss = nll(batches.next())
            if retain is not None:
                loss = loss + retain_weight * nll(retain.next())
            return loss + extra_loss() if extra_loss is not None else loss

        train_steps(params, optimiser, cfg.steps, step_loss, after_backward=after_backward)
        for p in params:
            p.requires_grad_(False)


def add_output_adapter(h: torch.Tensor, rows: torch.Tensor, adapter: OutputAdapter) -> torch.Tensor:
    """h with adapter(h) added on `rows` (CORE's refuser output adapter, see refusers.py)."""
    out = h.clone()
    out[rows] = h[rows] + adapter(h[rows])
    return out


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix`, with the prefix dropped (one module's state dict)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
