"""GMM: fine-tune only the shared projector on every request's refusals, no routing.

The simplest expert baseline of CORE's comparison (docs/methods.md): one projector
(the backbone's own connector) is trained in place for every request on the refusal
NLL of its forget pairs, so every query goes through the same edited projector. By
default an always-on output adapter on the LM head input is trained with it, as
CORE's refusers have (`output_adapter_rank=0`: the projector only, as in the paper).
With no gate, the refusal NLL alone teaches the shared projector to refuse every query
(validation, after 1 request: AR 1.7, over-refusal 67); when the request has retain pairs their
answers' NLL is trained with it (`retain_weight`, as CORE's refusers keep the retain
pairs their gate lets through), so the projector learns what not to refuse.
Validation, 3 requests (docs/methods.md): AR Last 0.0 -> 30.8 with the retain term at
lr 1e-2, 51.7 at lr 3e-3 (the default now).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlforget.configs import option
from vlforget.methods.base import register
from vlforget.methods.hooked_experts import ExpertConfig, HookedMethod
from vlforget.methods.output_adapter import OutputAdapter


@dataclass
class GMMConfig(ExpertConfig):
    lr: float = option(3e-3, "AdamW learning rate of the projector (and output adapter); validation: 3e-3 "
                             "ranks above 1e-2 and 1e-3")
    output_adapter_rank: int = option(16, "rank of an always-on output adapter on the LM head input, "
                                          "as CORE's refusers have (0 = projector only, as in the paper)")
    retain_weight: float = option(1.0, "weight of the retain pairs' answer NLL (0 or no retain pairs: forget "
                                       "refusals only, the paper's form)", ge=0)


@register
class GMM(HookedMethod):
    name = "gmm"
    reads = ("forget", "retain")  # retain pairs: their answers' NLL
    description = "GMM: fine-tune only the shared projector on each request's refusals, no routing"
    config_class = GMMConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        rank = self.config.output_adapter_rank
        # Made on the CPU in float32; moved to the backbone's device, kept float32 (it casts).
        self.adapter = OutputAdapter(hidden, rank, self.config.seed).to(backbone.device) if rank > 0 else None

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
        self.fit_refusals(request, params, retain_weight=self.config.retain_weight)

    def state_tensors(self):
        out = {f"connector.{k}": v for k, v in self.backbone.connector.state_dict().items()}
        if self.adapter is not None:
            out.update({f"adapter.{k}": v for k, v in self.adapter.state_dict().items()})
        return out

    def load_state_tensors(self, tensors):
        self.backbone.connector.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("connector.")})
        if self.adapter is not None:
            self.adapter.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
