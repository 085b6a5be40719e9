"""O3: a LoRA per request, orthogonal to earlier ones, scaled per query by an OOD detector.

An expert baseline of CORE's comparison (docs/methods.md), after O3 (orthogonal LoRAs
for continual unlearning; the paper's lr is 3e-4 on LLaMA-2-7B). Each request trains its
own LoRA on the language model's projections on the refusal NLL of its forget pairs,
with a penalty keeping its A matrices orthogonal to earlier requests'. Its detector
keeps k-means prototypes of the forget pairs' query features (image + instruction);
at inference each LoRA is applied with a weight that ramps from 0 to 1 with the
query's cosine to the nearest prototype. Without retain pairs the ramp reaches 1 at
the `full_quantile` of the forget pairs' scores (the forget-only form); with them it
reaches 1 at the cut between the forget and retain pairs' scores
(`hooked_experts.gate_threshold`, as CORE's gate uses retain pairs as negatives). The LoRAs are our own per-row ones (not
peft), so one batch can scale each request's LoRA differently per query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.clustering import kmeans
from vlforget.methods.hooked_experts import ExpertConfig, HookedMethod, gate_threshold

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class O3Config(ExpertConfig):
    lr: float = option(3e-3, "AdamW learning rate of the request's LoRA (the paper: 3e-4 on LLaMA-2-7B)")
    lora_rank: int = option(8, "rank of each request's LoRA on the LM's attention and MLP projections")
    lora_alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)")
    orthogonal_weight: float = option(0.1, "weight of sum ||A_prev A_cur^T||_F^2 over earlier requests' LoRAs")
    prototypes: int = option(4, "k-means prototypes of each request's forget features kept by its detector")
    full_quantile: float = option(0.1, "without retain pairs: detector score (quantile of the request's own forget "
                                        "pairs) from which its LoRA is applied in full ...")
    ramp_width: float = option(0.1, "... falling linearly to 0 this much (cosine) lower: below, the base model "
                                    "(with retain pairs the ramp reaches 1 at the forget/retain cut)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank < 1 or self.prototypes < 1 or self.ramp_width <= 0 or not 0 <= self.full_quantile <= 1:
            raise ValueError("lora_rank >= 1, prototypes >= 1, ramp_width > 0 and full_quantile in [0, 1] are required")


@register
class O3(HookedMethod):
    name = "o3"
    reads = ("forget", "retain")  # retain pairs: negatives of the detector's cut
    description = ("O3: a LoRA per request, orthogonal to earlier ones, each scaled at inference by its request's "
                   "out-of-distribution detector (image + instruction)")
    config_class = O3Config

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        # Our own per-row LoRA (not peft): O3 scales each request's LoRA per query.
        self.targets = [m for name, m in backbone.language_model.named_modules()
                        if name.rsplit(".", 1)[-1] in LORA_TARGETS and isinstance(m, torch.nn.Linear)]
        self.lora_a: list[list[torch.Tensor]] = []  # per request, per target: [rank, in]
        self.lora_b: list[list[torch.Tensor]] = []  # per request, per target: [out, rank]
        self.prototypes: list[torch.Tensor] = []  # [K, D] unit-norm, per request
        self.ramps: list[torch.Tensor] = []  # [2] (score of weight 0, score of weight 1), per request

    def install_hooks(self):
        return [m.register_forward_hook(self._lora_hook(j)) for j, m in enumerate(self.targets)]

    def _lora_hook(self, target: int):
        def hook(module, args, output):
            weights = self._route  # [B, T]
            scale = self.config.lora_alpha / self.config.lora_rank
            for t in weights.any(0).nonzero().squeeze(1).tolist():
                # The LoRA stays float32 under a half-precision model: compute in float32, add in the output's dtype.
                delta = (args[0].float() @ self.lora_a[t][target].T) @ self.lora_b[t][target].T
                output = output + (weights[:, t, None, None] * scale * delta).to(output.dtype)
            return output
        return hook

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, T] detector score: cosine to the nearest forget prototype of each request."""
        return torch.stack([(feats @ p.T).amax(1) for p in self.prototypes], 1)

    def route(self, images, instructions):
        """[B, T] how strongly each request's LoRA is applied (0 = not at all)."""
        if not self.prototypes:
            return torch.zeros(len(images), 0, device=self.backbone.device)
        ramps = torch.stack(self.ramps)
        s = self.scores(self.features(images, instructions))
        return ((s - ramps[:, 0]) / (ramps[:, 1] - ramps[:, 0])).clamp(0.0, 1.0)

    def training_route(self, n):
        weights = torch.zeros(n, len(self.lora_a), device=self.backbone.device)
        weights[:, -1] = 1.0  # only the new request's LoRA, on the base model
        return weights

    def _new_lora(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        r = self.config.lora_rank
        device = self.backbone.device
        # peft's default init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0. Drawn on the CPU (the
        # generator's device, same draws everywhere), then moved; float32 in any case.
        self.lora_a.append([((torch.rand(r, m.in_features, generator=gen, device="cpu") * 2 - 1)
                             / math.sqrt(m.in_features)).to(device) for m in self.targets])
        self.lora_b.append([torch.zeros(m.out_features, r, device=device) for m in self.targets])

    def orthogonality(self) -> torch.Tensor:
        current = self.lora_a[-1]
        return sum(((a_prev @ a_cur.T) ** 2).sum() for prev in self.lora_a[:-1] for a_prev, a_cur in zip(prev, current))

    def _unlearn(self, request):
        cfg = self.config
        t = len(self.lora_a)
        self._new_lora(cfg.seed * 1000 + t)
        params = self.lora_a[t] + self.lora_b[t]
        for p in params:
            p.requires_grad_(True)
        extra = (lambda: cfg.orthogonal_weight * self.orthogonality()) if t > 0 else None
        self.fit_refusals(request, params, extra_loss=extra)

        feats = self.pair_features(request.forget_train)
        self.prototypes.append(F.normalize(kmeans(feats, cfg.prototypes, cfg.seed * 1000 + t), dim=-1))
        retain = self.pair_features(request.retain_train)
        if retain is None:
            full = torch.quantile(self.scores(feats)[:, t], cfg.full_quantile)
        else:  # full weight from the cut between forget and retain scores (as from the quantile above)
            full = gate_threshold(self.scores(feats)[:, t], self.scores(retain)[:, t], cfg.full_quantile,
                                  cfg.negative_weight)
        self.ramps.append(torch.stack([full - cfg.ramp_width, full]))

    def state_tensors(self):
        out = {}
        for t in range(len(self.lora_a)):
            for j, (a, b) in enumerate(zip(self.lora_a[t], self.lora_b[t])):
                out[f"lora.{t}.{j}.a"], out[f"lora.{t}.{j}.b"] = a, b
            out[f"prototypes.{t}"], out[f"ramp.{t}"] = self.prototypes[t], self.ramps[t]
        return out

    def load_state_tensors(self, tensors):
        n, m = len(self.applied), len(self.targets)
        self.lora_a = [[tensors[f"lora.{t}.{j}.a"] for j in range(m)] for t in range(n)]
        self.lora_b = [[tensors[f"lora.{t}.{j}.b"] for j in range(m)] for t in range(n)]
        self.prototypes = [tensors[f"prototypes.{t}"] for t in range(n)]
        self.ramps = [tensors[f"ramp.{t}"] for t in range(n)]
