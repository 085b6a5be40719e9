"""CORE's expert baselines: GMM, EProj, MoE-Adapters and O3 (docs/methods.md).

All four are trained request after request to give each forget pair its refusal
(NLL of `request.refusals[0]`, no retain data) and differ in *what* is trained and
*how a query finds it* at inference:

- `gmm`: one shared projector, fine-tuned for every request; no routing at all.
- `eproj`: a new projector per request, picked by similarity to stored request keys.
- `moe_adapters`: bottleneck adapter experts in the language model with a router per
  request; an autoencoder per request picks the router (or none: the original model).
- `o3`: a LoRA per request, kept orthogonal to earlier ones; each LoRA is scaled by
  its request's out-of-distribution detector score.

They act through forward hooks installed only inside `HookedMethod.hooked()`, with a
per-row route, so one batch can mix queries that use different experts (or none).
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.methods.clustering import kmeans
from vlforget.methods.output_adapter import OutputAdapter
from vlforget.methods.finetune import Batches
from vlforget.methods.training import shard, train_steps
from vlforget.types import DeletionRequest

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------ query features

def token_bag(backbone, texts: list[str], buckets: int) -> torch.Tensor:
    """[B, buckets] unit-norm hashed bag of token unigrams and bigrams (a table lookup).

    Intents live in a few words ("how many", "where is"); a bag keeps them apart where
    a mean of token embeddings blurs them (the same finding as CORE's gate).
    """
    rows = []
    for ids in backbone.encode_text(texts):
        ids = ids or [0]
        grams = [i % buckets for i in ids] + [(a * 7919 + b * 104729 + 1) % buckets for a, b in zip(ids, ids[1:])]
        bag = torch.zeros(buckets)
        bag[torch.tensor(grams)] = 1.0
        rows.append(bag / bag.norm())
    return torch.stack(rows)


@torch.no_grad()
def query_features(backbone, images, instructions, buckets: int = 256) -> torch.Tensor:
    """[B, 2 Dv + buckets] unit-norm joint feature of image and instruction.

    Image: mean- and max-pooled frozen vision features (what the connector reads);
    max pooling keeps a small object visible next to the scene average. The image and
    instruction halves have equal norm, so a cosine is the mean of the two cosines.
    """
    vision = backbone.vision_features(list(images)).float()
    image = F.normalize(torch.cat([vision.mean(1), vision.amax(1)], 1), dim=-1)
    text = token_bag(backbone, list(instructions), buckets)
    return torch.cat([image, text], 1) / math.sqrt(2.0)


# ------------------------------------------------------------------ shared machinery

@dataclass
class ExpertConfig(MethodConfig):
    steps: int = option(60, "optimiser steps per request")
    batch_size: int = option(16, "forget pairs per step")
    lr: float = option(1e-3, "AdamW learning rate")
    feature_buckets: int = option(256, "hash buckets of the instruction token bag in the query features")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.feature_buckets < 1:
            raise ValueError("steps >= 0, batch_size >= 1, lr > 0 and feature_buckets >= 1 are required")


class HookedMethod(Method):
    """A method that acts through hooks living only inside `hooked(route)`.

    `route` says per batch row what to apply (subclass-specific: an expert index, -1
    for none, or weights); hooks read it from `self._route`.
    """

    config_class = ExpertConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        self._route: Any = None

    def install_hooks(self) -> list:
        """Register this method's hooks; return their handles."""
        raise NotImplementedError

    def route(self, images, instructions) -> Any:
        """Per-row route of a batch at inference."""
        raise NotImplementedError

    def training_route(self, n: int) -> Any:
        """Per-row route while the current request trains (every row: the new expert)."""
        raise NotImplementedError

    @contextmanager
    def hooked(self, route):
        handles = self.install_hooks()
        self._route = route
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._route = None

    def features(self, images, instructions) -> torch.Tensor:
        return query_features(self.backbone, images, instructions, self.config.feature_buckets)

    def generate(self, images, instructions, batch_size: int = 64, **kwargs) -> list[str]:
        # Route chunk by chunk so the hooks see exactly the rows they were routed for.
        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            ims, ins = list(images[start:start + batch_size]), list(instructions[start:start + batch_size])
            with self.hooked(self.route(ims, ins)):
                answers += self.backbone.generate(ims, ins, batch_size=batch_size, **kwargs)
        return answers

    def fit_refusals(self, request: DeletionRequest, params: list[torch.Tensor], extra_loss=None,
                     after_backward=None) -> None:
        """The shared loop: NLL of the refusal on the request's forget pairs."""
        cfg = self.config
        batches = Batches(request.forget_train, cfg.batch_size, cfg.seed * 1000 + len(self.applied))
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        model = self.backbone.model
        model.eval()  # frozen parts behave as at inference (no dropout)

        def step_loss(step: int) -> torch.Tensor:
            images, instructions, targets = shard(*batches.next())  # this process's slice of the batch
            batch = self.backbone.build_batch(images, instructions, targets)
            with self.hooked(self.training_route(len(images))):
                loss = model(**batch).loss
            return loss + extra_loss() if extra_loss is not None else loss

        train_steps(params, optimiser, cfg.steps, step_loss, after_backward=after_backward)
        for p in params:
            p.requires_grad_(False)


def add_output_adapter(h: torch.Tensor, rows: torch.Tensor, adapter: OutputAdapter) -> torch.Tensor:
    """h with adapter(h) added on `rows` (CORE's refuser output adapter, see refusers.py)."""
    out = h.clone()
    out[rows] = h[rows] + adapter(h[rows])
    return out


# ------------------------------------------------------------------ GMM

@dataclass
class GMMConfig(ExpertConfig):
    lr: float = option(1e-2, "AdamW learning rate of the projector (and output adapter)")
    output_adapter_rank: int = option(16, "rank of an always-on output adapter on the LM head input, "
                                          "as CORE's refusers have (0 = projector only, as in the paper)")


@register
class GMM(HookedMethod):
    name = "gmm"
    description = "GMM: fine-tune only the shared projector on each request's refusals, no routing"
    config_class = GMMConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        rank = self.config.output_adapter_rank
        self.adapter = OutputAdapter(hidden, rank, self.config.seed) if rank > 0 else None

    def install_hooks(self):
        if self.adapter is None:
            return []  # the projector is trained in place: nothing to hook
        return [self.backbone.model.lm_head.register_forward_pre_hook(
            lambda module, args: (self.adapter(args[0]) + args[0], *args[1:]))]

    def route(self, images, instructions):
        return None  # every query goes through the one shared projector

    def training_route(self, n):
        return None

    def _unlearn(self, request):
        params = list(self.backbone.connector.parameters())
        params += list(self.adapter.parameters()) if self.adapter is not None else []
        for p in params:
            p.requires_grad_(True)
        self.fit_refusals(request, params)

    def state_tensors(self):
        out = {f"connector.{k}": v for k, v in self.backbone.connector.state_dict().items()}
        if self.adapter is not None:
            out.update({f"adapter.{k}": v for k, v in self.adapter.state_dict().items()})
        return out

    def load_state_tensors(self, tensors):
        self.backbone.connector.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("connector.")})
        if self.adapter is not None:
            self.adapter.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})


# ------------------------------------------------------------------ EProj

@dataclass
class EProjConfig(ExpertConfig):
    lr: float = option(1e-2, "AdamW learning rate of the request's projector (and output adapter)")
    output_adapter_rank: int = option(16, "rank of each projector's output adapter on the LM head input, "
                                          "as CORE's refusers have (0 = projector only, as in the paper)")
    key_quantile: float = option(0.1, "a query uses the closest request's projector only if its similarity to "
                                      "that request's key reaches this quantile of the request's own forget pairs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.key_quantile <= 1.0:
            raise ValueError(f"key_quantile must be in [0, 1], got {self.key_quantile}")


@register
class EProj(HookedMethod):
    name = "eproj"
    description = "EProj: a new projector per request, picked by similarity to per-request keys (else the original)"
    config_class = EProjConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        self.hidden = backbone.model.get_input_embeddings().weight.shape[1]
        self.projectors = torch.nn.ModuleList()
        self.adapters = torch.nn.ModuleList()
        self.keys: list[torch.Tensor] = []  # [D] unit-norm mean query feature of each request's forget pairs
        self.thresholds: list[torch.Tensor] = []  # [] similarity a query needs to use that request's projector

    def _new_expert(self, index: int) -> None:
        # A copy of the *original* projector: the backbone's own is never trained.
        self.projectors.append(copy.deepcopy(self.backbone.connector))
        if self.config.output_adapter_rank > 0:
            self.adapters.append(OutputAdapter(self.hidden, self.config.output_adapter_rank,
                                               self.config.seed * 1000 + index))

    def install_hooks(self):
        handles = [self.backbone.connector.register_forward_hook(self._connector_hook)]
        if len(self.adapters):
            handles.append(self.backbone.model.lm_head.register_forward_pre_hook(self._head_hook))
        return handles

    def _connector_hook(self, module, args, output):
        chosen = self._route
        if chosen is None or bool((chosen < 0).all()):
            return None  # the original projector's output, untouched
        out = output.clone()
        for e in chosen[chosen >= 0].unique().tolist():
            rows = (chosen == e).nonzero().squeeze(1)
            out[rows] = self.projectors[e](args[0][rows])
        return out

    def _head_hook(self, module, args):
        chosen, h = self._route, args[0]
        for e in chosen[chosen >= 0].unique().tolist():
            h = add_output_adapter(h, (chosen == e).nonzero().squeeze(1), self.adapters[e])
        return (h, *args[1:])

    def route(self, images, instructions):
        """[B] index of the request whose projector each query uses, -1 = the original."""
        if not self.keys:
            return torch.full((len(images),), -1)
        sims = self.features(images, instructions) @ torch.stack(self.keys).T
        best = sims.argmax(1)
        fits = sims.gather(1, best[:, None]).squeeze(1) >= torch.stack(self.thresholds)[best]
        return torch.where(fits, best, torch.full_like(best, -1))

    def training_route(self, n):
        return torch.full((n,), len(self.projectors) - 1)

    def _unlearn(self, request):
        index = len(self.projectors)
        self._new_expert(index)
        params = list(self.projectors[index].parameters())
        params += list(self.adapters[index].parameters()) if len(self.adapters) else []
        for p in params:
            p.requires_grad_(True)
        self.fit_refusals(request, params)
        feats = self.features([s.image for s in request.forget_train], [s.instruction for s in request.forget_train])
        key = F.normalize(feats.mean(0), dim=0)
        self.keys.append(key)
        self.thresholds.append(torch.quantile(feats @ key, self.config.key_quantile))

    def state_tensors(self):
        out = {}
        for i in range(len(self.projectors)):
            out.update({f"projector.{i}.{k}": v for k, v in self.projectors[i].state_dict().items()})
            if len(self.adapters):
                out.update({f"adapter.{i}.{k}": v for k, v in self.adapters[i].state_dict().items()})
            out[f"key.{i}"], out[f"threshold.{i}"] = self.keys[i], self.thresholds[i]
        return out

    def load_state_tensors(self, tensors):
        self.projectors, self.adapters = torch.nn.ModuleList(), torch.nn.ModuleList()
        self.keys, self.thresholds = [], []
        for i in range(len(self.applied)):
            self._new_expert(i)
            self.projectors[i].load_state_dict(_prefixed(tensors, f"projector.{i}."))
            if len(self.adapters):
                self.adapters[i].load_state_dict(_prefixed(tensors, f"adapter.{i}."))
            self.keys.append(tensors[f"key.{i}"])
            self.thresholds.append(tensors[f"threshold.{i}"])
        for p in [*self.projectors.parameters(), *self.adapters.parameters()]:
            p.requires_grad_(False)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ MoE-Adapters

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
    ae_quantile: float = option(0.95, "quantile of the request's own reconstruction errors ...")
    ae_margin: float = option(1.0, "... times this margin = the error up to which a query belongs to the request")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.top_k <= self.experts or self.freeze_top < 0 or self.bottleneck < 1 or self.ae_hidden < 1:
            raise ValueError("1 <= top_k <= experts, freeze_top >= 0, bottleneck >= 1 and ae_hidden >= 1 are required")


def fit_autoencoder(x: torch.Tensor, hidden: int, steps: int, lr: float, seed: int) -> dict[str, torch.Tensor]:
    """A one-hidden-layer ReLU autoencoder of the rows of x (full-batch Adam, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    x = _ae_input(x)
    d = x.shape[1]
    ae = {"enc_w": torch.randn(d, hidden, generator=gen) / math.sqrt(d), "enc_b": torch.zeros(hidden),
          "dec_w": torch.randn(hidden, d, generator=gen) / math.sqrt(hidden), "dec_b": x.mean(0).clone()}
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
        # Up-projections start at zero: an untrained expert adds nothing.
        self.down = torch.randn(*shape, hidden, cfg.bottleneck, generator=gen) / math.sqrt(hidden)
        self.up = torch.zeros(*shape, cfg.bottleneck, hidden)
        self.frozen = torch.zeros(shape, dtype=torch.bool)
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
            x = args[0][rows]  # [R, S, H]: what the MLP reads; the adapters sit in parallel to it
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
            out[rows] = output[rows] + delta
            return out
        return hook

    def task_errors(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, T] reconstruction error / threshold of each request's autoencoder (<= 1: fits)."""
        errors = torch.stack([reconstruction_error(ae, feats) for ae in self.autoencoders], 1)
        return errors / torch.stack(self.ae_thresholds)

    def route(self, images, instructions):
        """[B] request whose router each query uses, -1 = the original model."""
        if not self.autoencoders:
            return torch.full((len(images),), -1)
        ratio = self.task_errors(self.features(images, instructions))
        best = ratio.argmin(1)
        fits = ratio.gather(1, best[:, None]).squeeze(1) <= 1.0
        return torch.where(fits, best, torch.full_like(best, -1))

    def training_route(self, n):
        return torch.full((n,), len(self.routers) - 1)

    def _unlearn(self, request):
        cfg = self.config
        t = len(self.routers)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + t)
        self.routers.append(torch.randn(len(self.layers), self.down.shape[2], cfg.experts, generator=gen) * 0.1)
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
        self._usage = torch.zeros(len(self.layers), cfg.experts)
        with torch.no_grad(), self.hooked(self.training_route(len(forget))):
            self.backbone.model(**batch)
        if cfg.freeze_top > 0:
            self.frozen.scatter_(1, self._usage.topk(cfg.freeze_top, dim=1).indices, True)
        self._usage = None

        feats = self.features([s.image for s in forget], [s.instruction for s in forget])
        ae = fit_autoencoder(feats, cfg.ae_hidden, cfg.ae_steps, cfg.ae_lr, cfg.seed * 1000 + t)
        self.autoencoders.append(ae)
        self.ae_thresholds.append(torch.quantile(reconstruction_error(ae, feats), cfg.ae_quantile) * cfg.ae_margin)

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
        self.autoencoders = [_prefixed(tensors, f"ae.{i}.") for i in range(n)]


# ------------------------------------------------------------------ O3

@dataclass
class O3Config(ExpertConfig):
    lr: float = option(3e-3, "AdamW learning rate of the request's LoRA (the paper: 3e-4 on LLaMA-2-7B)")
    lora_rank: int = option(8, "rank of each request's LoRA on the LM's attention and MLP projections")
    lora_alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)")
    orthogonal_weight: float = option(0.1, "weight of sum ||A_prev A_cur^T||_F^2 over earlier requests' LoRAs")
    prototypes: int = option(4, "k-means prototypes of each request's forget features kept by its detector")
    full_quantile: float = option(0.1, "detector score (quantile of the request's own forget pairs) from which "
                                        "its LoRA is applied in full ...")
    ramp_width: float = option(0.1, "... falling linearly to 0 this much (cosine) lower: below, the base model")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank < 1 or self.prototypes < 1 or self.ramp_width <= 0 or not 0 <= self.full_quantile <= 1:
            raise ValueError("lora_rank >= 1, prototypes >= 1, ramp_width > 0 and full_quantile in [0, 1] are required")


@register
class O3(HookedMethod):
    name = "o3"
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
                delta = (args[0] @ self.lora_a[t][target].T) @ self.lora_b[t][target].T
                output = output + weights[:, t, None, None] * scale * delta
            return output
        return hook

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, T] detector score: cosine to the nearest forget prototype of each request."""
        return torch.stack([(feats @ p.T).amax(1) for p in self.prototypes], 1)

    def route(self, images, instructions):
        """[B, T] how strongly each request's LoRA is applied (0 = not at all)."""
        if not self.prototypes:
            return torch.zeros(len(images), 0)
        ramps = torch.stack(self.ramps)
        s = self.scores(self.features(images, instructions))
        return ((s - ramps[:, 0]) / (ramps[:, 1] - ramps[:, 0])).clamp(0.0, 1.0)

    def training_route(self, n):
        weights = torch.zeros(n, len(self.lora_a))
        weights[:, -1] = 1.0  # only the new request's LoRA, on the base model
        return weights

    def _new_lora(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        r = self.config.lora_rank
        # peft's default init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
        self.lora_a.append([(torch.rand(r, m.in_features, generator=gen) * 2 - 1) / math.sqrt(m.in_features)
                            for m in self.targets])
        self.lora_b.append([torch.zeros(m.out_features, r) for m in self.targets])

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

        forget = request.forget_train
        feats = self.features([s.image for s in forget], [s.instruction for s in forget])
        self.prototypes.append(F.normalize(kmeans(feats, cfg.prototypes, cfg.seed * 1000 + t), dim=-1))
        full = torch.quantile(self.scores(feats)[:, t], cfg.full_quantile)
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
