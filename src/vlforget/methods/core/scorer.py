"""The aligned image-text scorer (our stand-in for CORE's EVA-CLIP) and MiniLM access.

Image side: the backbone's frozen vision features, one vector per patch (patch i is
grid cell i of the built-in benchmark, one object per cell), through a learned linear
projection. Text side: MiniLM sentence embeddings through a learned linear projection.
Trained on the general *train* pool (never on request data) with a balanced sigmoid
loss (SigLIP-style) on (patch, object phrase) pairs, where a phrase names any subset of
an object's attributes as the captions do ("something red", "a five pointed star that
is large striped", "a gray backdrop"). An image's similarity to a description is the
max over patches: an object concept lives in one cell. An image-level InfoNCE term on
(image, full caption) pairs was part of the loss until measured harmful: it pulled the
patch embeddings toward whole-scene content and cost shape detail (image-level shape
AUC 0.95-0.999 with it, 0.988-1.0 without, `benchmarks/scorer_auc.py`).

The text side is used only while a request is applied; the image projection also runs
at inference in CORE's default `visual_scores="scorer"` mode (one small matmul per
patch). Weights: `vlforget/assets/scorer/` (< 1 MB), tied to a fingerprint of the
vision tower; if the backbone differs, a scorer is trained on the
fly (about a minute) and a warning says so. `python -m vlforget.methods.core.scorer`
retrains the shipped weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vlforget.models.text_encoder import load_minilm

EMBED_DIM = 128
MINILM_DIM = 384
ATTRS = ("shape", "colour", "size", "pattern", "background")

_TEXT_CACHE: dict[str, torch.Tensor] = {}


def encode_texts(texts: list[str]) -> torch.Tensor:
    """[len(texts), 384] unit MiniLM embeddings (cached per sentence)."""
    todo = sorted({t for t in texts if t not in _TEXT_CACHE})
    if todo:
        vectors = load_minilm().encode(todo, batch_size=128, convert_to_numpy=True, normalize_embeddings=True)
        for t, v in zip(todo, vectors):
            _TEXT_CACHE[t] = torch.from_numpy(v).float()
    if not texts:
        return torch.zeros(0, MINILM_DIM, device="cpu")
    return torch.stack([_TEXT_CACHE[t] for t in texts])


def vision_fingerprint(backbone) -> str:
    """The vision tower's weights, hashed after rounding to bfloat16: the same tower loaded in
    float32, bfloat16 or (almost always) float16 finds the same scorer weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(backbone.vision_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().to(torch.bfloat16).float().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def vision_features(backbone, images, chunk: int = 256) -> torch.Tensor:
    """[B, patches, vision_hidden] features the connector receives, without gradients, as float32
    on the CPU: CORE's concept layer, modulator and prototypes are small fits kept there."""
    return torch.cat([backbone.vision_features(images[i:i + chunk]).float().cpu()
                      for i in range(0, len(images), chunk)])


class Scorer(torch.nn.Module):
    def __init__(self, vision_dim: int, text_dim: int = MINILM_DIM, dim: int = EMBED_DIM):
        super().__init__()
        self.image_proj = torch.nn.Linear(vision_dim, dim)
        self.text_proj = torch.nn.Linear(text_dim, dim)
        self.scale = torch.nn.Parameter(torch.tensor(10.0, device="cpu"))
        self.bias = torch.nn.Parameter(torch.tensor(-5.0, device="cpu"))

    def patches(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(features), dim=-1)

    def texts(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(embeddings), dim=-1)

    def patch_similarity(self, features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, patches, M] cosine similarity of every patch with every description."""
        return self.patches(features) @ self.texts(text_embeddings).T

    def image_similarity(self, features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, M]: max over patches."""
        return self.patch_similarity(features, text_embeddings).amax(dim=1)


# ------------------------------------------------------------------ training data

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


def train_scorer(backbone, seed: int = 0, n_images: int = 2500, steps: int = 1500, batch: int = 256,
                 n_phrases: int = 4000, lr: float = 3e-3, log=None) -> Scorer:
    """Train a scorer on the general train pool; deterministic for a seed (CPU)."""
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
                codes[i, obj.cell, :4] = torch.tensor(_codes({k: getattr(obj, k) for k in ATTRS[:4]}, vocab)[:4], device="cpu")
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
    phrase_emb = encode_texts(texts)

    scorer = Scorer(d)
    optimiser = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=1e-4)
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
        logits = scorer.scale * scorer.patch_similarity(flat_feats[idx][:, None, :], phrase_emb[ph])[:, 0] + scorer.bias
        pos = label.sum().clamp(min=1)
        neg = (1 - label).sum().clamp(min=1)
        loss = (F.softplus(-logits) * label).sum() / pos + (F.softplus(logits) * (1 - label)).sum() / neg
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if log and step % 250 == 0:
            log(f"scorer step {step}: loss {loss.item():.4f}")
    scorer.eval()
    scorer.fingerprint = vision_fingerprint(backbone)
    return scorer


# ------------------------------------------------------------------ loading / saving

def asset_dir() -> Path:
    return Path(str(resources.files("vlforget") / "assets" / "scorer"))


def save_scorer(scorer: Scorer, folder: str | Path, meta: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in scorer.state_dict().items()}
    tmp = folder / f".scorer-{os.getpid()}.safetensors.tmp"  # per process: two writers never share it
    save_file(state, str(tmp))
    tmp.replace(folder / "scorer.safetensors")
    info = {"vision_fingerprint": getattr(scorer, "fingerprint", None),
            "vision_dim": scorer.image_proj.in_features, **(meta or {})}
    (folder / "scorer.json").write_text(json.dumps(info, indent=2) + "\n")


_LOADED: dict[str, Scorer] = {}


def load_scorer(backbone, folder: str | Path | None = None) -> Scorer:
    """The shipped scorer if it fits this backbone's vision tower, else one trained now."""
    fingerprint = vision_fingerprint(backbone)
    if fingerprint in _LOADED:
        return _LOADED[fingerprint]
    folder = Path(folder) if folder else asset_dir()
    meta_path = folder / "scorer.json"
    scorer = None
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("vision_fingerprint") == fingerprint:
            scorer = Scorer(meta["vision_dim"])
            scorer.load_state_dict(load_file(str(folder / "scorer.safetensors")))
            scorer.eval()
            scorer.fingerprint = fingerprint
    if scorer is None:
        warnings.warn(f"no scorer weights for this vision tower (fingerprint {fingerprint}) in {folder}; "
                      "training one now (about a minute)")
        scorer = train_scorer(backbone)
    for param in scorer.parameters():
        param.requires_grad_(False)
    _LOADED[fingerprint] = scorer
    return scorer


def main() -> None:  # pragma: no cover - asset maintenance
    import argparse
    import time

    from vlforget.models.backbone import Backbone

    parser = argparse.ArgumentParser(description="retrain the shipped CORE scorer weights")
    parser.add_argument("--model", default=None, help="backbone folder (default: built-in)")
    parser.add_argument("--out", default=str(asset_dir()))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.perf_counter()
    scorer = train_scorer(Backbone.load(args.model), seed=args.seed, log=print)
    save_scorer(scorer, args.out, {"seed": args.seed, "train_seconds": round(time.perf_counter() - began, 1)})
    print(f"saved to {args.out} in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
