"""Gradient difference (GradDiff): ascent on forget answers, descent on retain answers.

Gradient ascent on the forget pairs' original answers (`lora_finetune.AscentFinetune`)
plus `retain_weight` x the answer NLL of the current request's retain pairs.

Validation sequence, 3 requests (docs/methods.md): 60 steps (the fine-tuning default) destroy
the model (AR 5.8); 40 keep AR 39, 30 AR 63 with leak 55, 20 AR 83 with leak 78. Default: 30.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.losses import answer_nll
from vlforget.methods.lora_finetune import AscentFinetune, FinetuneConfig


@dataclass
class GradDiffConfig(FinetuneConfig):
    steps: int = option(30, "optimiser steps per request (the ascent term has no floor: 60 destroyed the "
                            "model on the validation sequence)", ge=0)


@register
class GradDiff(AscentFinetune):
    name = "graddiff"
    reads = ("forget", "retain")
    refuses = False  # gradient ascent (+ retain descent): never teaches a refusal
    description = "gradient ascent on forget answers + descent on retain answers"
    uses_retain = True
    config_class = GradDiffConfig

    def loss(self, forget, retain):
        loss = super().loss(forget, retain)
        return loss + self.config.retain_weight * answer_nll(self.model, retain) if retain else loss
