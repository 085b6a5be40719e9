"""Weight-editing unlearning methods built on the LoRA fine-tuning loop.

- `smfa`: SMFA (arXiv 2511.20196): a forget adapter (forget -> refusal) is sculpted by
  an anchor adapter trained on retain data; entries where the two updates conflict are
  masked out, the rest is merged into the weights (nothing runs at inference).
- `siu`: Single Image Unlearning (arXiv 2405.12523): multifaceted fine-tuning targets
  + cross-entropy + a dual (token- and vocabulary-level) masked KL to the original model.
- `scrub`: SCRUB (arXiv 2302.09880): teacher-student; max-steps move away from the
  teacher on forget data, min-steps stay close to it (KL + task loss) on retain data.

All three reuse `FinetuneMethod`'s loop (`loss(forget, retain)`, seeded batches, one
AdamW per request) and answer with the plain `Backbone.generate`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from peft.tuners.lora import LoraLayer

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.finetune import Batches, FinetuneConfig, FinetuneMethod
from vlforget.methods.losses import answer_kl, answer_nll
from vlforget.methods.training import shard
from vlforget.types import DeletionRequest, Sample

ADAPTER = "default"  # the adapter `FinetuneMethod` injects


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


# ------------------------------------------------------------------------------- SMFA

def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    """Every LoRA-wrapped linear layer, by module name (a stable order for state keys)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_delta(layer: LoraLayer, adapter: str = ADAPTER) -> torch.Tensor:
    """The dense weight update dW = scale * B A that the adapter adds to the base weight."""
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    return (b @ a).detach() * layer.scaling[adapter]


def conflict_mask(forget_delta: torch.Tensor, anchor_delta: torch.Tensor, margin: float) -> torch.Tensor:
    """True where the forget update fights the anchor and does not clearly dominate it.

    The two adapters are trained on different losses, so raw magnitudes are not
    comparable: the anchor is first rescaled to the forget update's mean |entry|.
    An entry conflicts when the signs are opposite and |dW_f| <= margin * |dW_a|.
    """
    scale = forget_delta.abs().mean() / anchor_delta.abs().mean().clamp_min(1e-12)
    anchor = anchor_delta * scale
    opposite = forget_delta * anchor < 0
    return opposite & (forget_delta.abs() <= margin * anchor.abs())


@dataclass
class SMFAConfig(FinetuneConfig):
    forget_retain_examples: int = option(4, "retain pairs mixed into the forget adapter's training (the paper's 'few retain examples')")
    conflict_margin: float = option(1.0, "a conflicting forget entry survives only if |dW_f| > margin * |rescaled dW_a|")
    anchor_mode: str = option("growing", "'growing': mask against the sum of every request's anchor so far; 'request': this request's anchor only")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.anchor_mode not in ("growing", "request"):
            raise ValueError(f"anchor_mode must be 'growing' or 'request', got {self.anchor_mode!r}")
        if self.conflict_margin < 0 or self.forget_retain_examples < 0:
            raise ValueError("conflict_margin and forget_retain_examples must be >= 0")


@register
class SMFA(FinetuneMethod):
    name = "smfa"
    description = "sculpted memory forgetting adapter: refusal adapter, conflicts with a retain anchor masked out, merged into the weights"
    config_class = SMFAConfig
    uses_retain = True

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        self.layers = lora_layers(self.model)
        # W0 is kept so the merged weights are always W0 + delta exactly (a fresh load
        # recomputes the same sum, instead of replaying rounding from request to request).
        self.original = {n: l.get_base_layer().weight.detach().clone() for n, l in self.layers.items()}
        self.delta = {n: torch.zeros_like(w) for n, w in self.original.items()}
        self.anchor = {n: torch.zeros_like(w) for n, w in self.original.items()}
        self.masked_share: list[float] = []  # per request: share of forget-update entries masked
        self.phase = "forget"

    def loss(self, forget, retain):
        loss = answer_nll(self.model, forget)
        if self.phase == "forget" and retain is not None:
            loss = loss + self.config.retain_weight * answer_nll(self.model, retain)
        return loss

    def take_adapter(self) -> dict[str, torch.Tensor]:
        """The adapter's dense update per layer; the adapter is then reset (B = 0, inert)."""
        deltas = {n: lora_delta(l) for n, l in self.layers.items()}
        for layer in self.layers.values():
            layer.reset_lora_parameters(ADAPTER, True)
        return deltas

    def _unlearn(self, request: DeletionRequest) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed * 1000 + len(self.applied))
        few = rng.sample(request.retain_train, min(cfg.forget_retain_examples, len(request.retain_train)))
        # 1. memory forgetting adapter: forget pairs -> refusal, plus a few retain pairs.
        self.phase = "forget"
        super()._unlearn(replace(request, retain_train=few))
        forget_delta = self.take_adapter()
        # 2. retaining anchor: the same model fine-tuned on retain pairs only.
        anchor_delta = None
        if request.retain_train:
            self.phase = "anchor"
            super()._unlearn(replace(request, forget_train=request.retain_train, retain_train=[]))
            anchor_delta = self.take_adapter()
            for n in self.anchor:
                self.anchor[n] = anchor_delta[n] + (self.anchor[n] if cfg.anchor_mode == "growing" else 0)
        # 3. sculpt: drop conflicting entries, merge the rest.
        masked, total = 0, 0
        for n, update in forget_delta.items():
            if anchor_delta is not None:
                mask = conflict_mask(update, self.anchor[n], cfg.conflict_margin)
                update = update * ~mask
                masked += int(mask.sum())
            total += update.numel()
            self.delta[n] = self.delta[n] + update
        self.masked_share.append(masked / total)
        self.apply_delta()

    def apply_delta(self) -> None:
        with torch.no_grad():
            for n, layer in self.layers.items():
                layer.get_base_layer().weight.copy_(self.original[n] + self.delta[n])

    # -- state: the merged updates and the anchor (the LoRA itself is always reset) ----------
    def state_tensors(self):
        tensors = {f"smfa.delta.{n}": d for n, d in self.delta.items()}
        tensors.update({f"smfa.anchor.{n}": a for n, a in self.anchor.items()})
        return tensors

    def load_state_tensors(self, tensors):
        self.delta = {n: tensors[f"smfa.delta.{n}"].clone() for n in self.layers}
        self.anchor = {n: tensors[f"smfa.anchor.{n}"].clone() for n in self.layers}
        self.apply_delta()

    def state_json(self):
        return {"masked_share": self.masked_share}

    def load_state_json(self, data):
        self.masked_share = list(data.get("masked_share", []))

    def report_extras(self):
        return {"smfa_masked_share": dict(zip(self.applied, self.masked_share))}


# -------------------------------------------------------------------------------- SIU

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
    mask = torch.zeros(vocab, dtype=torch.bool)
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


# ------------------------------------------------------------------------------ SCRUB

@dataclass
class SCRUBConfig(FinetuneConfig):
    max_phase: int = option(20, "the first steps of each request on which max-steps alternate with min-steps (SCRUB stops maximising early)")
    alpha: float = option(1.0, "weight of the KL to the teacher on retain pairs (min-steps)")
    gamma: float = option(1.0, "weight of the retain task loss (answer NLL) in min-steps")
    forget_kl_weight: float = option(1.0, "weight of the KL maximised on forget pairs (max-steps)")


@register
class SCRUB(FinetuneMethod):
    name = "scrub"
    description = "SCRUB teacher-student: move away from the original on forget pairs, stay close on retain pairs, learn the refusal"
    config_class = SCRUBConfig
    uses_retain = True

    def before_request(self, request):
        # Max-steps push away from what the teacher says on forget queries: teacher-force
        # its original answers. The refusal batches (min-steps) come from the loop.
        seed = self.config.seed * 1000 + len(self.applied) + 2
        self.original_answers = Batches(request.forget_train, self.config.batch_size, seed, target="original")
        self.step = 0

    def is_max_step(self, step: int) -> bool:
        # A min-step comes first: at the start the student equals the teacher, the KL
        # sits at its minimum and its gradient is zero, so a max-step there does nothing.
        return step < self.config.max_phase and step % 2 == 1

    def max_loss(self) -> torch.Tensor:
        batch = self.batch(*shard(*self.original_answers.next()))
        student = self.model(**_inputs(batch)).logits
        return -self.config.forget_kl_weight * answer_kl(student, self.reference_logits(batch), batch["labels"])

    def min_loss(self, forget, retain) -> torch.Tensor:
        loss = answer_nll(self.model, forget)  # the task on forget pairs here: the refusal
        if retain is not None:
            out = self.model(**retain)
            loss = loss + self.config.alpha * answer_kl(out.logits, self.reference_logits(retain), retain["labels"])
            loss = loss + self.config.gamma * out.loss
        return loss

    def loss(self, forget, retain):
        step, self.step = self.step, self.step + 1
        return self.max_loss() if self.is_max_step(step) else self.min_loss(forget, retain)
