"""CVF null-space: contrastive visual forgetting with null-space-projected updates (arXiv 2605.05909).

The language model stays frozen; the vision side (connector, and by default the vision
encoder's linear layers) is fine-tuned with a contrastive loss that moves forget
images' features away from what they were and toward the nearest retained
(concept-free) images, and every update of a linear layer is projected onto the null
space of that layer's inputs on protected data, so those inputs map to the same
outputs. The protected subspace is kept as one uncentered input covariance per layer
(no raw data) and grows with every request.

The protected span is capped (`min_free`): at the paper's near-1 energy share it covered
almost every input direction of most layers once a request's retained images (8 views
each) were protected, and CVF edited nothing (validation, 3 requests: leak 95.8, the
base model's). The least-energy `min_free` share of each layer's directions is always
left free; protection of retained images is then approximate (their features drift,
recorded per request as `retained_feature_drift`).
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.methods.training import shard, train_steps
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
    Kept on the CPU in float64 whatever the model's device and dtype (the eigendecomposition
    runs there); `projection` is moved to the weights by its user.
    """

    def __init__(self, dim: int):
        self.covariance = torch.zeros(dim, dim, dtype=torch.float64, device="cpu")

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.to("cpu", torch.float64)
        self.covariance += x.T @ x

    def projection(self, energy: float, min_free: float = 0.0) -> torch.Tensor:
        """P onto the complement of the protected directions: the fewest leading directions
        holding `energy` of the protected inputs' energy, but at most (1 - min_free) x dim of
        them, so at least that share of the input space stays free to edit."""
        dim = self.covariance.shape[0]
        if not self.covariance.any():
            return torch.eye(dim, device="cpu")
        values, vectors = torch.linalg.eigh(self.covariance)  # ascending
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        share = values.cumsum(0) / values.sum()
        # Smallest k whose leading directions hold `energy` of the protected inputs.
        k = int((share < energy).sum().item()) + 1
        # A near-1 energy share spans almost every direction once a few hundred images are
        # protected (most layers then had no free direction and CVF edited nothing).
        k = min(k, dim - int(min_free * dim))
        basis = vectors[:, :k]
        return (torch.eye(dim, dtype=torch.float64, device="cpu") - basis @ basis.T).float()


@dataclass
class CVFConfig(MethodConfig):
    steps: int = option(80, "optimiser steps per request")
    batch_size: int = option(16, "forget images per batch")
    lr: float = option(1e-3, "Adam learning rate of the vision-side linear weights")
    temperature: float = option(0.1, "temperature of the contrastive loss (cosine similarities)")
    protect_energy: float = option(0.999999, "share of the protected inputs' energy whose directions are frozen "
                                   "(1.0 = the whole span; lower leaves more room, retained features drift a little)")
    min_free: float = option(0.75, "share of each layer's input dimensions always left free (the least-energy "
                             "directions): without it the protected span covers nearly every direction and "
                             "nothing is edited; 0 = protect_energy alone decides (validation: 0.1-0.25 still "
                             "edit nothing that shows, 0.5 leak 80, 0.75 leak 69, 0.9 AR 35)")
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
        if not 0 <= self.min_free < 1:
            raise ValueError(f"min_free must be in [0, 1), got {self.min_free}")


@register
class NullSpaceCVF(Method):
    name = "cvf_nullspace"
    reads = ("forget", "retain")  # retained images are its positives: no retain pairs, no edit
    refuses = False  # moves forget images' features toward retained images: answers change, no refusal
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
        projections = {n: s.projection(cfg.protect_energy, cfg.min_free).to(self.layers[n].weight.device)
                       for n, s in self.spaces.items()}
        with torch.no_grad():
            original = self.features(forget)
            retained = self.features(retain)
        params = [m.weight for m in self.layers.values()]
        optimiser = torch.optim.Adam(params, lr=cfg.lr)
        rng = random.Random(self.request_seed())
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
                    # In float32 whatever the weights' dtype (the projection is float32), cast back.
                    step = (layer.weight - old).float() @ projections[name]
                    layer.weight.copy_((old.float() + step).to(layer.weight.dtype))

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
