"""MoE-Adapters: bottleneck adapter experts in the language model, a router per request.

An expert baseline of CORE's comparison (docs/methods.md), after MoE-Adapters for
continual learning. Every decoder layer's MLP gets a bank of bottleneck adapter experts
in parallel; each request trains a new top-k router (and the experts not yet frozen) on
the refusal NLL of its forget pairs, then the experts it used most are frozen. Each
request also fits a small autoencoder of its forget pairs' query features: at
inference the request whose autoencoder reconstructs a query within its threshold
picks the router, and a query no autoencoder fits gets the original model. The
threshold separates the request's forget pairs' reconstruction errors from its retain
pairs' (`hooked_experts.gate_threshold`, as CORE's gate uses retain pairs as
negatives); without retain pairs it is `ae_quantile` x `ae_margin` of the forget
pairs' errors (the forget-only form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.hooked_experts import ExpertConfig, HookedMethod, gate_threshold, prefixed


@dataclass
class MoEAdaptersConfig(ExpertConfig):
    lr: float = option(5e-3, "AdamW learning rate of the adapters and the request's router")
    experts: int = option(8, "bottleneck adapter experts per language-model layer (the paper: 22 for 11 tasks)")
    top_k: int = option(2, "experts each token is routed to")
    bottleneck: int = option(16, "hidden width of each adapter expert (the paper: 64 for CLIP ViT-B)")
    freeze_top: int = option(2, "most-used experts per layer frozen after each request")
    ae_hidden: int = option(8, "hidden width of each request's autoencoder (narrow, so it cannot memorise)")
    ae_steps: int = option(400, "full-batch Adam steps of each request's autoencoder")
    ae_lr: float = option(2e-3, "Adam learning rate of the autoencoders")
    ae_quantile: float = option(0.95, "without retain pairs: quantile of the request's own reconstruction errors ...")
    ae_margin: float = option(1.0, "... times this margin = the error up to which a query belongs to the request "
                                   "(with retain pairs: the cut between forget and retain errors, times this margin)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.top_k <= self.experts or self.freeze_top < 0 or self.bottleneck < 1 or self.ae_hidden < 1:
            raise ValueError("1 <= top_k <= experts, freeze_top >= 0, bottleneck >= 1 and ae_hidden >= 1 are required")


def fit_autoencoder(x: torch.Tensor, hidden: int, steps: int, lr: float, seed: int) -> dict[str, torch.Tensor]:
    """A one-hidden-layer ReLU autoencoder of the rows of x (full-batch Adam, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    x = _ae_input(x)
    d = x.shape[1]
    # Drawn on the CPU (the generator's device), then moved to the features' device.
    ae = {"enc_w": (torch.randn(d, hidden, generator=gen, device="cpu") / math.sqrt(d)).to(x.device),
          "enc_b": torch.zeros(hidden, device=x.device),
          "dec_w": (torch.randn(hidden, d, generator=gen, device="cpu") / math.sqrt(hidden)).to(x.device),
          "dec_b": x.mean(0).clone()}
    for t in ae.values():
        t.requires_grad_(True)
    optimiser = torch.optim.Adam(ae.values(), lr=lr)
    for _ in range(steps):
        loss = _reconstruct(ae, x).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return {k: v.detach() for k, v in ae.items()}


def _ae_input(x: torch.Tensor) -> torch.Tensor:
    # Unit-norm features have entries ~ 1/sqrt(D); at that scale a small autoencoder
    # learns nothing beyond the mean (measured), so entries are brought to ~1.
    return x * math.sqrt(x.shape[1])


def _reconstruct(ae: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    recon = torch.relu(x @ ae["enc_w"] + ae["enc_b"]) @ ae["dec_w"] + ae["dec_b"]
    return ((recon - x) ** 2).mean(1)


def reconstruction_error(ae: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """[B] mean squared reconstruction error of query features x."""
    return _reconstruct(ae, _ae_input(x))


@register
class MoEAdapters(HookedMethod):
    name = "moe_adapters"
    reads = ("forget", "retain")  # retain pairs: negatives of the autoencoder's cut
    description = ("MoE-Adapters: bottleneck adapter experts in the LM, a top-2 router per request, most-used "
                   "experts frozen; per-request autoencoders pick the router or the original model")
    config_class = MoEAdaptersConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        cfg = self.config
        self.layers = list(backbone.language_model.layers)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        gen = torch.Generator().manual_seed(cfg.seed)
        shape = (len(self.layers), cfg.experts)
        device = backbone.device
        # Up-projections start at zero: an untrained expert adds nothing. Float32 under any
        # model dtype; drawn on the CPU (the generator's device), then moved.
        self.down = (torch.randn(*shape, hidden, cfg.bottleneck, generator=gen, device="cpu")
                     / math.sqrt(hidden)).to(device)
        self.up = torch.zeros(*shape, cfg.bottleneck, hidden, device=device)
        self.frozen = torch.zeros(shape, dtype=torch.bool, device=device)
        self.routers: list[torch.Tensor] = []  # [layers, hidden, experts] per request
        self.autoencoders: list[dict[str, torch.Tensor]] = []
        self.ae_thresholds: list[torch.Tensor] = []
        self._usage: torch.Tensor | None = None  # expert selection counts while recording

    def install_hooks(self):
        return [layer.mlp.register_forward_hook(self._mlp_hook(i)) for i, layer in enumerate(self.layers)]

    def _mlp_hook(self, layer: int):
        def hook(module, args, output):
            task = self._route
            rows = (task >= 0).nonzero().squeeze(1)
            if len(rows) == 0:
                return None  # the original MLP output, untouched
            # [R, S, H]: what the MLP reads; the adapters sit in parallel to it. Routers and
            # adapters stay float32 under a half-precision model: compute in float32.
            x = args[0][rows].float()
            router = torch.stack([r[layer] for r in self.routers])[task[rows]]  # [R, H, N]
            logits = torch.einsum("rsh,rhn->rsn", x, router)
            top, picked = logits.topk(self.config.top_k, dim=-1)
            gates = torch.zeros_like(logits).scatter(-1, picked, torch.softmax(top, dim=-1))
            if self._usage is not None:
                self._usage[layer] += torch.zeros_like(logits).scatter(-1, picked, 1.0).sum((0, 1))
            # Dense over experts (cheap at this size); the gates zero the unpicked ones.
            inner = torch.relu(torch.einsum("rsh,nhd->rsnd", x, self.down[layer]))
            delta = torch.einsum("rsnd,ndh,rsn->rsh", inner, self.up[layer], gates)
            out = output.clone()
            out[rows] = output[rows] + delta.to(output.dtype)
            return out
        return hook

    def task_errors(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, T] reconstruction error / threshold of each request's autoencoder (<= 1: fits)."""
        errors = torch.stack([reconstruction_error(ae, feats) for ae in self.autoencoders], 1)
        return errors / torch.stack(self.ae_thresholds)

    def route(self, images, instructions):
        """[B] request whose router each query uses, -1 = the original model."""
        if not self.autoencoders:
            return torch.full((len(images),), -1, device=self.backbone.device)
        ratio = self.task_errors(self.features(images, instructions))
        best = ratio.argmin(1)
        fits = ratio.gather(1, best[:, None]).squeeze(1) <= 1.0
        return torch.where(fits, best, torch.full_like(best, -1))

    def training_route(self, n):
        return torch.full((n,), len(self.routers) - 1, device=self.backbone.device)

    def _unlearn(self, request):
        cfg = self.config
        t = len(self.routers)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + t)
        self.routers.append((torch.randn(len(self.layers), self.down.shape[2], cfg.experts, generator=gen,
                                         device="cpu") * 0.1).to(self.backbone.device))
        params = [self.routers[t], self.down, self.up]
        for p in params:
            p.requires_grad_(True)

        def keep_frozen_experts():
            # Zero gradients leave Adam's moments at zero: frozen experts do not move at all.
            self.down.grad[self.frozen] = 0.0
            self.up.grad[self.frozen] = 0.0

        self.fit_refusals(request, params, after_backward=keep_frozen_experts)

        # Freeze the experts this request used most (counted over its forget pairs).
        forget = request.forget_train
        batch = self.backbone.build_batch([s.image for s in forget], [s.instruction for s in forget],
                                          [s.answer for s in forget])
        self._usage = torch.zeros(len(self.layers), cfg.experts, device=self.backbone.device)
        with torch.no_grad(), self.hooked(self.training_route(len(forget))):
            self.backbone.model(**batch)
        if cfg.freeze_top > 0:
            self.frozen.scatter_(1, self._usage.topk(cfg.freeze_top, dim=1).indices, True)
        self._usage = None

        feats = self.pair_features(forget)
        ae = fit_autoencoder(feats, cfg.ae_hidden, cfg.ae_steps, cfg.ae_lr, cfg.seed * 1000 + t)
        self.autoencoders.append(ae)
        retain = self.pair_features(request.retain_train)
        # gate_threshold wants "higher = the request's": a low error is, so errors are negated.
        cut = -gate_threshold(-reconstruction_error(ae, feats),
                              None if retain is None else -reconstruction_error(ae, retain),
                              1.0 - cfg.ae_quantile, cfg.negative_weight)
        self.ae_thresholds.append(cut * cfg.ae_margin)

    def state_tensors(self):
        out = {"down": self.down, "up": self.up, "frozen": self.frozen}
        for i, (router, ae) in enumerate(zip(self.routers, self.autoencoders)):
            out[f"router.{i}"], out[f"ae_threshold.{i}"] = router, self.ae_thresholds[i]
            out.update({f"ae.{i}.{k}": v for k, v in ae.items()})
        return out

    def load_state_tensors(self, tensors):
        self.down, self.up, self.frozen = tensors["down"], tensors["up"], tensors["frozen"].bool()
        n = len(self.applied)
        self.routers = [tensors[f"router.{i}"] for i in range(n)]
        self.ae_thresholds = [tensors[f"ae_threshold.{i}"] for i in range(n)]
        self.autoencoders = [prefixed(tensors, f"ae.{i}.") for i in range(n)]
