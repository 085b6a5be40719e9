"""Gradient difference (GradDiff): ascent on forget answers, descent on retain answers.

Gradient ascent on the forget pairs' original answers (`lora_finetune.AscentFinetune`)
plus `retain_weight` x the answer NLL of the current request's retain pairs.
"""

from __future__ import annotations

from vlforget.methods.base import register
from vlforget.methods.losses import answer_nll
from vlforget.methods.lora_finetune import AscentFinetune


@register
class GradDiff(AscentFinetune):
    name = "graddiff"
    reads = ("forget", "retain")
    refuses = False  # gradient ascent (+ retain descent): never teaches a refusal
    description = "gradient ascent on forget answers + descent on retain answers"
    uses_retain = True

    def loss(self, forget, retain):
        loss = super().loss(forget, retain)
        return loss + self.config.retain_weight * answer_nll(self.model, retain) if retain else loss
