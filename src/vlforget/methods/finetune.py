"""Fine-tuning methods through one LoRA on the language model.

`FinetuneMethod` owns the loop: for each request it draws batches of that request's
forget pairs (and retain pairs, for methods that use them) and minimises
`self.loss(...)` through the shared `training.train_steps` (so it runs under
`accelerate`: each process trains on its slice of every batch, gradients averaged). The classic baselines (`classic.py`) only define that loss, in the
style of open-unlearning's trainer variants (GA -> GradDiff -> KL, IdkNLL -> EWC ...).
One adapter is trained request after request: that is the naive continual setting
these baselines stand for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.adapters import add_lora, adapters_off, load_lora_state, lora_state
from vlforget.methods.base import Method, MethodConfig
from vlforget.methods.training import shard, train_steps
from vlforget.types import DeletionRequest, Sample


@dataclass
class FinetuneConfig(MethodConfig):
    steps: int = option(60, "optimiser steps per request", ge=0)
    batch_size: int = option(16, "pairs per batch (forget and retain batches each)", ge=1)
    lr: float = option(1e-3, "AdamW learning rate of the LoRA parameters", gt=0)
    lora_rank: int = option(8, "LoRA rank on the language model's attention and MLP projections", ge=1)
    lora_alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)", gt=0)
    retain_weight: float = option(1.0, "weight of the retain term, for methods that have one", ge=0)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.lora_rank < 1:
            raise ValueError("steps >= 0, batch_size >= 1, lr > 0 and lora_rank >= 1 are required")


class Batches:
    """Seeded random batches of (images, instructions, targets)."""

    def __init__(self, samples: list[Sample], batch_size: int, seed: int, target: str = "answer"):
        if not samples:
            raise ValueError("cannot draw batches from an empty set")
        self.samples, self.batch_size, self.target = samples, batch_size, target
        self.rng = random.Random(seed)

    def target_of(self, s: Sample) -> str:
        return s.meta.get("original_answer", s.answer) if self.target == "original" else s.answer

    def next(self) -> tuple[list, list[str], list[str]]:
        chosen = [self.rng.choice(self.samples) for _ in range(self.batch_size)]
        return [s.image for s in chosen], [s.instruction for s in chosen], [self.target_of(s) for s in chosen]


class FinetuneMethod(Method):
    """Trains one LoRA adapter with a per-method loss; subclasses define `loss`."""

    config_class = FinetuneConfig
    forget_target = "answer"  # "answer" = the refusal; "original" = what the model used to say
    uses_retain = False

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        self.params = add_lora(backbone.model, self.config.lora_rank, self.config.lora_alpha)

    @property
    def model(self):
        return self.backbone.model

    def batch(self, images, instructions, targets) -> dict:
        return self.backbone.build_batch(images, instructions, targets)

    def reference_logits(self, batch: dict) -> torch.Tensor:
        """Logits of the original model (adapter bypassed), without gradients."""
        with torch.no_grad(), adapters_off(self.model):
            return self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    # -- hooks for subclasses --------------------------------------------------------
    def before_request(self, request: DeletionRequest) -> None:
        pass

    def after_request(self, request: DeletionRequest) -> None:
        pass

    def loss(self, forget: dict, retain: dict | None) -> torch.Tensor:
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------
    def _unlearn(self, request: DeletionRequest) -> None:
        cfg = self.config
        seed = cfg.seed * 1000 + len(self.applied)
        forget = Batches(request.forget_train, cfg.batch_size, seed, self.forget_target)
        retain = Batches(request.retain_train, cfg.batch_size, seed + 1) if self.uses_retain and request.retain_train else None
        self.before_request(request)
        optimiser = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.model.train()

        def step_loss(step: int) -> torch.Tensor:
            # Every process draws the full batch (the RNGs stay in step) and keeps its slice.
            f = self.batch(*shard(*forget.next()))
            r = self.batch(*shard(*retain.next())) if retain else None
            return self.loss(f, r)

        train_steps(self.params, optimiser, cfg.steps, step_loss)
        self.model.eval()
        self.after_request(request)

    # -- state ------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return lora_state(self.model)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        load_lora_state(self.model, {k: v for k, v in tensors.items() if "lora_" in k})
