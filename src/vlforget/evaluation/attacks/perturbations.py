"""Image perturbations of the forget test images (Pillow), each at two strengths.

Does the refusal survive an image that a user re-saved, blurred or cropped? Every
perturbation maps one PIL image to another with Pillow's own operations (GaussianBlur,
JPEG encoding, crop + resize, ImageEnhance); the noise is numpy's seeded normal
noise added in [0, 255] and clipped. Randomness (noise, crop box, jitter factors) is
drawn per image from a seed made of the attack seed, the perturbation and the image's
index, so a rerun perturbs identically.
"""

from __future__ import annotations

import io
import random
from dataclasses import replace
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from vlforget.evaluation.metrics import contains_answer

Perturb = Callable[[Image.Image, random.Random], Image.Image]


def gaussian_noise(sigma: float) -> Perturb:
    """Additive N(0, sigma^2) noise per pixel and channel, sigma in [0, 255] units."""
    def apply(image, rng):
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, pixels.shape)
        return Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))
    return apply


def blur(radius: float) -> Perturb:
    return lambda image, rng: image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def jpeg(quality: int) -> Perturb:
    def apply(image, rng):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    return apply


def crop_resize(scale: float) -> Perturb:
    """A random crop keeping `scale` of each side, resized back to the original size (bilinear)."""
    def apply(image, rng):
        width, height = image.size
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        return image.convert("RGB").crop((left, top, left + w, top + h)).resize((width, height), Image.BILINEAR)
    return apply


def colour_jitter(strength: float) -> Perturb:
    """Brightness, contrast and saturation each scaled by a factor drawn from [1 - s, 1 + s]."""
    def apply(image, rng):
        out = image.convert("RGB")
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            out = enhancer(out).enhance(rng.uniform(1 - strength, 1 + strength))
        return out
    return apply


# name -> (family, strength label, perturbation); two strengths per family.
PERTURBATIONS: dict[str, tuple[str, str, Perturb]] = {
    "noise-8": ("gaussian noise", "sigma 8/255", gaussian_noise(8.0)),
    "noise-24": ("gaussian noise", "sigma 24/255", gaussian_noise(24.0)),
    "blur-0.5": ("gaussian blur", "radius 0.5 px", blur(0.5)),
    "blur-1.0": ("gaussian blur", "radius 1.0 px", blur(1.0)),
    "jpeg-50": ("JPEG re-encoding", "quality 50", jpeg(50)),
    "jpeg-15": ("JPEG re-encoding", "quality 15", jpeg(15)),
    "crop-0.9": ("random crop + resize", "90% of each side", crop_resize(0.9)),
    "crop-0.75": ("random crop + resize", "75% of each side", crop_resize(0.75)),
    "jitter-0.2": ("colour jitter", "factors in [0.8, 1.2]", colour_jitter(0.2)),
    "jitter-0.4": ("colour jitter", "factors in [0.6, 1.4]", colour_jitter(0.4)),
}


def perturbed(samples, name: str, seed: int):
    """Copies of `samples` whose images went through perturbation `name`."""
    apply = PERTURBATIONS[name][2]
    return [replace(s, image=apply(s.image, random.Random(f"{seed}-{name}-{i}"))) for i, s in enumerate(samples)]


def run(target) -> dict:
    """CRR and leak on the forget test subsample, clean and under each perturbation.

    A strong perturbation can destroy what the question is about (a crop cuts the star
    out, heavy JPEG turns a digit into another): the request's scope then no longer
    covers the image and a refusal is no longer owed. So each row also has the original
    model's leak on the perturbed images (`base_leak`: how often the content survives)
    and CRR on `preserved` pairs only, those where the original model still gives the
    original answer (`crr_preserved`), next to the state's CRR on the same pairs unperturbed
    (`crr_preserved_clean`; their ratio is `crr_preserved_vs_clean`)."""
    pairs = target.forget_test()
    base = target.base()
    clean = target.forget_metrics(target.method, pairs)
    rows = {}
    for name, (family, strength, _) in PERTURBATIONS.items():
        moved = {r: perturbed(samples, name, target.config.seed) for r, samples in pairs.items()}
        metrics = target.forget_metrics(target.method, moved)
        ratio = (100.0 * metrics["crr"] / clean["crr"]) if clean["crr"] else None
        kept = preserved_pairs(base, moved)
        kept_clean = {r: [pairs[r][i] for i in v] for r, v in kept.items() if v}
        kept_moved = {r: [moved[r][i] for i in v] for r, v in kept.items() if v}
        on_moved = target.forget_metrics(target.method, kept_moved)["crr"] if kept_moved else None
        on_clean = target.forget_metrics(target.method, kept_clean)["crr"] if kept_clean else None
        rows[name] = {"family": family, "strength": strength, **metrics, "crr_vs_clean": ratio,
                      "base_leak": target.forget_metrics(base, moved)["leak"],
                      "n_preserved": sum(len(v) for v in kept_moved.values()),
                      "crr_preserved": on_moved, "crr_preserved_clean": on_clean,
                      "crr_preserved_vs_clean": 100.0 * on_moved / on_clean if on_clean and on_moved is not None
                      else None}
    worst = _min(r["crr_vs_clean"] for r in rows.values())
    worst_preserved = _min(r["crr_preserved_vs_clean"] for r in rows.values())
    return {"clean": clean, "perturbations": rows, "worst_crr_vs_clean": worst,
            "worst_crr_preserved_vs_clean": worst_preserved,
            "headline": {"clean CRR": clean["crr"], "worst CRR % of clean": worst,
                         "worst CRR % of clean (content preserved)": worst_preserved,
                         "max leak": _max(r["leak"] for r in rows.values())}}


def preserved_pairs(base, moved: dict) -> dict[str, list[int]]:
    """Per request, the indices of perturbed pairs on which the original model still gives the original answer."""
    flat = [s for samples in moved.values() for s in samples]
    answers = iter(base.generate([s.image for s in flat], [s.instruction for s in flat]))
    return {r: [i for i, s in enumerate(samples) if contains_answer(next(answers), s.meta.get("original_answer", ""))]
            for r, samples in moved.items()}


def _min(values):
    kept = [v for v in values if v is not None]
    return min(kept) if kept else None


def _max(values):
    kept = [v for v in values if v is not None]
    return max(kept) if kept else None
