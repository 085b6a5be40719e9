"""Gradient ascent (GA): maximise the NLL of the forget pairs' original answers.

The simplest unlearning baseline (as in open-unlearning's GradAscent): no retain term,
no refusal target. It forgets by destroying answers, so it produces no refusals.
The loss lives in `lora_finetune.AscentFinetune`, shared with graddiff and kl.

Ascent has no floor: its step budget is the method. Validation sequence, 3 requests
(docs/methods.md): 60 steps (the fine-tuning default) and 20 destroy the model (AR 0,
S 0), 15 too; 10 keep AR 69 with leak 80; 5 barely forget (leak 92). Default: 10.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.lora_finetune import AscentFinetune, FinetuneConfig


@dataclass
class GAConfig(FinetuneConfig):
    steps: int = option(10, "optimiser steps per request (ascent has no floor: at 15+ it destroys the model "
                            "on the validation sequence)", ge=0)


@register
class GradientAscent(AscentFinetune):
    name = "ga"
    reads = ("forget",)  # forget pairs' original answers only
    refuses = False  # gradient ascent: it destroys the old answers, it never teaches a refusal
    description = "gradient ascent on the forget pairs' original answers"
    config_class = GAConfig
