"""Weight-editing methods: null-space contrastive visual forgetting and MMUnlearner.

`cvf_nullspace` (arXiv 2605.05909): the language model stays frozen; the vision side
(connector, and by default the vision encoder's linear layers) is fine-tuned with a
contrastive loss that moves forget images' features away from what they were and
toward the nearest retained (concept-free) images, and every update of a linear layer
is projected onto the null space of that layer's inputs on protected data, so those
inputs map to the same outputs. The protected subspace is kept as one uncentered
input covariance per layer (no raw data) and grows with every request.

`mmunlearner` (arXiv 2502.11051): a weight-saliency mask from diagonal Fisher
information (forget importance > gamma x retained importance) selects which weights
may move; then gradient ascent on the forget pairs' original answers and descent on
retain pairs, both masked. A new mask per request; retained importance accumulates
across requests (element-wise max), so weights that mattered to any earlier request's
retained data stay protected.
"""

from __future__ import annotations

import hashlib
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.methods.finetune import Batches
from vlforget.methods.losses import answer_nll
from vlforget.methods.training import accumulate_squared_grads, shard, train_steps
from vlforget.types import DeletionRequest, Sample


def image_key(image) -> str:
    """Identity of an image by its pixels (forget and retain pairs often share images)."""
    return hashlib.sha1(image.convert("RGB").tobytes()).hexdigest()


def unique_images(samples: list[Sample], exclude: set[str] = frozenset()) -> list:
    seen, images = set(exclude), []
    for s in samples:
        key = image_key(s.image)
        if key not in seen:
            seen.add(key)
            images.append(s.image)
    return images


def dihedral(images: list) -> list:
    """Each image in its 8 flips/rotations: the objects move to other cells, while what
    they are (shape, colour, pattern) stays, so a concept-free image stays concept-free."""
    ops = [Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
           Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
           Image.Transpose.TRANSVERSE]
    return [variant for image in images for variant in [image, *(image.transpose(op) for op in ops)]]


# ------------------------------------------------------------------ null space

@contextmanager
def record_inputs(layers: dict[str, torch.nn.Linear]):
    """Collect every input row each linear layer sees (as [N, in]); hooks always removed."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [layer.register_forward_hook(lambda m, args, out, name=name: seen[name].append(
        args[0].detach().reshape(-1, args[0].shape[-1]))) for name, layer in layers.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class NullSpace:
    """Protected inputs of one linear layer, kept as their uncentered covariance.

    An update dW with dW x = 0 for every protected input x leaves those outputs
    unchanged; `projection` gives P with dW P in that null space (up to the
    `energy` share of the protected inputs' energy that is treated as protected).
    """

    def __init__(self, dim: int):
        self.covariance = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.to(torch.float64)
        self.covariance += x.T @ x

    def projection(self, energy: float) -> torch.Tensor:
        dim = self.covariance.shape[0]
        if not self.covariance.any():
            return torch.eye(dim)
        values, vectors = torch.linalg.eigh(self.covariance)  # ascending
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        share = values.cumsum(0) / values.sum()
        # Smallest k whose leading directions hold `energy` of the protected inputs.
        k = int((share < energy).sum().item()) + 1
        basis = vectors[:, :min(k, dim)]
        return (torch.eye(dim, dtype=torch.float64) - basis @ basis.T).float()


@dataclass
class CVFConfig(MethodConfig):
    steps: int = option(80, "optimiser steps per request")
    batch_size: int = option(16, "forget images per batch")
    lr: float = option(1e-3, "Adam learning rate of the vision-side linear weights")
    temperature: float = option(0.1, "temperature of the contrastive loss (cosine similarities)")
    protect_energy: float = option(0.999999, "share of the protected inputs' energy whose directions are frozen "
                                   "(1.0 = the whole span; lower leaves more room, retained features drift a little)")
    train_encoder: bool = option(True, "also edit the vision encoder's linear layers (False: connector only)")
    augment: bool = option(True, "use the 8 flips/rotations of each forget and retained image: the few retained "
                           "images of a request then cover objects in every position")
    protect_forgotten: bool = option(True, "after a request, add its (edited) forget images to the protected "
                                     "subspace so later requests cannot undo the forgetting")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("steps >= 0, batch_size >= 1, lr > 0 and temperature > 0 are required")
        if not 0 < self.protect_energy <= 1:
            raise ValueError(f"protect_energy must be in (0, 1], got {self.protect_energy}")


@register
class NullSpaceCVF(Method):
    name = "cvf_nullspace"
    description = ("null-space contrastive visual forgetting: LLM frozen, vision-side linear weights move forget "
                   "images toward retained ones, updates projected onto the null space of protected features")
    config_class = CVFConfig

    def __init__(self, backbone, config: CVFConfig | None = None):
        super().__init__(backbone, config)
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        modules = {f"connector.{n}": m for n, m in backbone.connector.named_modules()}
        if self.config.train_encoder:
            modules.update({f"encoder.{n}": m for n, m in backbone.vision_encoder.named_modules()})
        # Linear weights only: biases, norms and embeddings would shift every input alike.
        self.layers = {n: m for n, m in modules.items() if isinstance(m, torch.nn.Linear)}
        for layer in self.layers.values():
            layer.weight.requires_grad_(True)
        self.spaces = {n: NullSpace(m.in_features) for n, m in self.layers.items()}
        self.drift: list[float] = []  # per request: max relative change of protected features

    def features(self, images) -> torch.Tensor:
        """[B, tokens * hidden] L2-normalised connector output (what the LLM reads)."""
        return F.normalize(self.backbone.image_features(images).flatten(1), dim=-1)

    def protect(self, images) -> None:
        if not images:
            return
        with torch.no_grad(), record_inputs(self.layers) as seen:
            self.backbone.image_features(images)
        for name, rows in seen.items():
            self.spaces[name].add(torch.cat(rows))

    def contrastive_loss(self, current: torch.Tensor, original: torch.Tensor, retained: torch.Tensor) -> torch.Tensor:
        """Pull toward retained images (positives), away from the forget images' original features."""
        negatives = current @ original.T / self.config.temperature
        positives = current @ retained.T / self.config.temperature
        return (torch.logsumexp(torch.cat([positives, negatives], 1), 1) - torch.logsumexp(positives, 1)).mean()

    def _unlearn(self, request: DeletionRequest) -> None:
        cfg = self.config
        forget = unique_images(request.forget_train)
        # A retain pair that shows a forget image asks for the impossible here (same
        # image, same features, different fate): CVF can only serve retained images.
        retain = unique_images(request.retain_train, exclude={image_key(i) for i in forget})
        if not retain:
            # No concept-free image to contrast with (a textual-scope request asks about
            # the same images it must keep answering, or no retain pairs were given):
            # there is no visual concept to move, and pushing blindly would hurt.
            self.drift.append(None)
            return
        if cfg.augment:
            forget, retain = dihedral(forget), dihedral(retain)
        self.protect(retain)
        projections = {n: s.projection(cfg.protect_energy) for n, s in self.spaces.items()}
        with torch.no_grad():
            original = self.features(forget)
            retained = self.features(retain)
        params = [m.weight for m in self.layers.values()]
        optimiser = torch.optim.Adam(params, lr=cfg.lr)
        rng = random.Random(cfg.seed * 1000 + len(self.applied))
        before: list[torch.Tensor] = []

        def step_loss(step: int) -> torch.Tensor:
            picked = shard([rng.randrange(len(forget)) for _ in range(cfg.batch_size)])  # this process's slice
            return self.contrastive_loss(self.features([forget[i] for i in picked]), original[picked], retained)

        def remember() -> None:
            before[:] = [p.detach().clone() for p in params]

        def project() -> None:
            # Project the step actually taken (Adam rescales per entry, so projecting
            # the gradient alone would not keep the update in the null space).
            with torch.no_grad():
                for (name, layer), old in zip(self.layers.items(), before):
                    layer.weight.copy_(old + (layer.weight - old) @ projections[name])

        train_steps(params, optimiser, cfg.steps, step_loss, clip=None, after_backward=remember, after_step=project)
        with torch.no_grad():
            self.drift.append(float((self.features(retain) - retained).norm(dim=1).max()))
        if cfg.protect_forgotten:
            self.protect(forget)

    # -- state ------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"weight.{n}": m.weight.detach().clone() for n, m in self.layers.items()}
        tensors.update({f"covariance.{n}": s.covariance.clone() for n, s in self.spaces.items()})
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, m in self.layers.items():
                m.weight.copy_(tensors[f"weight.{n}"])
                self.spaces[n].covariance = tensors[f"covariance.{n}"].to(torch.float64).clone()

    def state_json(self) -> dict:
        return {"retained_feature_drift": self.drift}

    def load_state_json(self, data: dict) -> None:
        self.drift = list(data.get("retained_feature_drift", []))

    def report_extras(self) -> dict:
        return {"retained_feature_drift": self.drift}


# ------------------------------------------------------------------ MMUnlearner

# Their released code edits every projection / MLP weight of the MLLM (vision tower,
# projector and LLM), not embeddings, norms or the output head.
SALIENCY_TARGETS = r".*(_proj|fc\d|linear_\d)\.weight$"


@dataclass
class MMUnlearnerConfig(MethodConfig):
    steps: int = option(20, "optimiser steps per request (one forget + one retain batch each)")
    batch_size: int = option(16, "pairs per batch (forget and retain batches each)")
    lr: float = option(1e-3, "AdamW learning rate (no weight decay, so unmasked weights never move)")
    forget_weight: float = option(1.0, "weight of the gradient-ascent term on the forget pairs' original answers")
    retain_weight: float = option(1.0, "weight of the NLL term on retain pairs")
    saliency_ratio: float = option(3.0, "gamma: a weight is updated when forget Fisher > gamma x retained Fisher")
    fisher_batches: int = option(4, "batches used to estimate each diagonal Fisher")
    targets: str = option(SALIENCY_TARGETS, "regex of parameter names that may be edited")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.fisher_batches < 1:
            raise ValueError("steps >= 0, batch_size >= 1, lr > 0 and fisher_batches >= 1 are required")
        if self.saliency_ratio < 0:
            raise ValueError(f"saliency_ratio must be >= 0, got {self.saliency_ratio}")


@register
class MMUnlearner(Method):
    name = "mmunlearner"
    description = ("MMUnlearner: Fisher saliency mask (forget vs retained importance) restricts gradient ascent "
                   "on forget answers and descent on retain answers; retained importance accumulates")
    config_class = MMUnlearnerConfig

    def __init__(self, backbone, config: MMUnlearnerConfig | None = None):
        super().__init__(backbone, config)
        pattern = re.compile(self.config.targets)
        self.params = {n: p for n, p in backbone.model.named_parameters() if pattern.fullmatch(n)}
        if not self.params:
            raise ValueError(f"no parameter matches targets {self.config.targets!r}")
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.protected = {n: torch.zeros_like(p) for n, p in self.params.items()}  # accumulated retained Fisher
        self.edited = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}  # union of masks
        self.sparsity: list[float] = []  # per request: share of candidate weights in its mask

    @property
    def model(self):
        return self.backbone.model

    def fisher(self, batches: Batches) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher (mean squared gradient of the answer NLL), divided by
        its mean over all candidate weights: forget and retained sets have different loss
        scales, and the saliency test should compare where each set's importance lies."""
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        accumulate_squared_grads(self.model, list(self.params.values()), list(total.values()),
                                 lambda: answer_nll(self.model, self.backbone.build_batch(*batches.next())),
                                 self.config.fisher_batches)
        scale = sum(t.sum() for t in total.values()) / sum(t.numel() for t in total.values())
        return {n: t / scale.clamp(min=1e-30) for n, t in total.items()}

    def saliency_mask(self, forget: dict[str, torch.Tensor], retained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: forget[n] > self.config.saliency_ratio * retained[n] for n in forget}

    def _unlearn(self, request: DeletionRequest) -> None:
        cfg = self.config
        seed = cfg.seed * 1000 + len(self.applied)
        forget = Batches(request.forget_train, cfg.batch_size, seed, target="original")
        retain = Batches(request.retain_train, cfg.batch_size, seed + 1) if request.retain_train else None
        forget_fisher = self.fisher(Batches(request.forget_train, cfg.batch_size, seed + 2, target="original"))
        if retain is not None:
            retain_fisher = self.fisher(Batches(request.retain_train, cfg.batch_size, seed + 3))
            for n in self.protected:
                self.protected[n] = torch.maximum(self.protected[n], retain_fisher[n])
        mask = self.saliency_mask(forget_fisher, self.protected)
        for n in mask:
            self.edited[n] |= mask[n]
        self.sparsity.append(float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values())))

        params = list(self.params.values())
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        self.model.train()

        def step_loss(step: int) -> torch.Tensor:
            loss = -cfg.forget_weight * answer_nll(self.model, self.backbone.build_batch(*shard(*forget.next())))
            if retain is not None:
                loss = loss + cfg.retain_weight * answer_nll(self.model, self.backbone.build_batch(*shard(*retain.next())))
            return loss

        def apply_mask() -> None:
            for n, p in self.params.items():
                p.grad *= mask[n]  # Adam moments of masked-out entries stay 0, so they never move

        train_steps(params, optimiser, cfg.steps, step_loss, after_backward=apply_mask)
        self.model.eval()

    # -- state: edited entries only (plus the accumulated protection) ----------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for n, p in self.params.items():
            tensors[f"edited.{n}"] = self.edited[n].to(torch.uint8)
            tensors[f"values.{n}"] = p.detach()[self.edited[n]].clone()
            tensors[f"protected.{n}"] = self.protected[n].clone()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                self.edited[n] = tensors[f"edited.{n}"].bool()
                p[self.edited[n]] = tensors[f"values.{n}"]
                self.protected[n] = tensors[f"protected.{n}"].clone()

    def state_json(self) -> dict:
        return {"mask_share": self.sparsity}

    def load_state_json(self, data: dict) -> None:
        self.sparsity = list(data.get("mask_share", []))

    def report_extras(self) -> dict:
        return {"mask_share": self.sparsity}
