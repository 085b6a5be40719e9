"""CORE: concept-aware refusers for continual unlearning (the `core` method).

Applying request r:
 1. decompose it into visual/textual concept descriptions (`concepts.Decomposer`);
 2. embed its descriptions (visual: the concept encoder's text side; textual: the
    instruction side, MiniLM through the general pool's intent projection, as rows over
    the general instructions a query is compared through, `text_side.NeighbourSide`) and set
    each side's score levels from its forget and retain pairs (nothing else is fitted);
 3. fit its modulator head (forget pairs vs hard negatives and earlier prototypes);
 4. pick its refusers: a router row fit to the recommendation and load losses
    (task similarity to earlier requests from their concept layers);
 5. train the picked refusers: refusal NLL on forget pairs (g = 1), answer NLL on the
    retain pairs the gate would let through (their calibrated g), keeping shared
    refusers' outputs on earlier requests' prototypes;
 6. keep: concept layer, head, router row, load vector, prototypes (never raw data).

At inference a forward hook on the connector computes every request's relevance from
the query's visual embeddings (the concept encoder's: from the connector's own input
with the default backbone heads, else computed from the images before generation) and
its queued instruction embeddings (of the question it asks: `text_side.py`, cached per
string); queries below the threshold get the original connector output untouched.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from vlforget.methods.base import Method, register
from vlforget.methods.core import modulator as mod
from vlforget.methods.core.concept_layer import ConceptBank
from vlforget.methods.core.concepts import STOPWORDS, caption_terms, otsu
from vlforget.methods.core.config import CoreConfig
from vlforget.methods.core.refusers import RefuserPool
from vlforget.methods.core.router import route
from vlforget.methods.core.encoders import encoder_identity, load_encoder
from vlforget.methods.core.text_side import InstructionSide, NeighbourSide, minilm, pairs_projection
from vlforget.methods.hooks import installed
from vlforget.text import flatten
from vlforget.types import DeletionRequest


GENERAL_CAPTIONS = 128  # general images captioned once, the base rate of mined visual concepts
SEEN_WORD_SPLIT = 0.8  # `Core._seen_words`: how clearly a word's scores split general images in two


@register
class Core(Method):
    name = "core"
    description = ("CORE: concept-aware refusers (pool of connector copies) routed by concept scores, "
                   "modulated per request, gated so unrelated queries run the original connector")
    config_class = CoreConfig
    # forget pairs -> refusers, prototypes, modulator positives; retain pairs -> modulator
    # negatives and the refusers' answer loss; request text -> concept descriptions and
    # refusal sentences; general pairs -> the instruction side's intent projection and
    # answer-state neighbours (the forget questions' answer states also say which general
    # questions the request covers, `NeighbourSide.texts`).
    reads = ("forget", "retain", "text", "general")
    assets = ("assets/scorer",)  # the built-in model's concept heads (`encoders.shipped_dir`)

    def __init__(self, backbone, config: CoreConfig | None = None):
        super().__init__(backbone, config)
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        hidden = backbone.model.get_input_embeddings().weight.shape[1]
        self.pool = RefuserPool(backbone.connector, self.config.pool_size,
                                hidden if self.config.output_adapter_rank > 0 else None,
                                max(1, self.config.output_adapter_rank))
        self.bank = ConceptBank(self.config.textual_share)
        self._encoder = None  # the concept encoder (encoders.py), loaded on first use
        self._text = None  # the instruction side (text_side.py), built on first use
        self._intent_samples = None  # general pairs of the instruction side (`intent_samples`)
        self._general_image_terms = None  # terms of general images (`general_image_terms`)
        self._seen = None  # the general answers' words the encoder sees (`_seen_words`)
        self.heads: list[torch.Tensor] = []  # [5] per request
        self.rows: list[torch.Tensor] = []  # router row [pool] per request
        self.loads: list[torch.Tensor] = []  # refuser load [pool] per request
        self.proto_features: list[torch.Tensor] = []  # [K, P, Dv] per request
        self.proto_visual: list[torch.Tensor] = []  # [K, P', E] per request (concept-encoder embeddings)
        self.proto_instructions: list[torch.Tensor] = []  # [K, S, d] per request
        self.concepts: list[dict[str, Any]] = []
        self.info: list[dict[str, Any]] = []
        self._steer = None
        self._stacked = None
        self._pending_key = None  # instruction key of the request being applied (concept_routing=False)

    # ------------------------------------------------------------------ embeddings
    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_encoder(self)
        return self._encoder

    @property
    def text_side(self) -> InstructionSide:
        """Instructions and textual descriptions through the text encoder and the intent projection."""
        if self._text is None:
            cfg = self.config
            projection = reference = None
            if self.general is None and (cfg.intent_projection or cfg.pick_question):
                # Said, not silent: without general pairs the gate scores raw MiniLM embeddings,
                # which is not the CORE the benchmark numbers are of.
                warnings.warn("CORE: no general pairs were given, so the instruction side has no intent "
                              "projection, no question picking and no answer-state neighbours; build it with make_method(..., "
                              "general=benchmark.general_pool) (docs/methods.md, core)", stacklevel=2)
            if self.general is not None:
                samples = self.intent_samples()
                if cfg.pick_question:
                    # unique instructions, rounded to float16: the same values as in a saved state
                    unique = list(dict.fromkeys(s.instruction for s in samples))
                    reference = self._text_encode()(unique).half().float()
                if cfg.intent_projection:
                    projection = _projection(self._text_encode(), samples,
                                             (getattr(self._text_encode(), "name", "?"), cfg.general_pairs,
                                              cfg.intent_kinds, cfg.intent_dim, cfg.intent_shrink), cfg)
            side = InstructionSide(self._text_encode(), projection, reference)
            if self.general is not None and cfg.intent_neighbours > 0:
                general = list(dict.fromkeys(s.instruction for s in samples))
                side = self._neighbour_side(side, general=general)
            self._text = side
        return self._text

    def intent_samples(self) -> list:
        """The general pairs the instruction side is fitted on (and mined intents are measured
        against, `concepts.Decomposer`), drawn once per method."""
        if self._intent_samples is None:
            self._intent_samples = self.general_pool(self.config.general_pairs, "core-intents")
        return self._intent_samples

    def general_image_terms(self) -> list[set[str]]:
        """The terms (`image_terms`) of `GENERAL_CAPTIONS` general images: what images show in
        general, the base rate of mined visual concepts (`concepts.Decomposer.mine_visual`);
        computed once per method."""
        if self._general_image_terms is None:
            self._general_image_terms = self.image_terms([s.image for s in self.general_images()])
        return self._general_image_terms

    def general_images(self) -> list:
        """The general pairs whose images are the base rate of mined visual concepts."""
        return self.intent_samples()[:GENERAL_CAPTIONS]

    def image_terms(self, images) -> list[set[str]]:
        """Per image: its caption terms (`concepts.caption_terms`) and the general answers'
        words the concept encoder sees in it. Why both: a captioner names what it was taught
        to name (the built-in one: size, colour, shape, never a pattern), while the encoder
        scores any word against the image."""
        terms = caption_terms(self.backbone, images)
        words, texts, cuts = self._seen_words()
        if words and images:
            scores = self._word_scores(images, texts)
            for row, image_terms in zip(scores, terms):
                image_terms.update(w for w, score, cut in zip(words, row.tolist(), cuts) if score >= cut)
        return terms

    def _word_scores(self, images, texts: torch.Tensor) -> torch.Tensor:
        """[N images, W words]: max over patches of the cosine to each word's description."""
        with torch.no_grad():
            return torch.einsum("npe,we->npw", self.visual_embeddings(images), texts).amax(1)

    def _seen_words(self):
        """(words, their description embeddings, score cuts): the general answers' words whose
        encoder scores on the general images split into two clear groups (Otsu's cut, the
        between-group share of the variance >= SEEN_WORD_SPLIT): words the encoder sees as
        present or absent. Computed once per method."""
        if self._seen is None:
            answers = Counter(w for s in self.intent_samples() for w in s.answer.lower().strip(" .").split()
                              if w.isalpha() and w not in STOPWORDS)
            vocab = sorted(w for w, n in answers.items() if n >= 5)
            self._seen = ([], None, [])
            if vocab:
                texts = self.encoder.texts([f"something {w}" for w in vocab])
                general = self._word_scores([s.image for s in self.general_images()], texts)
                kept = [(i, cut) for i, (cut, split) in enumerate(map(otsu, general.T)) if split >= SEEN_WORD_SPLIT]
                if kept:
                    index = [i for i, _ in kept]
                    self._seen = ([vocab[i] for i in index], texts[index], [cut for _, cut in kept])
        return self._seen

    def _neighbour_side(self, describer: InstructionSide, **source) -> NeighbourSide:
        """The answer-state neighbour side at this config's settings, built from the general
        instructions (`general=`) or restored from a saved state (`saved=`)."""
        cfg = self.config
        return NeighbourSide(describer, self._prompt_states, cfg.intent_neighbours, **source,
                             coverage_penalty=cfg.coverage_penalty, temperature=cfg.neighbour_temperature)

    def _prompt_states(self, texts: list[str]) -> torch.Tensor:
        """The backbone's answer states (`Backbone.prompt_states`), never steered by CORE's hook."""
        steering, self._steer = self._steer, None
        try:
            return self.backbone.prompt_states(texts)
        finally:
            self._steer = steering

    def _text_encode(self):
        return self.encoder.texts if self.config.text_encoder == "concept" else minilm()

    def instruction_features(self, instructions: list[str]) -> torch.Tensor:
        """[B, S, d] unit embeddings of each instruction and its clauses (cached per string)."""
        return self.text_side.instructions(list(instructions))

    def clear_instruction_cache(self) -> None:
        """Forget every instruction read so far (what a stream of new questions costs:
        `benchmarks/core_latency.py`'s cold runs)."""
        self.text_side.clear()
        minilm().clear()

    def visual_embeddings(self, images=None, features: torch.Tensor | None = None) -> torch.Tensor:
        """[B, P', E] the concept encoder's visual embeddings (from backbone features or the images)."""
        if self.encoder.reads == "features":
            if features is None:
                from vlforget.methods.core.encoders import vision_features

                features = vision_features(self.backbone, images)
            return self.encoder.patches(features.float().cpu())
        return self.encoder.images(images)

    # ------------------------------------------------------------------ relevance / routing
    def _stack(self):
        if self._stacked is None or len(self._stacked[0]) != len(self.heads) or (
                self._stacked[1] is not None and len(self._stacked[1]) != len(self.rows)):
            self._stacked = (torch.stack(self.heads), torch.stack(self.rows) if self.rows else None,
                             torch.stack([p[:, 0].mean(0) for p in self.proto_instructions])
                             if self.proto_instructions else None)
        return self._stacked

    def relevance(self, visual: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """[B, T] modulator probability that each query belongs to each request's category
        (visual [B, P', E] concept-encoder embeddings, instruction [B, S, d])."""
        heads = self._stack()[0]
        return torch.sigmoid(mod.head_logits(heads, self.bank.scores(visual, instruction)))

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
        cos = F.normalize(instruction[:, 0], dim=-1) @ F.normalize(keys, dim=-1).T  # the whole instruction
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
        at = st.pos
        instruction = st.queue[at:at + b]
        st.pos += b
        with torch.no_grad():
            # CORE's small state (concept layer, heads, router) is float32 on the CPU
            visual = st.visual[at:at + b] if st.visual is not None else self.encoder.patches(x.detach().float().cpu())
            rel = self.relevance(visual, instruction)
            g = self.gates(rel)
            rows = (g > 0).nonzero().squeeze(1)
            st.gated += len(rows)
            for r in rows.tolist():  # gated queries and the request that gated them (clean refusals)
                st.decisions[at + r] = int(rel[r].argmax())
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
        if self.config.gated_question_only:
            instructions = self.question_only_if_gated(images, instructions)
        with self.steer(**self.inference_state(images, instructions)) as state:
            answers = self.backbone.generate(images, instructions, **kwargs)
        if self.config.clean_refusals:
            opening = {tuple(flatten(r).split()[:2]) for c in self.concepts for r in c.get("refusals", [])}
            answers = [clean_refusal(a, self.concepts[state.decisions[i]].get("refusals", []), opening)
                       if i in state.decisions else a for i, a in enumerate(answers)]
        return answers

    def question_only_if_gated(self, images, instructions) -> list[str]:
        """Gated queries asked inside a longer message are put to the model as the question
        the gate read (`InstructionSide.pick`), the rest of the message dropped.

        The gate already scores only that piece, so gating is unchanged; what changes is
        what the refusers steer: they were trained on plain questions, and a pressing
        sentence around one ("..., no sorry.") pulled the steered model off its refusal
        (validation pressure view: gate bound 90.0, refused in context 50.9).
        Ungated queries reach the model exactly as asked.
        """
        instructions = list(instructions)
        picked = self.text_side.pick(instructions)
        longer = [i for i, (a, b) in enumerate(zip(instructions, picked)) if a != b]
        if not longer:
            return instructions
        with torch.no_grad():
            rel = self.relevance(self.visual_embeddings([images[i] for i in longer]),
                                 self.instruction_features([instructions[i] for i in longer]))
        for i, g in zip(longer, self.gates(rel).tolist()):
            if g > 0:
                instructions[i] = picked[i]
        return instructions

    def inference_state(self, images, instructions) -> dict[str, Any]:
        """What the hook reads for a batch of queries (`steer(**...)`)."""
        visual = None if self.encoder.reads == "features" else self.visual_embeddings(images)
        return {"mode": "infer", "queue": self.instruction_features(list(instructions)), "visual": visual,
                "pos": 0, "gated": 0, "decisions": {}}

    # ------------------------------------------------------------------ unlearning
    def _unlearn(self, request: DeletionRequest) -> None:
        from vlforget.methods.core.train import apply_request

        apply_request(self, request)
        self._stacked = None

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"pool.{k}": v for k, v in self.pool.state_dict().items()}
        # The instruction side travels with the state: a loaded method reads instructions as
        # the saved one did, with or without the general pairs it was fitted on.
        if self.heads:
            side = self.text_side
            if isinstance(side, NeighbourSide):
                out.update({f"text.neighbours.{k}": v for k, v in side.saved().items()})
                side = side.describer
            if side.projection is not None:
                out["text.mean"], out["text.matrix"] = side.projection["mean"], side.projection["matrix"]
            if side.reference is not None:
                out["text.reference"] = side.reference.half()
        out.update(self.bank.state())
        for i in range(len(self.heads)):
            out[f"head.{i}"] = self.heads[i]
            out[f"row.{i}"] = self.rows[i]
            out[f"load.{i}"] = self.loads[i]
            out[f"proto_features.{i}"] = self.proto_features[i]
            out[f"proto_visual.{i}"] = self.proto_visual[i]
            out[f"proto_instructions.{i}"] = self.proto_instructions[i]
        return out

    def state_device(self) -> torch.device:
        # The concept layer, modulator, router rows and prototypes are small fits kept on
        # the CPU (the refuser pool's load_state_dict copies onto its own device).
        return torch.device("cpu")

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.pool.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("pool.")})
        n = len(self.concepts)
        projection = ({"mean": tensors["text.mean"], "matrix": tensors["text.matrix"]}
                      if "text.matrix" in tensors else None)
        reference = tensors["text.reference"].float() if "text.reference" in tensors else None
        if n:
            self._text = InstructionSide(self._text_encode(), projection, reference)
            saved = {k[len("text.neighbours."):]: v for k, v in tensors.items() if k.startswith("text.neighbours.")}
            if saved:
                self._text = self._neighbour_side(self._text, saved=saved)
        self.bank.load([c["name"] for c in self.concepts], tensors)
        for key in ("head", "row", "load", "proto_features", "proto_visual", "proto_instructions"):
            attr = {"head": "heads", "row": "rows", "load": "loads"}.get(key, key)
            setattr(self, attr, [tensors[f"{key}.{i}"] for i in range(n)])
        self._stacked = None

    def state_json(self) -> dict[str, Any]:
        state = {"concepts": self.concepts, "info": self.info}
        if self.concepts:
            state["concept_encoder"] = {"name": self.encoder.name, "identity": encoder_identity(self.encoder)}
        return state

    def check_state_json(self, data: dict[str, Any]) -> None:
        saved = data.get("concept_encoder")  # absent in states saved before it was recorded
        if saved is not None and saved.get("identity") != encoder_identity(self.encoder):
            # The state's visual descriptions and prototypes were embedded by another encoder
            # (another concept_encoder, or rebuilt shipped heads): scored by this one, they
            # would gate by numbers that mean nothing.
            raise ValueError(f"this CORE state was built with concept encoder {saved.get('name')!r} "
                             f"(identity {saved.get('identity')}), but this method's is {self.encoder.name!r} "
                             f"(identity {encoder_identity(self.encoder)}); load it with the encoder it was "
                             "built with, or apply its requests again")

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


_PROJECTIONS: dict[tuple, dict[str, torch.Tensor] | None] = {}


def _projection(encode, samples, key: tuple, cfg) -> dict[str, torch.Tensor] | None:
    """The intent projection for (text encoder, general pool, settings), once per process;
    the pool's own texts are part of the key, so another benchmark's pool gets its own."""
    pool = hashlib.sha1("\0".join(f"{s.instruction}\1{s.answer}" for s in samples).encode()).hexdigest()
    key = (*key, pool)
    if key not in _PROJECTIONS:
        _PROJECTIONS[key] = pairs_projection(encode, [s.instruction for s in samples], [s.answer for s in samples],
                                             cfg.intent_kinds, cfg.intent_dim, cfg.intent_shrink)
    return _PROJECTIONS[key]


def clean_refusal(answer: str, refusals: list[str], openings: set[tuple[str, ...]] | None = None) -> str:
    """A gated query's answer, constrained to the gating request's refusal sentences.

    `refusals`: the sentences of the request with the highest relevance (the one that
    gated the query). The steered model does not always stop at the sentence's end, or
    garbles its middle on phrasings its refusers never saw ("sorry, i seven cannot count
    objects in images with green things sorry, i one things."). So an answer that opens
    like a refusal (its first two words are those of a known refusal, `openings`; of
    `refusals` when not given) *is* a refusal, and it becomes the refusal sentence of the
    gating request it shares the longest start with (its first sentence by default).
    Other answers (a gated retain pair the refusers answer) are left as they are.
    """
    words = flatten(answer).split()
    openings = openings if openings is not None else {tuple(flatten(r).split()[:2]) for r in refusals}
    if not refusals or tuple(words[:2]) not in openings:
        return answer

    def shared(refusal: str) -> int:
        ref = flatten(refusal).split()
        n = 0
        while n < min(len(ref), len(words)) and ref[n] == words[n]:
            n += 1
        return n

    return max(refusals, key=lambda r: (shared(r), -refusals.index(r)))
