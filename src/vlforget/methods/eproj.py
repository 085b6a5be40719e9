"""EProj: a new projector per request, picked at inference by similarity to per-request keys.

An expert baseline of CORE's comparison (docs/methods.md). Each request trains its own
copy of the original projector (plus, by default, an output adapter on the LM head
input, as CORE's refusers have) on the refusal NLL of its forget pairs, and keeps a key:
the mean query feature (image + instruction) of those pairs. A query uses the closest
request's projector only if its similarity to that key reaches the request's threshold;
otherwise the original projector answers. The threshold separates the request's forget
pairs from its retain pairs (`hooked_experts.gate_threshold`, as CORE's gate uses retain
pairs as negatives); without retain pairs it is the `key_quantile` of the forget pairs'
similarities (the forget-only form).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.hooked_experts import (ExpertConfig, HookedMethod, add_output_adapter, gate_threshold,
                                             prefixed)
from vlforget.methods.output_adapter import OutputAdapter


@dataclass
class EProjConfig(ExpertConfig):
    lr: float = option(1e-2, "AdamW learning rate of the request's projector (and output adapter)")
    output_adapter_rank: int = option(16, "rank of each projector's output adapter on the LM head input, "
                                          "as CORE's refusers have (0 = projector only, as in the paper)")
    key_quantile: float = option(0.1, "without retain pairs: a query uses the closest request's projector only if "
                                      "its similarity to that request's key reaches this quantile of the request's "
                                      "own forget pairs (with retain pairs the cut separates forget from retain)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.key_quantile <= 1.0:
            raise ValueError(f"key_quantile must be in [0, 1], got {self.key_quantile}")


@register
class EProj(HookedMethod):
    name = "eproj"
    reads = ("forget", "retain")  # retain pairs: negatives of the gate's cut
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
            # Made on the CPU in float32; moved to the backbone's device, kept float32 (it casts).
            self.adapters.append(OutputAdapter(self.hidden, self.config.output_adapter_rank,
                                               self.config.seed * 1000 + index).to(self.backbone.device))

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
            return torch.full((len(images),), -1, device=self.backbone.device)
        sims = self.features(images, instructions) @ torch.stack(self.keys).T
        best = sims.argmax(1)
        fits = sims.gather(1, best[:, None]).squeeze(1) >= torch.stack(self.thresholds)[best]
        return torch.where(fits, best, torch.full_like(best, -1))

    def training_route(self, n):
        return torch.full((n,), len(self.projectors) - 1, device=self.backbone.device)

    def _unlearn(self, request):
        index = len(self.projectors)
        self._new_expert(index)
        params = list(self.projectors[index].parameters())
        params += list(self.adapters[index].parameters()) if len(self.adapters) else []
        for p in params:
            p.requires_grad_(True)
        self.fit_refusals(request, params)
        feats = self.pair_features(request.forget_train)
        key = F.normalize(feats.mean(0), dim=0)
        retain = self.pair_features(request.retain_train)
        self.keys.append(key)
        self.thresholds.append(gate_threshold(feats @ key, None if retain is None else retain @ key,
                                              self.config.key_quantile, self.config.negative_weight))

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
            self.projectors[i].load_state_dict(prefixed(tensors, f"projector.{i}."))
            if len(self.adapters):
                self.adapters[i].load_state_dict(prefixed(tensors, f"adapter.{i}."))
            self.keys.append(tensors[f"key.{i}"])
            self.thresholds.append(tensors[f"threshold.{i}"])
        for p in [*self.projectors.parameters(), *self.adapters.parameters()]:
            p.requires_grad_(False)
