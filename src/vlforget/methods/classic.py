"""Classic unlearning and continual-learning baselines, each a tiny loss variant.

IdkNLL -> EWC, LwF (refusal fine-tuning plus a continual-learning regulariser);
GA -> GradDiff -> KL (ascent on what the model used to answer, plus a retain term);
NPO (preference-style ascent against the original model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.adapters import adapters_off
from vlforget.methods.base import register
from vlforget.methods.finetune import Batches, FinetuneConfig, FinetuneMethod
from vlforget.methods.losses import answer_kl, answer_nll, npo_loss, sequence_logprob
from vlforget.methods.training import accumulate_squared_grads, shard


@register
class IdkNLL(FinetuneMethod):
    name = "idknll"
    description = "fine-tune the forget pairs onto their context-aware refusals (NLL), one LoRA across requests"

    def loss(self, forget, retain):
        return answer_nll(self.model, forget)


@register
class GradientAscent(FinetuneMethod):
    name = "ga"
    description = "gradient ascent on the forget pairs' original answers"
    forget_target = "original"

    def loss(self, forget, retain):
        return -answer_nll(self.model, forget)


@register
class GradDiff(GradientAscent):
    name = "graddiff"
    description = "gradient ascent on forget answers + descent on retain answers"
    uses_retain = True

    def loss(self, forget, retain):
        loss = super().loss(forget, retain)
        return loss + self.config.retain_weight * answer_nll(self.model, retain) if retain else loss


@register
class KLMethod(GradientAscent):
    name = "kl"
    description = "gradient ascent on forget answers + KL to the original model on retain pairs"
    uses_retain = True

    def loss(self, forget, retain):
        loss = super().loss(forget, retain)
        if retain is None:
            return loss
        student = self.model(**{k: v for k, v in retain.items() if k != "labels"}).logits
        return loss + self.config.retain_weight * answer_kl(student, self.reference_logits(retain), retain["labels"])


@dataclass
class NPOConfig(FinetuneConfig):
    beta: float = option(0.1, "NPO inverse temperature")


@register
class NPO(FinetuneMethod):
    name = "npo"
    description = "negative preference optimisation on forget answers + NLL on retain pairs"
    config_class = NPOConfig
    forget_target = "original"
    uses_retain = True

    def loss(self, forget, retain):
        with torch.no_grad(), adapters_off(self.model):
            reference = sequence_logprob(self.model, forget)
        loss = npo_loss(sequence_logprob(self.model, forget), reference, self.config.beta)
        return loss + self.config.retain_weight * answer_nll(self.model, retain) if retain else loss


@dataclass
class EWCConfig(FinetuneConfig):
    ewc_lambda: float = option(50.0, "weight of the EWC penalty")
    fisher_batches: int = option(4, "batches used to estimate the diagonal Fisher after each request")


@register
class EWC(IdkNLL):
    name = "ewc"
    description = "refusal fine-tuning with elastic weight consolidation against earlier requests"
    config_class = EWCConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        # Accumulated diagonal Fisher and the adapter values it was measured at.
        self.fisher = [torch.zeros_like(p) for p in self.params]
        self.anchor = [p.detach().clone() for p in self.params]

    def loss(self, forget, retain):
        penalty = sum((f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, self.params, self.anchor))
        return answer_nll(self.model, forget) + self.config.ewc_lambda * penalty

    def after_request(self, request):
        batches = Batches(request.forget_train, self.config.batch_size, self.config.seed + 7)
        accumulate_squared_grads(self.model, self.params, self.fisher,
                                 lambda: answer_nll(self.model, self.batch(*batches.next())), self.config.fisher_batches)
        self.anchor = [p.detach().clone() for p in self.params]

    def state_tensors(self):
        tensors = super().state_tensors()
        tensors.update({f"ewc.fisher.{i}": f for i, f in enumerate(self.fisher)})
        tensors.update({f"ewc.anchor.{i}": a for i, a in enumerate(self.anchor)})
        return tensors

    def load_state_tensors(self, tensors):
        super().load_state_tensors(tensors)
        self.fisher = [tensors[f"ewc.fisher.{i}"] for i in range(len(self.params))]
        self.anchor = [tensors[f"ewc.anchor.{i}"] for i in range(len(self.params))]


@dataclass
class LwFConfig(FinetuneConfig):
    distill_weight: float = option(1.0, "weight of the distillation term toward the previous model")
    temperature: float = option(2.0, "distillation temperature")


@register
class LwF(IdkNLL):
    name = "lwf"
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
