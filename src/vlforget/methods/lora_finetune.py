"""Fine-tuning through one LoRA on the language model, and the two losses most baselines share.

`FinetuneMethod` owns the loop: for each request it draws batches of that request's
forget pairs (and retain pairs, for methods that use them) and minimises
`self.loss(...)` through the shared `training.train_steps` (so it runs under
`accelerate`: each process trains on its slice of every batch, gradients averaged).
The baselines built on it only define that loss, in the style of open-unlearning's
trainer variants: `RefusalFinetune` (the refusal NLL + the retain NLL: idknll, and
ewc and lwf with their regularisers) and `AscentFinetune` (ascent on the original answers: ga, and
graddiff and kl with their retain terms). One adapter is trained request after
request: that is the naive continual setting these baselines stand for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.adapters import add_lora, adapters_off, load_lora_state, lora_state
from vlforget.methods.base import Method, MethodConfig
from vlforget.methods.batches import Batches
from vlforget.methods.losses import answer_nll
from vlforget.methods.training import shard, train_steps
from vlforget.types import DeletionRequest


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
        seed = self.request_seed()
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


class RefusalFinetune(FinetuneMethod):
    """Fine-tunes the forget pairs onto their context-aware refusals (answer NLL), plus,
    for subclasses with `uses_retain`, `retain_weight` x the retain pairs' answer NLL
    (IdkNLL's standard form; retain is None without retain pairs or at weight 0)."""

    def loss(self, forget, retain):
        loss = answer_nll(self.model, forget)
        if retain is None or self.config.retain_weight == 0:
            return loss  # the forget-only form
        return loss + self.config.retain_weight * answer_nll(self.model, retain)


class AscentFinetune(FinetuneMethod):
    """Gradient ascent on the forget pairs' original answers (what the model used to say)."""

    forget_target = "original"

    def loss(self, forget, retain):
        return -answer_nll(self.model, forget)
