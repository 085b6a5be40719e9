"""LwF: learning without forgetting (Li & Hoiem 2016) on refusal fine-tuning.

The refusal NLL (`lora_finetune.RefusalFinetune`) + `distill_weight` x
KL(previous || current) at `temperature` over the answer tokens of the current
request's retain inputs, where "previous" is the model before this request: its
logits are recorded once before training (4 batches), as LwF records old outputs on
new data. No earlier request's data is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.batches import Batches
from vlforget.methods.losses import answer_kl, answer_nll
from vlforget.methods.lora_finetune import FinetuneConfig, RefusalFinetune
from vlforget.methods.training import shard


@dataclass
class LwFConfig(FinetuneConfig):
    distill_weight: float = option(1.0, "weight of the distillation term toward the previous model")
    temperature: float = option(2.0, "distillation temperature")


@register
class LwF(RefusalFinetune):
    name = "lwf"
    reads = ("forget", "retain")  # retain inputs for distillation (forget inputs when there are none)
    description = "refusal fine-tuning with learning-without-forgetting distillation from the previous state"
    config_class = LwFConfig
    uses_retain = True

    def before_request(self, request):
        # LwF records the previous model's outputs on the new request's (retain) inputs
        # before training; no earlier request's data is needed.
        self.teacher = []
        batches = Batches(request.retain_train or request.forget_train, self.config.batch_size, self.config.seed + 11)
        with torch.no_grad():
            for _ in range(4):
                batch = self.batch(*shard(*batches.next()))  # the slice this process trains on
                logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                self.teacher.append((batch, logits))
        self.teacher_step = 0

    def loss(self, forget, retain):
        batch, teacher = self.teacher[self.teacher_step % len(self.teacher)]
        self.teacher_step += 1
        student = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        distill = answer_kl(student, teacher, batch["labels"], self.config.temperature)
        return answer_nll(self.model, forget) + self.config.distill_weight * distill
