"""CORE's image-text concept encoders (the paper grounds its gate in EVA-CLIP).

Two kinds, one interface (`texts(list[str]) -> [n, E]`, visual embeddings `[B, P, E]`,
all unit vectors, float32 on the CPU):

- `HFConceptEncoder` (`concept_encoder: <folder or cached hub id>`): any Hugging Face
  CLIP- or SigLIP-style model (AutoModel + AutoProcessor, `get_text_features` /
  `get_image_features`). It reads the *images* (its own vision pass): visual
  embeddings are the pooled image embedding, plus, with `image_patches`, every patch
  token through the model's own head (CLIP: post-layernorm + visual projection), for
  concepts that live in one part of the image. For LLaVA-1.5 the matching encoder is
  its own vision tower, `openai/clip-vit-large-patch14-336`.
- `BackboneHeads` (no `concept_encoder`): two heads, an MLP on the backbone's frozen
  per-patch vision features (what the connector reads, so no extra vision pass) and a
  linear one on MiniLM sentence embeddings. The built-in model ships its heads in
  `assets/scorer/` (built outside this package by `benchmarks/build_core_heads.py`);
  for another backbone they are trained once on the benchmark's general pairs
  (`Method.general_pool`) and cached on disk per vision-tower fingerprint
  (`$VLFORGET_CACHE`, default ~/.cache/vlforget), never retrained per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import warnings
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

EMBED_DIM = 128
HIDDEN_DIM = 256
# The layout of saved heads: files of another format (older caches) are retrained, not misread.
HEADS_FORMAT = 2  # 2: MLP on standardised features; 1: one linear layer
MINILM_DIM = 384


# ------------------------------------------------------------------ Hugging Face CLIP / SigLIP

def hub_cached(name: str) -> bool:
    """Whether `name` (a hub id) has a config in the local Hugging Face cache (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_encoder_source(source: str, loading: bool = True) -> None:
    """A clear error unless `source` is a model folder or a cached hub id.

    `loading=False` (config validation): an "owner/name" hub id is accepted unseen, since
    a config may be written on a machine other than the one whose cache holds the model;
    loading checks it.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"concept_encoder {source!r} is a folder without config.json; give a Hugging Face "
                             "CLIP- or SigLIP-style model folder (save_pretrained) or a cached hub id")
        return
    looks_like_hub_id = HUB_ID.match(source) and not source.startswith((".", "~", "/"))
    if not loading and looks_like_hub_id:
        return
    if path.exists() or not looks_like_hub_id or not hub_cached(source):
        raise ValueError(f"concept_encoder {source!r} is neither a model folder nor a hub id in the local "
                         "Hugging Face cache (nothing is downloaded); give a CLIP- or SigLIP-style folder")


def _tensor(out) -> torch.Tensor:
    """transformers 5 returns model outputs from get_*_features; 4.x returned tensors."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFConceptEncoder:
    reads = "images"

    def __init__(self, source: str, device: torch.device | str = "cpu", patches: bool = False):
        from transformers import AutoModel, AutoProcessor

        check_encoder_source(source)
        local = Path(source).expanduser()
        where = str(local) if local.is_dir() else source
        self.model = AutoModel.from_pretrained(where, local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(where, local_files_only=True)
        if not (hasattr(self.model, "get_text_features") and hasattr(self.model, "get_image_features")):
            raise ValueError(f"concept_encoder {source!r} ({type(self.model).__name__}) is not an image-text model "
                             "with get_text_features / get_image_features (CLIP- or SigLIP-style)")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.patches = patches
        self.name = source
        self._text_cache: dict[str, torch.Tensor] = {}
        # SigLIP was trained on max-length padded text; CLIP pads to the batch.
        self._padding = "max_length" if "siglip" in type(self.model).__name__.lower() else True

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        todo = sorted({t for t in texts if t not in self._text_cache})
        for i in range(0, len(todo), 64):
            chunk = todo[i:i + 64]
            batch = self.processor(text=chunk, return_tensors="pt", padding=self._padding, truncation=True)
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            emb = F.normalize(_tensor(self.model.get_text_features(**batch)).float(), dim=-1).cpu()
            self._text_cache.update(zip(chunk, emb))
        if not texts:
            return torch.zeros(0, self.dim, device="cpu")
        return torch.stack([self._text_cache[t] for t in texts])

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size

    @torch.no_grad()
    def images(self, images, chunk: int = 32) -> torch.Tensor:
        """[B, 1 (+ patches), E]: the pooled image embedding (and every patch's)."""
        out = []
        for i in range(0, len(images), chunk):
            pixels = self.processor(images=[im.convert("RGB") for im in images[i:i + chunk]],
                                    return_tensors="pt")["pixel_values"].to(self.device)
            pooled = _tensor(self.model.get_image_features(pixel_values=pixels)).float()[:, None]
            parts = [pooled]
            if self.patches:
                parts.append(self._patch_tokens(pixels).float())
            out.append(F.normalize(torch.cat(parts, 1), dim=-1).cpu())
        return torch.cat(out)

    def _patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vision_model(pixel_values=pixels).last_hidden_state
        if hasattr(self.model, "visual_projection"):  # CLIP: drop CLS, then the pooled token's own head
            return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden[:, 1:]))
        return hidden  # SigLIP: no CLS, already post-layernormed, no projection


# ------------------------------------------------------------------ heads on the backbone's features

class BackboneHeads(torch.nn.Module):
    """Heads on backbone vision features and MiniLM embeddings (a small CLIP): the image
    side a one-hidden-layer MLP on standardised patch features, the text side linear.

    Why an MLP: with one linear layer the heads left a far tail that a linear *classifier*
    on the same features does not have (1200 held-out general images, FPR at TPR 99 of a
    request's descriptions: diamond 5.9%, the digit one 12.2%, cross 3.1%; the classifier
    0%, 2.9%, 0%), and that tail was CORE's false gates; the MLP brings them to 0%, 4.8%,
    0% (`benchmarks/scorer_auc.py --probe`; docs/methods.md, "MLP heads"). Standardising
    alone changed nothing."""

    reads = "features"
    name = "backbone-heads"

    def __init__(self, vision_dim: int, text_dim: int = MINILM_DIM, dim: int = EMBED_DIM, hidden: int = HIDDEN_DIM):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(vision_dim, device="cpu"))
        self.register_buffer("feature_std", torch.ones(vision_dim, device="cpu"))
        self.image_proj = torch.nn.Sequential(torch.nn.Linear(vision_dim, hidden), torch.nn.GELU(),
                                              torch.nn.Linear(hidden, dim))
        self.text_proj = torch.nn.Linear(text_dim, dim)
        self.scale = torch.nn.Parameter(torch.tensor(10.0, device="cpu"))
        self.bias = torch.nn.Parameter(torch.tensor(-5.0, device="cpu"))

    @torch.no_grad()
    def standardise_on(self, features: torch.Tensor) -> None:
        """Per-dimension mean and std of the training features [N, P, D], kept with the weights."""
        flat = features.float().reshape(-1, features.shape[-1])
        self.feature_mean.copy_(flat.mean(0))
        self.feature_std.copy_(flat.std(0).clamp(min=1e-4))

    def patches(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj((features.float() - self.feature_mean) / self.feature_std), dim=-1)

    @property
    def vision_dim(self) -> int:
        return self.feature_mean.shape[0]

    def embed_texts(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(embeddings), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        from vlforget.methods.core.text_side import minilm

        return self.embed_texts(minilm()(list(texts)))

    @property
    def dim(self) -> int:
        return self.text_proj.out_features


def vision_fingerprint(backbone) -> str:
    """The vision tower's weights, hashed after rounding to bfloat16 (the same tower in
    float32, bfloat16 or float16 finds the same heads)."""
    h = hashlib.sha256()
    for name, tensor in sorted(backbone.vision_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().to(torch.bfloat16).float().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def vision_features(backbone, images, chunk: int = 256) -> torch.Tensor:
    """[B, patches, vision_hidden] features the connector receives, float32 on the CPU."""
    return torch.cat([backbone.vision_features(images[i:i + chunk]).float().cpu()
                      for i in range(0, len(images), chunk)])


def shipped_dir() -> Path:
    return Path(str(resources.files("vlforget") / "assets" / "scorer"))


def cache_root() -> Path:
    return Path(os.environ.get("VLFORGET_CACHE") or Path.home() / ".cache" / "vlforget")


def save_heads(heads: BackboneHeads, folder: str | Path, meta: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in heads.state_dict().items()}
    tmp = folder / f".scorer-{os.getpid()}.safetensors.tmp"  # per process: two writers never share it
    save_file(state, str(tmp))
    tmp.replace(folder / "scorer.safetensors")
    info = {"vision_fingerprint": getattr(heads, "fingerprint", None), "vision_dim": heads.vision_dim,
            "format": HEADS_FORMAT,
            **(meta or {})}
    (folder / "scorer.json").write_text(json.dumps(info, indent=2) + "\n")


def _read_heads(folder: Path, fingerprint: str) -> BackboneHeads | None:
    meta_path = folder / "scorer.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("vision_fingerprint") != fingerprint or meta.get("format") != HEADS_FORMAT:
        return None  # another tower, or heads of an older layout: trained anew
    heads = BackboneHeads(meta["vision_dim"])
    heads.load_state_dict(load_file(str(folder / "scorer.safetensors")))
    return heads


TRAINED = {"count": 0}  # heads trained in this process (tests check the disk cache spares a retrain)
_LOADED: dict[str, BackboneHeads] = {}


def load_heads(backbone, general=None, shipped: Path | None = None, cache: Path | None = None) -> BackboneHeads:
    """Heads for this backbone: shipped, else cached on disk, else trained on `general(n, tag)` and cached."""
    fingerprint = vision_fingerprint(backbone)
    if fingerprint in _LOADED:
        return _LOADED[fingerprint]
    cached = (cache or cache_root()) / "core-heads" / fingerprint
    heads = _read_heads(shipped or shipped_dir(), fingerprint) or _read_heads(cached, fingerprint)
    if heads is None:
        if general is None:
            raise ValueError("CORE has no concept encoder for this backbone: give `concept_encoder:` (a CLIP- or "
                             "SigLIP-style folder) or general pairs to train projection heads on (make_method(..., "
                             "general=...); for a loaded dataset, `general:` in the data config)")
        warnings.warn(f"CORE: no concept heads for this vision tower (fingerprint {fingerprint}); training them "
                      f"once on the benchmark's general pairs, cached in {cached}")
        heads = train_heads(backbone, general)
        heads.fingerprint = fingerprint
        save_heads(heads, cached, {"trained_on": "general pool (core-heads)"})
    heads.fingerprint = fingerprint
    heads.eval()
    for p in heads.parameters():
        p.requires_grad_(False)
    _LOADED[fingerprint] = heads
    return heads


def train_heads(backbone, general, n: int = 2000, steps: int = 600, batch: int = 128, lr: float = 3e-3,
                seed: int = 0) -> BackboneHeads:
    """Heads trained on general (image, instruction + answer) pairs: a sigmoid contrastive
    loss on the max-over-patches similarity (a concept lives somewhere in the image), the
    pair's own text positive, every other text in the batch negative unless identical."""
    from vlforget.methods.core.text_side import minilm

    TRAINED["count"] += 1
    torch.manual_seed(seed)
    samples = general(n, "core-heads")
    feats = vision_features(backbone, [s.image for s in samples])
    texts = [f"{s.instruction} {s.answer}" for s in samples]
    text_emb = minilm()(texts)
    index = {t: i for i, t in enumerate(dict.fromkeys(texts))}  # identical texts are positives too
    ids = torch.tensor([index[t] for t in texts], device="cpu")
    heads = BackboneHeads(feats.shape[-1])
    heads.standardise_on(feats)
    optimiser = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    rng = random.Random(seed)
    for _ in range(steps):
        idx = torch.tensor([rng.randrange(len(samples)) for _ in range(min(batch, len(samples)))], device="cpu")
        sim = torch.einsum("bpe,me->bpm", heads.patches(feats[idx]), heads.embed_texts(text_emb[idx])).amax(1)
        logits = heads.scale * sim + heads.bias
        label = (ids[idx][:, None] == ids[idx][None]).float()
        pos, neg = label.sum().clamp(min=1), (1 - label).sum().clamp(min=1)
        loss = (F.softplus(-logits) * label).sum() / pos + (F.softplus(logits) * (1 - label)).sum() / neg
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    heads.eval()
    for p in heads.parameters():  # fitted once; what is embedded with them later is a constant
        p.requires_grad_(False)
    return heads


def encoder_identity(encoder) -> str:
    """What embeds CORE's concepts, as a short hash: the encoder's kind and name and its
    weights rounded to bfloat16 (cached on the encoder). A saved CORE state records it,
    since its stored visual descriptions and prototypes mean something only in the space
    of the encoder that embedded them (`Core.check_state_json`)."""
    cached = getattr(encoder, "_identity", None)
    if cached is None:
        h = hashlib.sha256(f"{type(encoder).__name__}\0{encoder.name}\0".encode())
        module = encoder.model if isinstance(encoder, HFConceptEncoder) else encoder
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().to(torch.bfloat16).float().numpy().tobytes())
        cached = encoder._identity = h.hexdigest()[:16]
    return cached


def load_encoder(core):
    """The concept encoder CORE's config asks for (`concept_encoder`), on the backbone's device."""
    cfg = core.config
    if cfg.concept_encoder:
        try:
            device = next(core.backbone.model.parameters()).device
        except (AttributeError, StopIteration):
            device = "cpu"
        return HFConceptEncoder(cfg.concept_encoder, device, patches=cfg.image_patches)
    return load_heads(core.backbone, core.general_pool if core.general is not None else None)
