"""SIU: Single Image Unlearning (arXiv 2405.12523), adapted to context-aware refusals.

Multifaceted fine-tuning targets (forget pairs -> the request's refusal, cycling through
`refusal_phrasings` wordings; retain pairs -> their own answers), trained with the
cross-entropy plus a dual masked KL to the original model (token level: only where the
original already predicts the target; vocabulary level: the forgotten answers' tokens
dropped). Reuses `FinetuneMethod`'s loop; answers with the plain `Backbone.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.lora_finetune import FinetuneConfig, FinetuneMethod
from vlforget.types import DeletionRequest, Sample


def multifaceted_targets(request: DeletionRequest, phrasings: int) -> tuple[list[Sample], list[Sample]]:
    """SIU's fine-tuning data, adapted to context-aware refusals.

    Returns (forget targets, keep targets):
    - forget pairs -> the request's refusal, cycling through its first `phrasings`
      sentences (several wordings of one declined context, not one memorised string);
    - retain pairs (the hard negatives sharing the image or the intent) -> their own
      answers: knowledge next to the concept is decoupled from it, not erased with it.
    The fourth facet, preserving everything else, is the dual masked KL.
    """
    sentences = request.refusals[:max(1, phrasings)]
    forget = [replace(s, answer=sentences[i % len(sentences)]) for i, s in enumerate(request.forget_train)]
    return forget, list(request.retain_train)


def forgotten_vocabulary(backbone, request: DeletionRequest, forget: list[Sample], keep: list[Sample]) -> torch.Tensor:
    """[V] bool: tokens only the forgotten answers use (SIU masks the concept's name tokens).

    Tokens of the original answers to forget queries, minus tokens of the refusals and
    of the retain answers (those must stay reachable).
    """
    def token_ids(texts):
        return {t for ids in backbone.encode_text(texts) for t in ids}
    forgotten = token_ids([s.meta.get("original_answer", "") for s in request.forget_train])
    forgotten -= token_ids([s.answer for s in forget] + [s.answer for s in keep])
    vocab = backbone.model.get_output_embeddings().weight.shape[0]
    mask = torch.zeros(vocab, dtype=torch.bool, device=backbone.device)
    mask[sorted(forgotten)] = True
    return mask


def dual_masked_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   forgotten_vocab: torch.Tensor) -> torch.Tensor:
    """KL(original || current) over answer positions, with SIU's two masks.

    Token level: only positions where the original model already predicts the target
    token; elsewhere the target is new (a refusal, a corrected answer) and the KL would
    pull against the cross-entropy. Vocabulary level: the forgotten tokens are dropped
    from both distributions (renormalised over the rest), so the KL never pulls
    probability back toward the forgotten answers.
    """
    labels = labels[:, 1:]
    keep = ~forgotten_vocab.to(student_logits.device)
    s = torch.log_softmax(student_logits[:, :-1].float()[..., keep], dim=-1)
    t_full = teacher_logits[:, :-1].float()
    t = torch.log_softmax(t_full[..., keep], dim=-1)
    token_mask = ((labels != -100) & (t_full.argmax(-1) == labels)).float()
    kl = (t.exp() * (t - s)).sum(-1)
    return (kl * token_mask).sum() / token_mask.sum().clamp(min=1)


@dataclass
class SIUConfig(FinetuneConfig):
    kl_weight: float = option(1.0, "weight of the dual masked KL (applied to forget and keep batches)")
    refusal_phrasings: int = option(1, "how many of the request's refusal sentences the forget targets cycle through "
                                       "(2+ makes the tiny model splice the wordings together)")


@register
class SIU(FinetuneMethod):
    name = "siu"
    reads = ("forget", "retain", "text")  # text: request.refusals (the multifaceted targets)
    description = "single image unlearning: multifaceted targets, cross-entropy + dual masked KL to the original model"
    config_class = SIUConfig
    uses_retain = True

    def _unlearn(self, request: DeletionRequest) -> None:
        forget, keep = multifaceted_targets(request, self.config.refusal_phrasings)
        self.forgotten_vocab = forgotten_vocabulary(self.backbone, request, forget, keep)
        super()._unlearn(replace(request, forget_train=forget, retain_train=keep))

    def term(self, batch: dict) -> torch.Tensor:
        """Cross-entropy on the targets + the dual masked KL on the same batch."""
        out = self.model(**batch)
        kl = dual_masked_kl(out.logits, self.reference_logits(batch), batch["labels"], self.forgotten_vocab)
        return out.loss + self.config.kl_weight * kl

    def loss(self, forget, retain):
        loss = self.term(forget)
        return loss + self.config.retain_weight * self.term(retain) if retain is not None else loss
