"""SAUCE (arXiv 2503.14530): sparse-autoencoder feature clamping at inference.

A sparse autoencoder is trained once on a decoder layer's hidden states over general
pairs (no request data); each request selects the `top_k` features most specific to
its forget pairs (against its retain pairs and general pairs), and at inference those
features' contributions are scaled by `clamp_scale` wherever they fire. The model's
weights never change; the hook is installed only for the duration of `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.methods.hooks import decoder_layer, installed, layer_states
from vlforget.methods.samples import images_of, instructions_of
from vlforget.types import DeletionRequest, Sample


class SparseAutoencoder(torch.nn.Module):
    """ReLU SAE: f = relu((x - b_dec) W_enc + b_enc), x_hat = f W_dec + b_dec; inputs divided by `scale`."""

    def __init__(self, hidden: int, features: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        # Made on the CPU (the generator's device) in float32; the owner moves it to the model.
        decoder = F.normalize(torch.randn(features, hidden, generator=gen, device="cpu"), dim=1)
        self.w_dec = torch.nn.Parameter(decoder)
        self.w_enc = torch.nn.Parameter(decoder.T.clone())  # tied at init, the usual SAE warm start
        self.b_enc = torch.nn.Parameter(torch.zeros(features, device="cpu"))
        self.b_dec = torch.nn.Parameter(torch.zeros(hidden, device="cpu"))
        self.register_buffer("scale", torch.ones((), device="cpu"))

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
    reads = ("forget", "retain", "general")
    refuses = False  # clamps SAE features at inference: answers change, no refusal
    description = ("SAUCE: a sparse autoencoder on a decoder layer's hidden states; each request's most "
                   "concept-specific features are clamped wherever they fire")
    config_class = SauceConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        self.sae = SparseAutoencoder(hidden, self.config.features, self.config.seed).to(backbone.device)
        self.trained = False
        self.selected: list[torch.Tensor] = []  # [top_k] feature ids per request
        self.general_presence: torch.Tensor | None = None  # [F] mean peak activation on general pairs

    def activations(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, S, H] layer outputs and [N, S] attention mask of the prompts."""
        states, masks = [], []
        for i in range(0, len(samples), 256):
            batch = self.backbone.build_batch(images_of(samples[i:i + 256]), instructions_of(samples[i:i + 256]))
            with torch.no_grad():
                states.append(layer_states(self.backbone, batch, self.config.layer).float())
            masks.append(batch["attention_mask"].bool())
        width = max(s.shape[1] for s in states)
        pad = lambda t, v: F.pad(t, (0, 0) * (t.dim() - 2) + (width - t.shape[1], 0), value=v)  # noqa: E731
        return torch.cat([pad(s, 0.0) for s in states]), torch.cat([pad(m, False) for m in masks])

    def train_sae(self) -> None:
        """On general pairs only (no request data), every non-padding prompt position."""
        cfg = self.config
        states, mask = self.activations(self.general_pool(cfg.sae_pairs, f"inference-methods-{cfg.seed}"))
        x = states[mask]
        with torch.no_grad():
            self.sae.scale.fill_(float(x.pow(2).mean().sqrt()))  # unit RMS per dimension: one lr fits any model
        gen = torch.Generator().manual_seed(cfg.seed)
        optimiser = torch.optim.Adam(self.sae.parameters(), lr=cfg.sae_lr)
        for _ in range(cfg.sae_steps):
            xb = x[torch.randint(len(x), (cfg.sae_batch,), generator=gen, device="cpu").to(x.device)]
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
        self.general_presence = self.feature_presence(
            self.general_pool(cfg.sae_pairs // 4, f"inference-methods-{cfg.seed + 1}"))
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
