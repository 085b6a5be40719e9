"""ECO prompts (arXiv 2406.07933): classifier-gated corruption of prompt embeddings.

Per request, a small classifier on image features + instruction embedding flags
forget queries (forget pairs vs the request's retain pairs and general pairs, with a
threshold chosen on held-out pairs); flagged queries get a fixed noise pattern added
to their prompt embeddings, at the strength an offline bisection on the request's
forget pairs found to change enough of their answers. The model's weights never
change; the corruption hook is installed only for the duration of `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.methods.hooks import installed
from vlforget.methods.samples import images_of, instructions_of
from vlforget.types import DeletionRequest


@dataclass
class EcoConfig(MethodConfig):
    hidden: int = option(64, "hidden units of each request's prompt classifier (a one-hidden-layer MLP)")
    classifier_steps: int = option(300, "full-batch Adam steps of classifier training")
    classifier_negatives: int = option(400, "general pairs added to the request's retain pairs as negatives")
    holdout: float = option(0.25, "share of the training pairs held out to choose the classifier threshold")
    max_recall: float = option(0.1, "strength search target: share of forget pairs still answered as before")
    max_strength: float = option(8.0, "upper end of the strength search (noise std in units of embedding RMS)")
    search_steps: int = option(8, "bisection steps of the offline strength search")
    noise_positions: int = option(128, "length of the fixed noise pattern (>= the longest prompt)")

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1 or not 0 <= self.max_recall < 1 or self.max_strength <= 0:
            raise ValueError("0 < holdout < 1, 0 <= max_recall < 1 and max_strength > 0 are required")


@register
class Eco(Method):
    name = "eco"
    reads = ("forget", "retain", "general")
    refuses = False  # corrupts prompt embeddings at inference: answers change, no refusal
    description = ("ECO prompts: a per-request classifier on image features + instruction embedding flags forget "
                   "queries, whose prompt embeddings are corrupted with noise of an offline-searched strength")
    config_class = EcoConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        gen = torch.Generator().manual_seed(self.config.seed)
        # One fixed corruption pattern (right-aligned to the prompt), so answers are deterministic.
        # Drawn on the CPU (the generator's device), kept float32 on the model's device.
        self.noise = torch.randn(self.config.noise_positions, hidden, generator=gen, device="cpu").to(backbone.device)
        self.classifiers: list[dict[str, torch.Tensor]] = []  # per request: mean, std, w1, b1, w2, b2, threshold
        self.strengths: list[torch.Tensor] = []  # scalar per request
        self._strength_rows: torch.Tensor | None = None  # per-row corruption strength of the running chunk

    # -- the classifier --------------------------------------------------------------------
    def query_features(self, images, instructions) -> torch.Tensor:
        """[B, 4H]: image (max and mean over patches of the vision features) + instruction (max and mean
        of the LM's input embeddings of its tokens). Both sides, so visual and textual scopes are seen."""
        with torch.no_grad():
            vision = torch.cat([self.backbone.vision_features(images[i:i + 256]).float()
                                for i in range(0, len(images), 256)])
            table = self.backbone.model.get_input_embeddings().weight.float()
            words = [table[torch.tensor(ids or [0], device=table.device)]
                     for ids in self.backbone.encode_text(instructions)]
            text = torch.stack([torch.cat([w.amax(0), w.mean(0)]) for w in words])
        return torch.cat([vision.amax(1), vision.mean(1), text], dim=1)

    def _fit(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
        # Drawn on the CPU (the generator's device), then moved to the features' device.
        w1 = (torch.randn(x.shape[1], self.config.hidden, generator=gen, device="cpu")
              / x.shape[1] ** 0.5).to(x.device).requires_grad_(True)
        b1 = torch.zeros(self.config.hidden, requires_grad=True, device=x.device)
        w2 = (torch.randn(self.config.hidden, generator=gen, device="cpu")
              / self.config.hidden ** 0.5).to(x.device).requires_grad_(True)
        b2 = torch.zeros(1, requires_grad=True, device=x.device)
        weight = torch.where(y > 0.5, 0.5 / y.sum(), 0.5 / (1 - y).sum())
        optimiser = torch.optim.Adam([w1, b1, w2, b2], lr=1e-2, weight_decay=1e-3)
        xs = (x - mean) / std
        for _ in range(self.config.classifier_steps):
            logits = torch.relu(xs @ w1 + b1) @ w2 + b2
            loss = (weight * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        return {"mean": mean, "std": std, "w1": w1.detach(), "b1": b1.detach(), "w2": w2.detach(), "b2": b2.detach()}

    @staticmethod
    def probability(c: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.relu(((x - c["mean"]) / c["std"]) @ c["w1"] + c["b1"]) @ c["w2"] + c["b2"])

    def train_classifier(self, request: DeletionRequest) -> dict[str, torch.Tensor]:
        cfg = self.config
        negatives = request.retain_train + self.general_pool(
            cfg.classifier_negatives, f"inference-methods-{cfg.seed + 1 + len(self.applied)}")
        samples = request.forget_train + negatives
        device = self.backbone.device
        y = torch.cat([torch.ones(len(request.forget_train), device=device),
                       torch.zeros(len(negatives), device=device)])
        x = self.query_features(images_of(samples), instructions_of(samples))
        gen = torch.Generator().manual_seed(cfg.seed + len(self.applied))
        held = (torch.rand(len(samples), generator=gen, device="cpu") < cfg.holdout).to(device)
        held[0] = True  # at least one held-out positive
        c = self._fit(x[~held], y[~held], cfg.seed + len(self.applied))
        # Threshold on held-out pairs: the one with the best balanced accuracy (ECO's simple thresholding).
        p, t = self.probability(c, x[held]), y[held]
        candidates = torch.cat([p, torch.tensor([0.5], device=p.device)]).unique()
        def balanced(th):  # noqa: E306
            hit = p >= th
            return 0.5 * ((hit & (t > 0.5)).sum() / (t > 0.5).sum().clamp(min=1)
                          + (~hit & (t < 0.5)).sum() / (t < 0.5).sum().clamp(min=1))
        best = max(candidates.tolist(), key=lambda th: (float(balanced(th)), th))
        c["threshold"] = best * torch.ones((), device=device)
        return c

    # -- the corruption ----------------------------------------------------------------------
    def _corrupt(self, module, args, kwargs):
        strengths = self._strength_rows
        embeds = kwargs.get("inputs_embeds")
        if strengths is None or embeds is None or embeds.shape[1] == 1 or not (strengths > 0).any():
            return None  # nothing flagged, or a decoding step (only the prompt is corrupted)
        width = embeds.shape[1]
        mask = kwargs.get("attention_mask")
        # Padding positions stay clean (they are masked anyway; this keeps the noise on the prompt only).
        mask = mask[:, -width:, None].to(embeds.dtype) if mask is not None and mask.dim() == 2 \
            else torch.ones_like(embeds[..., :1])
        rms = embeds.float().pow(2).mean().sqrt()
        noise = self.noise[-width:].to(embeds.dtype)[None] * rms * strengths[:, None, None].to(embeds.dtype)
        return args, {**kwargs, "inputs_embeds": embeds + noise * mask}

    def _generate_with(self, images, instructions, strengths: torch.Tensor, **kwargs) -> list[str]:
        self._strength_rows = strengths
        lm = self.backbone.language_model
        try:
            with installed(lambda: lm.register_forward_pre_hook(self._corrupt, with_kwargs=True)):
                return self.backbone.generate(images, instructions, batch_size=len(images), **kwargs)
        finally:
            self._strength_rows = None

    def search_strength(self, request: DeletionRequest) -> float:
        """Offline, zeroth-order: the smallest strength at which at most `max_recall` of the forget
        pairs still get the answer the model gave before (bisection on answers, no gradients)."""
        cfg = self.config
        images, instructions = images_of(request.forget_train), instructions_of(request.forget_train)
        before = self.backbone.generate(images, instructions)
        def recall(strength):  # noqa: E306
            after = self._generate_with(images, instructions,
                                        torch.full((len(images),), strength, device=self.backbone.device))
            return sum(a == b for a, b in zip(after, before)) / len(before)
        low, high = 0.0, cfg.max_strength
        if recall(high) > cfg.max_recall:
            return high
        for _ in range(cfg.search_steps):
            middle = (low + high) / 2
            low, high = (middle, high) if recall(middle) > cfg.max_recall else (low, middle)
        return high

    def _unlearn(self, request: DeletionRequest) -> None:
        self.classifiers.append(self.train_classifier(request))
        self.strengths.append(torch.tensor(self.search_strength(request), device=self.backbone.device))

    def flag_strengths(self, images, instructions) -> torch.Tensor:
        """[B] corruption strength per query: the largest among requests whose classifier fires (0 = none)."""
        x = self.query_features(images, instructions)
        fired = torch.stack([(self.probability(c, x) >= c["threshold"]).float() * s
                             for c, s in zip(self.classifiers, self.strengths)], dim=1)
        return fired.amax(1)

    def generate(self, images, instructions, batch_size: int = 64, **kwargs) -> list[str]:
        if not self.classifiers:
            return self.backbone.generate(images, instructions, batch_size=batch_size, **kwargs)
        answers: list[str] = []
        for i in range(0, len(images), batch_size):
            chunk_images, chunk_instructions = list(images[i:i + batch_size]), list(instructions[i:i + batch_size])
            strengths = self.flag_strengths(chunk_images, chunk_instructions)
            answers += self._generate_with(chunk_images, chunk_instructions, strengths, **kwargs)
        return answers

    # -- state -----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"noise": self.noise}
        for i, (c, s) in enumerate(zip(self.classifiers, self.strengths)):
            out.update({f"classifier.{i}.{k}": v for k, v in c.items()})
            out[f"strength.{i}"] = s
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.noise = tensors["noise"]
        n = len(self.applied)
        self.classifiers = [{k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"classifier.{i}.")}
                            for i in range(n)]
        self.strengths = [tensors[f"strength.{i}"] for i in range(n)]
