"""Gradient ascent (GA): maximise the NLL of the forget pairs' original answers.

The simplest unlearning baseline (as in open-unlearning's GradAscent): no retain term,
no refusal target. It forgets by destroying answers, so it produces no refusals.
The loss lives in `lora_finetune.AscentFinetune`, shared with graddiff and kl.
"""

from __future__ import annotations

from vlforget.methods.base import register
from vlforget.methods.lora_finetune import AscentFinetune


@register
class GradientAscent(AscentFinetune):
    name = "ga"
    reads = ("forget",)  # forget pairs' original answers only
    refuses = False  # gradient ascent: it destroys the old answers, it never teaches a refusal
    description = "gradient ascent on the forget pairs' original answers"
