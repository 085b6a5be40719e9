"""GA + KL: ascent on forget answers, staying close to the original model on retain pairs.

Gradient ascent on the forget pairs' original answers (`lora_finetune.AscentFinetune`)
plus `retain_weight` x KL(original || current) over the answer tokens of the current
request's retain pairs; "the original" is the same network with the LoRA bypassed.

Validation sequence, 3 requests (docs/methods.md): 60 steps (the fine-tuning default) destroy
the model (AR 14.2); 40 keep AR 34, 30 AR 69 with leak 62, 20 AR 80 with leak 70. Default: 30.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.losses import answer_kl
from vlforget.methods.lora_finetune import AscentFinetune, FinetuneConfig


@dataclass
class KLConfig(FinetuneConfig):
    steps: int = option(30, "optimiser steps per request (the ascent term has no floor: 60 destroyed the "
                            "model on the validation sequence)", ge=0)


@register
class KLMethod(AscentFinetune):
    name = "kl"
    reads = ("forget", "retain")
    refuses = False  # gradient ascent (+ retain KL): never teaches a refusal
    description = "gradient ascent on forget answers + KL to the original model on retain pairs"
    uses_retain = True
    config_class = KLConfig

    def loss(self, forget, retain):
        loss = super().loss(forget, retain)
        if retain is None:
            return loss
        student = self.model(**{k: v for k, v in retain.items() if k != "labels"}).logits
        return loss + self.config.retain_weight * answer_kl(student, self.reference_logits(retain), retain["labels"])
