"""Builds the heads CORE's gate ships for the built-in model (`src/vlforget/assets/scorer/`).

    python benchmarks/build_core_heads.py [--out src/vlforget/assets/scorer] [--seed 0]

CORE's `BackboneHeads` (`methods/core/encoders.py`) are a small CLIP on the backbone's
frozen per-patch vision features (image side) and MiniLM sentence embeddings (text
side). For the built-in world they are trained here, outside the method, on the
benchmark's general *train* pool (never request data) with the scenes' labels: a
balanced sigmoid loss on (patch, phrase naming a random subset of the object's
attributes) pairs, since patch i is grid cell i. The method itself loads them by the
vision tower's fingerprint like any cached heads; for another backbone it trains
generic heads on the benchmark's general pairs instead (`encoders.train_heads`).
An image-level InfoNCE term on (image, full caption) pairs was part of the loss until
measured harmful (image-level shape AUC 0.95-0.999 with it, 0.988-1.0 without,
`benchmarks/scorer_auc.py`).

Near misses weigh more: a negative whose phrase names a shape other than the patch's (a
small circle against "a square") counts `shape_negative_weight` (3) times, and the heads
train 8000 steps with a cosine learning-rate decay. Why: most negatives in a batch are
easy (another colour, another attribute), so the tail that makes false gates (small
circles read as squares) was barely trained on. Chosen on held-out general images
(`scorer_auc.py`: mean shape+colour FPR at TPR 90 / 99 0.65% / 2.54% -> 0.34% / 1.85% at
4000 steps; square 1.2% / 3.7% -> 0.2% / 1.9%; the digit one's far tail did not improve,
9.3% -> 10.7% at TPR 99) and the validation sequence's gate bounds (`core_gate.py`,
CRR/AR/S 95.9/97.5/98.0 -> 97.5/99.1/98.0), against weight 10, near misses in any one
attribute, focal weighting and 1500 steps (docs/methods.md, "CORE with near-miss
heads"). 8000 steps rather than 4000: FPR at TPR 99 1.85% -> 1.57% on the same images,
validation bounds 97.5/99.1/98.0 -> 97.8/99.4/98.0 (5000 images instead of 2500: 1.85%,
97.8/99.1/98.3). (The numbers of this paragraph are of the linear heads.)

The image side is a one-hidden-layer MLP (256 units, GELU) on standardised patch features
(`BackboneHeads`); it was one linear layer. A linear softmax classifier over the same
features had no far tail where the linear heads had one (`scorer_auc.py --probe`, 1200
held-out general images, FPR at TPR 99 of the request descriptions: diamond 0% vs 5.9%,
cross 0% vs 3.1%, the digit one 2.9% vs 12.2%), so the heads, not the features, were the
limit. With the MLP: diamond, cross, square 0%, one 4.8%, seven 3.7% (1.9% linear), mean
over 10 shapes and 6 colours 1.86% -> 0.74%; validation gate bounds 98.1/99.4/98.0 ->
99.4/99.7/100.0, with the probe requests 91.6/98.0/96.7 -> 97.0/99.8/100.0
(`core_gate.py [--probe]`). Standardised features through one linear layer: 1.84%, no
change.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
import torch.nn.functional as F

from vlforget.methods.core.encoders import BackboneHeads, save_heads, shipped_dir, vision_features, vision_fingerprint
from vlforget.methods.core.text_side import minilm

ATTRS = ("shape", "colour", "size", "pattern", "background")


def _phrase(rng: random.Random, obj, background: str) -> tuple[str, dict]:
    """A phrase naming a random subset of an object's attributes (and maybe the background)."""
    from vlforget.data.requests import SHAPE_PHRASES, VISUAL_FRAMES

    keys = [k for k in ("shape", "colour", "size", "pattern") if rng.random() < 0.5]
    if not keys:
        keys = [rng.choice(["shape", "colour", "size", "pattern"])]
    attrs = {k: getattr(obj, k) for k in keys}
    mods = " ".join(attrs[k] for k in ("size", "colour", "pattern") if k in attrs)
    if "shape" in attrs:
        noun = rng.choice(SHAPE_PHRASES[obj.shape] + [f"a {obj.shape}"])
        core = f"{noun} that is {mods}" if mods and rng.random() < 0.5 else (
            f"a {mods} {obj.shape}" if mods else noun)
    else:
        core = rng.choice([f"a {mods} object", f"something {mods}", f"a {mods} shape", f"{mods} things"])
    if rng.random() < 0.2:
        attrs["background"] = background
        core = f"{core} on a {background} background"
    return rng.choice(VISUAL_FRAMES).format(p=core), attrs


def _codes(attrs: dict, vocab: dict[str, dict[str, int]]) -> list[int]:
    return [vocab[k][attrs[k]] if k in attrs else -1 for k in ATTRS]


def train_heads_on_scenes(backbone, seed: int = 0, n_images: int = 2500, steps: int = 8000, batch: int = 256,
                          n_phrases: int = 4000, lr: float = 3e-3, shape_negative_weight: float = 3.0,
                          log=None) -> BackboneHeads:
    """Train the heads on the general train pool with the scenes' cell labels; deterministic for a seed (CPU)."""
    from vlforget.data.benchmark import general_samples
    from vlforget.data.scenes import BACKGROUNDS, CATEGORIES, COLOURS, PATTERNS, SIZES

    torch.manual_seed(seed)
    rng = random.Random(seed)
    samples = general_samples(n_images, f"scorer-{seed}", "train")
    scenes = [s.meta["scene"] for s in samples]
    feats = vision_features(backbone, [s.image for s in samples])  # [N, P, D]
    n, p, d = feats.shape
    vocab = {"shape": {c: i for i, c in enumerate(CATEGORIES)}, "colour": {c: i for i, c in enumerate(COLOURS)},
             "size": {c: i for i, c in enumerate(SIZES)}, "pattern": {c: i for i, c in enumerate(PATTERNS)},
             "background": {c: i for i, c in enumerate(BACKGROUNDS)}}
    # Patch codes: attributes of the object in the cell (-2 = empty cell), background everywhere.
    codes = torch.full((n, p, len(ATTRS)), -2, dtype=torch.long, device="cpu")
    for i, scene in enumerate(scenes):
        codes[i, :, 4] = vocab["background"][scene.background]
        for obj in scene.objects:
            if obj.cell < p:
                attrs = {k: getattr(obj, k) for k in ATTRS[:4]}
                codes[i, obj.cell, :4] = torch.tensor(_codes(attrs, vocab)[:4], device="cpu")
    # Phrase bank: random attribute subsets of random objects, plus background-only phrases.
    bank: dict[str, list[int]] = {}
    while len(bank) < n_phrases:
        scene = rng.choice(scenes)
        if rng.random() < 0.08:
            bg = scene.background
            text = rng.choice([f"a {bg} background", f"a {bg} backdrop", f"everything on {bg}",
                               f"a scene set against {bg}", f"an image with a {bg} background"])
            bank[text] = _codes({"background": bg}, vocab)
            continue
        text, attrs = _phrase(rng, rng.choice(scene.objects), scene.background)
        bank[text] = _codes(attrs, vocab)
    texts = sorted(bank)
    phrase_codes = torch.tensor([bank[t] for t in texts], device="cpu")  # [M, 5]
    phrase_emb = minilm()(texts)

    scorer = BackboneHeads(d)
    scorer.standardise_on(feats)
    optimiser = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    flat_feats, flat_codes = feats.reshape(n * p, d), codes.reshape(n * p, len(ATTRS))
    occupied = (flat_codes[:, 0] >= 0).nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        # 80% patches holding an object, 20% any patch (empty cells see only the background).
        idx = torch.cat([occupied[torch.randint(len(occupied), (batch * 4 // 5,), generator=gen, device="cpu")],
                         torch.randint(n * p, (batch - batch * 4 // 5,), generator=gen, device="cpu")])
        ph = torch.randint(len(texts), (1024,), generator=gen, device="cpu")
        pc, tc = flat_codes[idx][:, None, :], phrase_codes[ph][None, :, :]
        label = ((tc == -1) | (tc == pc)).all(-1).float()  # [B, M]
        logits = scorer.scale * (scorer.patches(flat_feats[idx]) @ scorer.embed_texts(phrase_emb[ph]).T) + scorer.bias
        # A phrase naming another shape than the patch's object is a near miss: weighted up.
        other_shape = ((tc[..., 0] != -1) & (tc[..., 0] != pc[..., 0])).float()
        negative = (1 - label) * (1 + shape_negative_weight * other_shape)
        pos = label.sum().clamp(min=1)
        loss = ((F.softplus(-logits) * label).sum() / pos
                + (F.softplus(logits) * negative).sum() / negative.sum().clamp(min=1e-6))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if log and step % 250 == 0:
            log(f"scorer step {step}: loss {loss.item():.4f}")
    scorer.eval()
    scorer.fingerprint = vision_fingerprint(backbone)
    return scorer


def main() -> None:  # pragma: no cover - asset maintenance
    from vlforget.models.backbone import Backbone

    parser = argparse.ArgumentParser(description="retrain the shipped CORE heads for the built-in model")
    parser.add_argument("--model", default=None, help="backbone folder (default: built-in)")
    parser.add_argument("--out", default=str(shipped_dir()))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.perf_counter()
    heads = train_heads_on_scenes(Backbone.load(args.model), seed=args.seed, log=print)
    rebuild = f"python benchmarks/build_core_heads.py --out src/vlforget/assets/scorer --seed {args.seed}"
    note = ("CORE's concept heads for the built-in vision tower (vlforget.methods.core.encoders.BackboneHeads); "
            "built from the general train pool only")
    save_heads(heads, args.out, {"seed": args.seed, "train_seconds": round(time.perf_counter() - began, 1),
                                 "rebuild": rebuild, "note": note})
    print(f"saved to {args.out} in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
