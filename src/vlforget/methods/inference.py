"""Inference-time unlearning: MLLMEraser, SAUCE and ECO. The model's weights never change.

Each method keeps a little state per request and acts on a forward pass through hooks
installed only for the duration of `generate` (`installed(...)` removes them whatever
happens, exceptions included):

- `mllmeraser` (arXiv 2510.04217): an erasure direction in a decoder layer's hidden
  state (refusing minus recalling activations), added at the last prompt position of
  queries an input-aware gate (a probe on that same activation) flags;
- `sauce` (arXiv 2503.14530): a sparse autoencoder on a decoder layer's hidden states;
  the features most active on a request's forget pairs (vs its retain pairs) are
  clamped wherever they fire;
- `eco` (arXiv 2406.07933): a classifier on image features + instruction embedding
  flags forget queries; their prompt embeddings get a fixed noise pattern whose
  strength was searched offline on the request's forget pairs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.text import is_refusal
from vlforget.types import DeletionRequest, Sample


# ------------------------------------------------------------------ shared helpers

@contextmanager
def installed(*registrations: Callable[[], torch.utils.hooks.RemovableHandle]):
    """Register hooks (each a zero-argument callable returning a handle); always remove them."""
    handles = []
    try:
        for register_hook in registrations:
            handles.append(register_hook())
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def decoder_layer(backbone, index: int) -> torch.nn.Module:
    layers = backbone.language_model.layers
    if not -len(layers) <= index < len(layers):
        raise ValueError(f"layer {index} does not exist; the language model has {len(layers)} decoder layers")
    return layers[index]


def layer_states(backbone, batch: dict, layer: int) -> torch.Tensor:
    """[B, S, H] output of decoder layer `layer` (hidden_states[0] is the embedding output)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    index = layer % len(backbone.language_model.layers) + 1
    return backbone.model(**inputs, output_hidden_states=True).hidden_states[index]


def general_pool(n: int, seed: int) -> list[Sample]:
    """General (pretraining-distribution) pairs: no request's data, so any method may use them."""
    from vlforget.data.benchmark import general_samples

    return general_samples(n, f"inference-methods-{seed}", "train")


def fit_logistic(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced L2 logistic regression by full-batch L-BFGS (deterministic); returns (w, b)."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    weight = torch.where(y > 0.5, 0.5 / y.sum().clamp(min=1), 0.5 / (1 - y).sum().clamp(min=1))
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = (weight * F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).sum()
        loss = loss + penalty * (w * w).sum()
        loss.backward()
        return loss
    optimiser.step(closure)
    return w.detach(), b.detach()


def _images(samples):
    return [s.image for s in samples]


def _instructions(samples):
    return [s.instruction for s in samples]


# ------------------------------------------------------------------ MLLMEraser

@dataclass
class MLLMEraserConfig(MethodConfig):
    layer: int = option(2, "decoder layer whose output is read (gate) and steered (0-based)")
    strength: float = option(1.0, "alpha in h + alpha * direction at the last prompt position of gated queries")
    refusal_pool: int = option(1500, "general pairs scanned for the model's own refusals (the erasure side)")
    attack_steps: int = option(5, "PGD steps perturbing forget images so the model recalls its answer harder")
    attack_epsilon: float = option(0.1, "L-inf bound of that perturbation, in normalised pixel units")
    gate_negatives: int = option(300, "general pairs added to the request's retain pairs as gate negatives")
    gate_penalty: float = option(1.0, "L2 penalty of the gate probe (on standardised activations)")
    gate_threshold: float = option(0.5, "gate probability above which a query is steered")

    def __post_init__(self) -> None:
        if self.strength <= 0 or self.refusal_pool < 1 or self.attack_steps < 0 or not 0 < self.gate_threshold < 1:
            raise ValueError("strength > 0, refusal_pool >= 1, attack_steps >= 0 and 0 < gate_threshold < 1 required")


@register
class MLLMEraser(Method):
    name = "mllmeraser"
    description = ("MLLMEraser: training-free activation steering along a refusing-minus-recalling direction, "
                   "applied only to queries an activation probe gates in")
    config_class = MLLMEraserConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        self.erase_mean: torch.Tensor | None = None  # [H] mean activation of the model's own refusals
        self.directions: list[torch.Tensor] = []  # [H] per request
        self.gates: list[tuple[torch.Tensor, ...]] = []  # (mean, std, w, b) per request
        self.last_gated: torch.Tensor | None = None  # which rows of the last prefill were steered

    def last_prompt_states(self, batch: dict) -> torch.Tensor:
        """[B, H]: the layer output at the last prompt position (left padding puts it last)."""
        with torch.no_grad():
            return layer_states(self.backbone, batch, self.config.layer)[:, -1].float()

    def refusal_activations(self) -> torch.Tensor:
        """The erasure side: where the original model itself refuses (general should-decline pairs).

        Our tiny model cannot follow a "please refuse" instruction the way the paper's
        LLaVA can, so the refusing state is read where the model refuses on its own.
        """
        pool = general_pool(self.config.refusal_pool, self.config.seed)
        answers = self.backbone.generate(_images(pool), _instructions(pool))
        refusing = [s for s, a in zip(pool, answers) if is_refusal(a)]
        if not refusing:
            raise ValueError(f"the model refused none of {len(pool)} general pairs; MLLMEraser needs refusing "
                             "activations (raise refusal_pool)")
        return self.last_prompt_states(self.backbone.build_batch(_images(refusing), _instructions(refusing)))

    def recall_activations(self, samples: list[Sample]) -> torch.Tensor:
        """The recall side: forget queries whose images are perturbed (PGD) to make the model's answer likelier."""
        cfg = self.config
        answers = self.backbone.generate(_images(samples), _instructions(samples))  # what the model recalls now
        batch = self.backbone.build_batch(_images(samples), _instructions(samples), answers)
        pixels = batch.pop("pixel_values")
        delta = torch.zeros_like(pixels, requires_grad=True)
        step = cfg.attack_epsilon / max(1, cfg.attack_steps) * 2.5
        for _ in range(cfg.attack_steps):
            loss = self.backbone.model(**batch, pixel_values=pixels + delta).loss
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta - step * grad.sign()).clamp(-cfg.attack_epsilon, cfg.attack_epsilon).detach().requires_grad_(True)
        batch.pop("labels")
        prompt = self.backbone.build_batch(_images(samples), _instructions(samples))
        prompt["pixel_values"] = (pixels + delta).detach()
        return self.last_prompt_states(prompt)

    def _unlearn(self, request: DeletionRequest) -> None:
        cfg = self.config
        if self.erase_mean is None:
            self.erase_mean = self.refusal_activations().mean(0)
        forget = self.recall_activations(request.forget_train)
        self.directions.append(self.erase_mean - forget.mean(0))
        # Input-aware gate: a probe on the same activation, forget pairs vs hard negatives + general pairs.
        negatives = request.retain_train + general_pool(cfg.gate_negatives, cfg.seed + 1 + len(self.applied))
        clean_forget = self.last_prompt_states(self.backbone.build_batch(_images(request.forget_train),
                                                                         _instructions(request.forget_train)))
        neg = self.last_prompt_states(self.backbone.build_batch(_images(negatives), _instructions(negatives)))
        x = torch.cat([clean_forget, neg])
        mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
        y = torch.cat([torch.ones(len(clean_forget)), torch.zeros(len(neg))])
        w, b = fit_logistic((x - mean) / std, y, cfg.gate_penalty)
        self.gates.append((mean, std, w, b))

    def gate_probabilities(self, states: torch.Tensor) -> torch.Tensor:
        """[B, T] probability that each query belongs to each request."""
        return torch.stack([torch.sigmoid(((states - m) / s) @ w + b) for m, s, w, b in self.gates], dim=1)

    def _steer(self, module, args, output):
        if output.shape[1] == 1:
            return None  # a decoding step: the prompt was steered at prefill and lives on in the KV cache
        probability, which = self.gate_probabilities(output[:, -1].float()).max(1)
        on = probability >= self.config.gate_threshold
        self.last_gated = on
        if not on.any():
            return None
        steered = output.clone()
        steered[on, -1] += self.config.strength * torch.stack(self.directions)[which[on]].to(output.dtype)
        return steered

    def generate(self, images, instructions, **kwargs) -> list[str]:
        if not self.directions:
            return self.backbone.generate(images, instructions, **kwargs)
        layer = decoder_layer(self.backbone, self.config.layer)
        with installed(lambda: layer.register_forward_hook(self._steer)):
            return self.backbone.generate(images, instructions, **kwargs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {} if self.erase_mean is None else {"erase_mean": self.erase_mean}
        for i, (direction, gate) in enumerate(zip(self.directions, self.gates)):
            out[f"direction.{i}"] = direction
            out.update({f"gate.{i}.{k}": v for k, v in zip(("mean", "std", "w", "b"), gate)})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.erase_mean = tensors.get("erase_mean")
        n = len(self.applied)
        self.directions = [tensors[f"direction.{i}"] for i in range(n)]
        self.gates = [tuple(tensors[f"gate.{i}.{k}"] for k in ("mean", "std", "w", "b")) for i in range(n)]


# ------------------------------------------------------------------ SAUCE

class SparseAutoencoder(torch.nn.Module):
    """ReLU SAE: f = relu((x - b_dec) W_enc + b_enc), x_hat = f W_dec + b_dec; inputs divided by `scale`."""

    def __init__(self, hidden: int, features: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        decoder = F.normalize(torch.randn(features, hidden, generator=gen), dim=1)
        self.w_dec = torch.nn.Parameter(decoder)
        self.w_enc = torch.nn.Parameter(decoder.T.clone())  # tied at init, the usual SAE warm start
        self.b_enc = torch.nn.Parameter(torch.zeros(features))
        self.b_dec = torch.nn.Parameter(torch.zeros(hidden))
        self.register_buffer("scale", torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x / self.scale - self.b_dec) @ self.w_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.w_dec + self.b_dec) * self.scale


@dataclass
class SauceConfig(MethodConfig):
    layer: int = option(2, "decoder layer whose output the SAE reads and edits (0-based)")
    features: int = option(1024, "SAE dictionary size (8x the tiny model's hidden size)")
    sparsity: float = option(2.0, "L1 weight on feature activations (times decoder row norms)")
    sae_pairs: int = option(1500, "general pairs whose activations (every prompt position) train the SAE")
    sae_steps: int = option(1500, "Adam steps of SAE training")
    sae_batch: int = option(512, "activation vectors per SAE step")
    sae_lr: float = option(2e-3, "SAE learning rate")
    top_k: int = option(8, "features clamped per request (most active on its forget pairs vs its retain pairs)")
    clamp_scale: float = option(-3.0, "a selected feature f is replaced by clamp_scale * f (0 ablates, < 0 inverts)")

    def __post_init__(self) -> None:
        if self.features < 1 or self.sae_steps < 1 or self.top_k < 1 or self.sae_pairs < 1:
            raise ValueError("features, sae_steps, sae_pairs and top_k must be >= 1")


@register
class Sauce(Method):
    name = "sauce"
    description = ("SAUCE: a sparse autoencoder on a decoder layer's hidden states; each request's most "
                   "concept-specific features are clamped wherever they fire")
    config_class = SauceConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        self.sae = SparseAutoencoder(hidden, self.config.features, self.config.seed)
        self.trained = False
        self.selected: list[torch.Tensor] = []  # [top_k] feature ids per request
        self.general_presence: torch.Tensor | None = None  # [F] mean peak activation on general pairs

    def activations(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, S, H] layer outputs and [N, S] attention mask of the prompts."""
        states, masks = [], []
        for i in range(0, len(samples), 256):
            batch = self.backbone.build_batch(_images(samples[i:i + 256]), _instructions(samples[i:i + 256]))
            with torch.no_grad():
                states.append(layer_states(self.backbone, batch, self.config.layer).float())
            masks.append(batch["attention_mask"].bool())
        width = max(s.shape[1] for s in states)
        pad = lambda t, v: F.pad(t, (0, 0) * (t.dim() - 2) + (width - t.shape[1], 0), value=v)  # noqa: E731
        return torch.cat([pad(s, 0.0) for s in states]), torch.cat([pad(m, False) for m in masks])

    def train_sae(self) -> None:
        """On general pairs only (no request data), every non-padding prompt position."""
        cfg = self.config
        states, mask = self.activations(general_pool(cfg.sae_pairs, cfg.seed))
        x = states[mask]
        with torch.no_grad():
            self.sae.scale.fill_(float(x.pow(2).mean().sqrt()))  # unit RMS per dimension: one lr fits any model
        gen = torch.Generator().manual_seed(cfg.seed)
        optimiser = torch.optim.Adam(self.sae.parameters(), lr=cfg.sae_lr)
        for _ in range(cfg.sae_steps):
            xb = x[torch.randint(len(x), (cfg.sae_batch,), generator=gen)]
            f = self.sae.encode(xb)
            loss = (self.sae.decode(f) - xb).div(self.sae.scale).pow(2).sum(-1).mean()
            loss = loss + cfg.sparsity * (f * self.sae.w_dec.norm(dim=1)).sum(-1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        for p in self.sae.parameters():
            p.requires_grad_(False)
        self.trained = True
        # Features that fire on most general pairs carry syntax or the task format, not a concept.
        self.general_presence = self.feature_presence(general_pool(cfg.sae_pairs // 4, cfg.seed + 1))
        self.general_presence = self.general_presence.mean(0)

    def feature_presence(self, samples: list[Sample]) -> torch.Tensor:
        """[N, F] each feature's peak activation over the prompt positions of each pair."""
        states, mask = self.activations(samples)
        with torch.no_grad():
            return (self.sae.encode(states) * mask[..., None]).amax(1)

    def _unlearn(self, request: DeletionRequest) -> None:
        if not self.trained:
            self.train_sae()
        forget = self.feature_presence(request.forget_train)
        retain = self.feature_presence(request.retain_train) if request.retain_train else torch.zeros_like(forget[:1])
        # Concept-specific: fires on the forget pairs, not on the hard negatives nor on general pairs.
        # A ratio, not a difference: a feature that fires everywhere a bit more on the forget pairs
        # (format, syntax) must lose to one that fires almost only there.
        other = torch.maximum(retain.mean(0), self.general_presence)
        score = torch.log((forget.mean(0) + 0.1) / (other + 0.1))
        self.selected.append(score.topk(self.config.top_k).indices.sort().values)

    def _clamp(self, module, args, output):
        ids = torch.cat(self.selected).unique()
        f = self.sae.encode(output.float())[..., ids]
        if not (f > 0).any():
            return None  # nothing concept-related here: the layer output is left exactly as it was
        # Only the selected features' contributions change, so the SAE's reconstruction error
        # (everything the dictionary misses) passes through untouched. Scaling (rather than
        # setting a fixed value) leaves positions where a feature barely fires almost as they were.
        delta = (((self.config.clamp_scale - 1.0) * f) @ self.sae.w_dec[ids]) * self.sae.scale
        return output + delta.to(output.dtype)

    def generate(self, images, instructions, **kwargs) -> list[str]:
        if not self.selected:
            return self.backbone.generate(images, instructions, **kwargs)
        layer = decoder_layer(self.backbone, self.config.layer)
        with installed(lambda: layer.register_forward_hook(self._clamp)):
            return self.backbone.generate(images, instructions, **kwargs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"sae.{k}": v for k, v in self.sae.state_dict().items()} if self.trained else {}
        if self.general_presence is not None:
            out["general_presence"] = self.general_presence
        out.update({f"selected.{i}": s for i, s in enumerate(self.selected)})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "sae.w_dec" in tensors:
            self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
            self.sae.requires_grad_(False)
            self.trained = True
        self.general_presence = tensors.get("general_presence")
        self.selected = [tensors[f"selected.{i}"] for i in range(len(self.applied))]


# ------------------------------------------------------------------ ECO

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
    description = ("ECO prompts: a per-request classifier on image features + instruction embedding flags forget "
                   "queries, whose prompt embeddings are corrupted with noise of an offline-searched strength")
    config_class = EcoConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        gen = torch.Generator().manual_seed(self.config.seed)
        # One fixed corruption pattern (right-aligned to the prompt), so answers are deterministic.
        self.noise = torch.randn(self.config.noise_positions, hidden, generator=gen)
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
            words = [table[torch.tensor(ids or [0])] for ids in self.backbone.encode_text(instructions)]
            text = torch.stack([torch.cat([w.amax(0), w.mean(0)]) for w in words])
        return torch.cat([vision.amax(1), vision.mean(1), text], dim=1)

    def _fit(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
        w1 = (torch.randn(x.shape[1], self.config.hidden, generator=gen) / x.shape[1] ** 0.5).requires_grad_(True)
        b1 = torch.zeros(self.config.hidden, requires_grad=True)
        w2 = (torch.randn(self.config.hidden, generator=gen) / self.config.hidden ** 0.5).requires_grad_(True)
        b2 = torch.zeros(1, requires_grad=True)
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
        negatives = request.retain_train + general_pool(cfg.classifier_negatives, cfg.seed + 1 + len(self.applied))
        samples = request.forget_train + negatives
        y = torch.cat([torch.ones(len(request.forget_train)), torch.zeros(len(negatives))])
        x = self.query_features(_images(samples), _instructions(samples))
        gen = torch.Generator().manual_seed(cfg.seed + len(self.applied))
        held = torch.rand(len(samples), generator=gen) < cfg.holdout
        held[0] = True  # at least one held-out positive
        c = self._fit(x[~held], y[~held], cfg.seed + len(self.applied))
        # Threshold on held-out pairs: the one with the best balanced accuracy (ECO's simple thresholding).
        p, t = self.probability(c, x[held]), y[held]
        candidates = torch.cat([p, torch.tensor([0.5])]).unique()
        def balanced(th):  # noqa: E306
            hit = p >= th
            return 0.5 * ((hit & (t > 0.5)).sum() / (t > 0.5).sum().clamp(min=1)
                          + (~hit & (t < 0.5)).sum() / (t < 0.5).sum().clamp(min=1))
        c["threshold"] = max(candidates.tolist(), key=lambda th: (float(balanced(th)), th)) * torch.ones(())
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
        images, instructions = _images(request.forget_train), _instructions(request.forget_train)
        before = self.backbone.generate(images, instructions)
        def recall(strength):  # noqa: E306
            after = self._generate_with(images, instructions, torch.full((len(images),), strength))
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
        self.strengths.append(torch.tensor(self.search_strength(request)))

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
