"""CORE: concept-aware refusers for continual unlearning (the `core` method).

Applying request r:
 1. decompose it into visual/textual concept descriptions (`concepts.Decomposer`);
 2. fit its concept layer (ridge maps from frozen vision features / instruction token
    embeddings to the scorer's and MiniLM's similarities with those descriptions);
 3. fit its modulator head (forget pairs vs hard negatives and earlier prototypes);
 4. pick its refusers: a router row fit to the recommendation and load losses
    (task similarity to earlier requests from their concept layers);
 5. train the picked refusers: refusal NLL on forget pairs (g = 1), answer NLL on the
    retain pairs the gate would let through (their calibrated g), keeping shared
    refusers' outputs on earlier requests' prototypes;
 6. keep: concept layer, head, router row, load vector, prototypes (never raw data).

At inference a forward hook on the connector computes, from the connector's own input
(vision features) and the queued instruction embeddings, every request's relevance;
queries below the threshold get the original connector output untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from vlforget.methods.base import Method, register
from vlforget.methods.core import modulator as mod
from vlforget.methods.core.concept_layer import ConceptBank
from vlforget.methods.core.config import CoreConfig
from vlforget.methods.core.refusers import RefuserPool
from vlforget.methods.core.router import route
from vlforget.methods.features import token_bag
from vlforget.methods.hooks import installed
from vlforget.types import DeletionRequest


@register
class Core(Method):
    name = "core"
    description = ("CORE: concept-aware refusers (pool of connector copies) routed by concept scores, "
                   "modulated per request, gated so unrelated queries run the original connector")
    config_class = CoreConfig

    def __init__(self, backbone, config: CoreConfig | None = None):
        super().__init__(backbone, config)
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        self.pool = RefuserPool(backbone.connector, self.config.pool_size,
                                hidden if self.config.output_adapter_rank > 0 else None,
                                max(1, self.config.output_adapter_rank))
        self.bank = ConceptBank()
        self.heads: list[torch.Tensor] = []  # [5] per request
        self.rows: list[torch.Tensor] = []  # router row [pool] per request
        self.loads: list[torch.Tensor] = []  # refuser load [pool] per request
        self.proto_features: list[torch.Tensor] = []  # [K, P, Dv] per request
        self.proto_instructions: list[torch.Tensor] = []  # [K, Dt] per request
        self.concepts: list[dict[str, Any]] = []
        self.info: list[dict[str, Any]] = []
        self._instruction_cache: dict[str, torch.Tensor] = {}
        self._steer = None
        self._stacked = None
        self._pending_key = None  # instruction key of the request being applied (concept_routing=False)

    # ------------------------------------------------------------------ embeddings
    def instruction_features(self, instructions: list[str]) -> torch.Tensor:
        """[B, text_buckets] hashed bag of the instruction's token unigrams and bigrams (cached).

        Intents are carried by a few words ("how many", "where is"); a bag keeps them
        apart where the mean of the LM's input embeddings blurs them (measured on the
        built-in benchmark: utility queries wrongly gated fell from 62% to see docs).
        It is a table lookup, so it costs nothing next to generation, whatever the
        model's vocabulary size.
        """
        todo = [s for s in dict.fromkeys(instructions) if s not in self._instruction_cache]
        bags = token_bag(self.backbone, todo, self.config.text_buckets, self.backbone.tokenizer.unk_token_id or 0)
        self._instruction_cache.update(zip(todo, bags))
        return torch.stack([self._instruction_cache[s] for s in instructions])

    # ------------------------------------------------------------------ relevance / routing
    def _stack(self):
        if self._stacked is None or len(self._stacked[0]) != len(self.heads) or (
                self._stacked[1] is not None and len(self._stacked[1]) != len(self.rows)):
            self._stacked = (torch.stack(self.heads), torch.stack(self.rows) if self.rows else None,
                             torch.stack([p.mean(0) for p in self.proto_instructions]) if self.proto_instructions
                             else None)
        return self._stacked

    def relevance(self, features: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """[B, T] modulator probability that each query belongs to each request's category."""
        heads = self._stack()[0]
        return torch.sigmoid(mod.head_logits(heads, self.bank.scores(features, instruction)))

    def gates(self, relevance: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not cfg.calibration:
            return torch.ones(relevance.shape[0], device="cpu")
        beta = relevance.max(1).values
        on = beta >= cfg.threshold
        return on.float() if cfg.gate_mode == "hard" else torch.where(on, beta, torch.zeros_like(beta))

    def route_weights(self, relevance: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """[B, T] weights over requests that the router reads."""
        if self.config.concept_routing:
            return torch.softmax(torch.log(relevance.clamp(min=1e-6)) / self.config.route_temperature, dim=-1)
        keys = self._stack()[2]
        if keys is None or len(keys) < relevance.shape[1]:  # the request being applied has no prototype yet
            extra = self._pending_key[None]
            keys = extra if keys is None else torch.cat([keys, extra])
        cos = F.normalize(instruction, dim=-1) @ F.normalize(keys, dim=-1).T
        return torch.softmax(cos / 0.05, dim=-1)

    # ------------------------------------------------------------------ the hook
    def _hook(self, module, args, output):
        st = self._steer
        if st is None:
            return None
        x = args[0]
        if st.mode == "train":
            st.active = (st.rows, st.experts, st.weights, st.gates)
            return self.pool.mix(x, output, st.rows, st.experts, st.weights, st.gates)
        st.active = None  # a new generation chunk starts with its prefill
        b = x.shape[0]
        if st.pos + b > len(st.queue):
            raise RuntimeError(f"connector called for {b} images but only {len(st.queue) - st.pos} queued "
                               "instructions are left; CORE's hook expects one connector call per generation chunk")
        instruction = st.queue[st.pos:st.pos + b]
        st.pos += b
        with torch.no_grad():
            # CORE's small state (concept layer, heads, router) is float32 on the CPU
            rel = self.relevance(x.detach().float().cpu(), instruction)
            g = self.gates(rel)
            rows = (g > 0).nonzero().squeeze(1)
            st.gated += len(rows)
            if len(rows) == 0:
                return None  # the original connector output, untouched
            w = self.route_weights(rel[rows], instruction[rows])
            experts, weights = route(w @ self._stack()[1], self.config.top_k)
            st.active = (rows, experts, weights, g[rows])
            return self.pool.mix(x, output, rows, experts, weights, g[rows])

    def _head_hook(self, module, args):
        st = self._steer
        if st is None or getattr(st, "active", None) is None:
            return None
        h = args[0]
        rows, experts, weights, gates = st.active
        if len(rows) and int(rows.max()) >= h.shape[0]:
            raise RuntimeError("LM head batch does not match the connector batch")
        return (self.pool.adapt(h, rows, experts, weights, gates), *args[1:])

    @contextmanager
    def steer(self, **state):
        """Install the refuser hook on the connector; always removed on exit."""
        hooks = [lambda: self.backbone.connector.register_forward_hook(self._hook)]
        if self.pool.adapters is not None:
            hooks.append(lambda: self.backbone.model.lm_head.register_forward_pre_hook(self._head_hook))
        self._steer = SimpleNamespace(active=None, **state)
        try:
            with installed(*hooks):
                yield self._steer
        finally:
            self._steer = None

    def generate(self, images, instructions, **kwargs) -> list[str]:
        if not self.heads or len(images) == 0:
            return self.backbone.generate(images, instructions, **kwargs)
        queue = self.instruction_features(list(instructions))
        with self.steer(mode="infer", queue=queue, pos=0, gated=0):
            return self.backbone.generate(images, instructions, **kwargs)

    # ------------------------------------------------------------------ unlearning
    def _unlearn(self, request: DeletionRequest) -> None:
        from vlforget.methods.core.train import apply_request

        apply_request(self, request)
        self._stacked = None

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"pool.{k}": v for k, v in self.pool.state_dict().items()}
        out.update(self.bank.state())
        for i in range(len(self.heads)):
            out[f"head.{i}"] = self.heads[i]
            out[f"row.{i}"] = self.rows[i]
            out[f"load.{i}"] = self.loads[i]
            out[f"proto_features.{i}"] = self.proto_features[i]
            out[f"proto_instructions.{i}"] = self.proto_instructions[i]
        return out

    def state_device(self) -> torch.device:
        # The concept layer, modulator, router rows and prototypes are small fits kept on
        # the CPU (the refuser pool's load_state_dict copies onto its own device).
        return torch.device("cpu")

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.pool.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("pool.")})
        n = len(self.concepts)
        if n and self.config.visual_scores == "scorer":
            from vlforget.methods.core.scorer import load_scorer

            self.bank.project = load_scorer(self.backbone).patches
        self.bank.load([c["name"] for c in self.concepts], tensors)
        for key in ("head", "row", "load", "proto_features", "proto_instructions"):
            attr = {"head": "heads", "row": "rows", "load": "loads"}.get(key, key)
            setattr(self, attr, [tensors[f"{key}.{i}"] for i in range(n)])
        self._stacked = None

    def state_json(self) -> dict[str, Any]:
        return {"concepts": self.concepts, "info": self.info}

    def load_state_json(self, data: dict[str, Any]) -> None:
        self.concepts = list(data.get("concepts", []))
        self.info = list(data.get("info", []))

    def report_extras(self) -> dict[str, Any]:
        return {
            "refuser_loads": {c["name"]: [round(float(x), 4) for x in load] for c, load in zip(self.concepts, self.loads)},
            "modulator": {c["name"]: mod.describe(h) for c, h in zip(self.concepts, self.heads)},
            "requests": self.info,
            "refuser_parameters": self.pool.parameter_count(),
        }
