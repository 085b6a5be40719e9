"""Applying one deletion request to a `Core` method (the training side of CORE).

Kept apart from `method.py` (the inference side) so each stays short; see that module's
docstring for the six steps.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlforget.methods.core import modulator as mod
from vlforget.methods.core.concepts import ANY_IMAGE, ANY_INSTRUCTION, Decomposer
from vlforget.methods.core.encoders import vision_features
from vlforget.methods.core.router import load_vector, pick_refusers, route, routing_losses
from vlforget.methods.clustering import kmeans
from vlforget.methods.training import num_processes, shard, train_steps
from vlforget.types import DeletionRequest, Sample


def task_similarity(core, zf: torch.Tensor) -> torch.Tensor:
    """[T-1] in [0, 1]: how much the current forget pairs show earlier requests' concepts.

    zf [N, T-1, 2]: current forget pairs on earlier requests' scales (1 = their forget
    level). Each side counts by how much that request's modulator relies on it.
    """
    if zf.shape[1] == 0:
        return torch.zeros(0, device="cpu")
    match = zf.mean(0).clamp(0, 1)  # [T-1, 2]
    sims = []
    for j in range(zf.shape[1]):
        d = mod.describe(core.heads[j])
        imp = torch.tensor([d["visual"] + (d["and"] + d["or"]) / 2, d["textual"] + (d["and"] + d["or"]) / 2], device="cpu")
        imp = imp / imp.sum().clamp(min=1e-6)
        sims.append(float((imp * match[j]).sum()))
    return torch.tensor(sims, device="cpu")


@dataclass
class RequestPairs:
    """The request's training pairs: backbone vision features [N, P, D] (what refusers read),
    concept-encoder visual embeddings [N, P', E] and instruction embeddings [N, S, d]."""

    forget: list[Sample]
    retain: list[Sample]
    fx: torch.Tensor
    fv: torch.Tensor
    fi: torch.Tensor
    rx: torch.Tensor
    rv: torch.Tensor
    ri: torch.Tensor


def encode_pairs(core, request: DeletionRequest) -> RequestPairs:
    forget, retain = request.forget_train, request.retain_train  # empty with use_retain=False (base.py)

    def encode(samples):
        images = [s.image for s in samples]
        x = vision_features(core.backbone, images)
        return x, core.visual_embeddings(images, x), core.instruction_features([s.instruction for s in samples])

    # Constants for every later step: a graph kept here would reach the prototypes, and a
    # later request's protection loss would backward through it a second time.
    with torch.no_grad():
        fx, fv, fi = encode(forget)
        rx, rv, ri = encode(retain) if retain else (fx[:0], fv[:0], fi[:0])
    return RequestPairs(forget, retain, fx, fv, fi, rx, rv, ri)


def add_concepts(core, request: DeletionRequest, concepts, pairs: RequestPairs, t: int) -> None:
    """Steps 1-2: the request's description embeddings (visual: the concept encoder's text
    side; textual: the instruction side) and each side's score levels (retain lower
    quartile = 0, forget mean = 1). Nothing is fitted to the forget pairs' wording."""
    with torch.no_grad():
        visual = [] if concepts.visual == ANY_IMAGE else concepts.visual
        textual = [] if concepts.textual == ANY_INSTRUCTION else concepts.textual
        core.bank.add(request.name, core.encoder.texts(visual),
                      core.text_side.texts(textual, [s.instruction for s in pairs.forget]))
        raw_f = core.bank.raw(pairs.fv, pairs.fi)[:, t]
        raw_r = core.bank.raw(pairs.rv, pairs.ri)[:, t] if pairs.retain else raw_f[:0]
    pos = raw_f.mean(0)
    neg = raw_r.quantile(0.25, dim=0) if len(raw_r) else pos - raw_f.std(0).clamp(min=1e-3) * 3
    for side, empty in enumerate((not visual, not textual)):
        if empty:  # no concept on this side: every query scores 1 on it (its raw score is 1)
            neg[side], pos[side] = 0.0, 1.0
    core.bank.set_levels(t, torch.stack([neg, pos], -1))  # [2 sides, (neg, pos)]


def fit_modulator(core, pairs: RequestPairs, t: int, seed: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Step 3: the modulator head for request t (forget pairs vs hard negatives vs earlier
    requests' prototypes), appended to `core.heads`.

    Returns (head, its training accuracy, the forget pairs' scores on every request [Nf, t+1, 2]).
    """
    cfg = core.config
    with torch.no_grad():
        zf_all = core.bank.scores(pairs.fv, pairs.fi)  # [Nf, T+1, 2]
        zr = core.bank.scores(pairs.rv, pairs.ri)[:, t] if pairs.retain else zf_all[:0, t]
        protos = [core.bank.scores(p, q)[:, t] for p, q in zip(core.proto_visual, core.proto_instructions)]
    zp = torch.cat(protos) if protos else zf_all[:0, t]
    z = torch.cat([zf_all[:, t], zr, zp])
    labels = torch.cat([torch.ones(len(pairs.fx), device="cpu"), torch.zeros(len(zr) + len(zp), device="cpu")])
    head = mod.fit_head(z, labels, cfg.modulator_steps, seed, negative_weight=cfg.negative_weight) \
        if cfg.use_modulator else mod.fixed_head()
    core.heads.append(head)
    with torch.no_grad():
        p_train = torch.sigmoid(mod.head_logits(head[None], z[:, None, :])[:, 0])
    accuracy = float(((p_train >= cfg.threshold).float() == labels).float().mean())
    return head, accuracy, zf_all


def fit_router_row(core, similarity: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """Step 4: the request's router row, fit to the routing losses (reuse refusers of
    similar earlier requests, keep off those of dissimilar ones); returns (row, shared, own)."""
    cfg = core.config
    loads = torch.stack(core.loads) if core.loads else torch.zeros(0, cfg.pool_size, device="cpu")
    row = (torch.randn(cfg.pool_size, generator=torch.Generator().manual_seed(seed), device="cpu") * 0.01).requires_grad_(True)
    router_opt = torch.optim.Adam([row], lr=0.1)
    for _ in range(cfg.router_steps):
        rec, load = routing_losses(row, loads, similarity, cfg.similar_threshold)
        loss = cfg.recommend_weight * rec + cfg.load_weight * load
        if not loss.requires_grad:
            break
        router_opt.zero_grad()
        loss.backward()
        router_opt.step()
    # The pick is fixed from here on, with a clear margin so that small mixtures of
    # relevance over requests at inference still route to the same refusers.
    row = row.detach().clone()
    shared, own = pick_refusers(row, loads, cfg.top_k)
    top = float(row.max())
    row[shared] = top + 2.0
    row[own] = top + 3.0  # the request's own refusers outweigh the shared one (mix ~0.73 / 0.27 for k = 2)
    return row, shared, own


def train_refusers(core, request: DeletionRequest, pairs: RequestPairs, row: torch.Tensor, shared: list[int],
                   own: list[int], rng: random.Random) -> int:
    """Step 5: train the picked refusers to refuse the forget pairs; returns how many
    retain pairs the new gate lets through (those are trained to keep their answers)."""
    cfg = core.config
    forget, retain, ri = pairs.forget, pairs.retain, pairs.ri
    t = len(core.heads) - 1
    for p in core.pool.parameters():
        p.requires_grad_(False)
    # A shared refuser is read-only here: the new request builds on what an earlier
    # request learned but cannot rewrite that request's refusal.
    trained = own if cfg.freeze_shared else shared + own
    params = [p for e in trained for p in core.pool.expert_parameters(e)]
    for p in params:
        p.requires_grad_(True)
    # Trained refusers that earlier requests also use (a full pool hands out used ones
    # again) keep their outputs on those requests' prototypes.
    protect = []
    with torch.no_grad():
        for j, load_j in enumerate(core.loads):
            for e in trained:
                if load_j[e] > 0:
                    x = core.proto_features[j].to(next(core.pool.parameters()).device)
                    protect.append((e, float(load_j[e]), x, core.pool.experts[e](x).clone()))
    # ... and their output adapters stay near their old weights (no hidden states are kept).
    anchors = {e: [p.detach().clone() for p in core.pool.expert_parameters(e)[len(list(core.pool.experts[e].parameters())):]]
               for e, *_ in protect}
    with torch.no_grad():
        rel_r = core.relevance(pairs.rv, ri) if retain else torch.zeros(0, t + 1, device="cpu")
        g_r = core.gates(rel_r) if retain else torch.zeros(0, device="cpu")
    flagged = (g_r > 0).nonzero().squeeze(1).tolist()
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    refusal = request.refusals[0]
    old_rows = torch.stack(core.rows) if core.rows else torch.zeros(0, cfg.pool_size, device="cpu")
    core.backbone.model.eval()  # no dropout: the frozen parts behave as at inference

    def step_loss(step: int) -> torch.Tensor:
        # Every process draws the same indices (one RNG, in step) and trains on its slice.
        idx = shard([rng.randrange(len(forget)) for _ in range(cfg.batch_size)])
        batch = core.backbone.build_batch([forget[i].image for i in idx], [forget[i].instruction for i in idx],
                                          [refusal] * len(idx))
        ex, wts = route(row[None].expand(len(idx), -1), cfg.top_k)
        with core.steer(mode="train", rows=torch.arange(len(idx), device="cpu"), experts=ex, weights=wts,
                        gates=torch.ones(len(idx), device="cpu")):
            loss = core.backbone.model(**batch).loss
        if flagged and cfg.retain_weight > 0:
            ridx = [flagged[rng.randrange(len(flagged))] for _ in range(min(cfg.batch_size, len(flagged)))]
            if len(ridx) >= num_processes():  # fewer gated pairs than processes: every process takes them all
                ridx = shard(ridx)
            rb = core.backbone.build_batch([retain[i].image for i in ridx], [retain[i].instruction for i in ridx],
                                           [retain[i].answer for i in ridx])
            sel = torch.tensor(ridx, device="cpu")
            w = core.route_weights(rel_r[sel], ri[sel])
            rex, rw = route(w @ torch.cat([old_rows, row[None]]), cfg.top_k)
            with core.steer(mode="train", rows=torch.arange(len(ridx), device="cpu"), experts=rex, weights=rw, gates=g_r[sel]):
                loss = loss + cfg.retain_weight * core.backbone.model(**rb).loss
        # Batch-free terms: computed on every process, so averaging leaves their gradients as they are.
        for e, weight, x, target in protect:
            loss = loss + cfg.protect_weight * weight * F.mse_loss(core.pool.experts[e](x), target) * 10
        for e, old in anchors.items():
            new = core.pool.expert_parameters(e)[-len(old):] if old else []
            loss = loss + cfg.protect_weight * sum(((a - b) ** 2).sum() for a, b in zip(new, old))
        return loss

    train_steps(params, optimiser, cfg.steps, step_loss)
    for p in core.pool.parameters():
        p.requires_grad_(False)
    return len(flagged)


def leave_traces(core, request: DeletionRequest, concepts, pairs: RequestPairs, row: torch.Tensor, seed: int) -> None:
    """Step 6: what this request leaves behind for later ones (no raw data): its router
    row, its load on the pool, k-means prototypes of its forget features, its concepts."""
    cfg = core.config
    ex, wts = route(row[None], cfg.top_k)
    core.rows.append(row)
    core.loads.append(load_vector(ex, wts, cfg.pool_size))
    parts = [pairs.fx, pairs.fv, pairs.fi]  # backbone features (refusers), visual and instruction embeddings
    centres = kmeans(torch.cat([p.reshape(len(p), -1) for p in parts], 1), cfg.prototypes, seed)
    at = 0
    split = []
    for p in parts:
        d = p[0].numel()
        split.append(centres[:, at:at + d].reshape(len(centres), *p.shape[1:]).contiguous())
        at += d
    core.proto_features.append(split[0])
    core.proto_visual.append(split[1])
    core.proto_instructions.append(split[2])
    core.concepts.append({"name": request.name, "visual": concepts.visual, "textual": concepts.textual,
                          "source": concepts.source, "refusals": list(request.refusals)})


def apply_request(core, request: DeletionRequest) -> None:
    """The six steps, in order (each is its own function above)."""
    cfg = core.config
    began = time.perf_counter()
    t = len(core.heads)  # index of this request
    seed = core.request_seed()
    rng = random.Random(seed)
    torch.manual_seed(seed)

    general = ((lambda: [s.instruction for s in core.intent_samples()])
               if core.general is not None else None)  # drawn only if the request's intents are mined
    image_base = core.general_image_terms if core.general is not None else None  # computed only if mined
    concepts = Decomposer(core.backbone, cfg.max_descriptions, general, image_base,
                          core.image_terms)(request, cfg.concept_source)
    pairs = encode_pairs(core, request)
    add_concepts(core, request, concepts, pairs, t)
    head, modulator_acc, zf_all = fit_modulator(core, pairs, t, seed)
    similarity = task_similarity(core, zf_all[:, :t])
    row, shared, own = fit_router_row(core, similarity, seed)
    core._pending_key = pairs.fi[:, 0].mean(0)
    retain_gated = train_refusers(core, request, pairs, row, shared, own, rng)
    leave_traces(core, request, concepts, pairs, row, seed)
    core.info.append({
        "name": request.name,
        "refusers": shared + own,
        "shared": shared,
        "similarity": {core.concepts[j]["name"]: round(float(s), 3) for j, s in enumerate(similarity)},
        "modulator": mod.describe(head),
        "modulator_train_accuracy": round(modulator_acc, 4),
        "retain_gated": retain_gated,
        "seconds": round(time.perf_counter() - began, 2),
    })
