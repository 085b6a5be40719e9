"""SMFA: sculpted memory forgetting adapter (arXiv 2511.20196).

A forget adapter (forget pairs -> refusal, plus a few retain pairs) is sculpted by an
anchor adapter trained on retain data only: entries where the two dense updates
conflict (opposite signs, the forget update not clearly larger) are masked out, and
the rest is merged into the base weights, so nothing runs at inference. The anchor
grows over requests (`anchor_mode="growing"`) or is the request's own. Reuses
`FinetuneMethod`'s loop (seeded batches, one AdamW per phase) for both adapters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from peft.tuners.lora import LoraLayer

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.losses import answer_nll
from vlforget.methods.lora_finetune import FinetuneConfig, FinetuneMethod
from vlforget.types import DeletionRequest

ADAPTER = "default"  # the adapter `FinetuneMethod` injects


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
    reads = ("forget", "retain")
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
        rng = random.Random(self.request_seed())
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
