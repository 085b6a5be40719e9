"""Supported model families: ONE table keyed by `config.model_type`.

Per family: the transformers class to load, and the dotted attribute paths (from the
`...ForConditionalGeneration` object) of the vision tower, the connector (the module
between vision features and the language model; the methods hook and copy it) and the
language model (its `.layers` are hooked by some methods). Paths were checked against
transformers 5.x source (`models/<family>/modeling_<family>.py`).

`layout`: how the model calls the connector, which decides the image inputs and whether
`Backbone` shows methods a per-image view of it (`PerImageConnector`):
  "per_image": [B, P, D], one row per image (LLaVA, Idefics3): methods get the module itself;
  "anyres":    [B * crops, P, D], base image + tiles per image (LLaVA-NeXT);
  "flat":      [sum of patches, D], every image's patches concatenated (Qwen2-VL's merger).
`stacked`: `pixel_values` carry an images-per-sample axis, [B, 1, 3, S, S] (Idefics3).
`image_size`: the fixed input size of a checkpoint loaded without a `vlforget.json`
when its vision config names none (Qwen2-VL takes any size: 448 px = 256 image tokens).
`supported`: exercised end to end by tests/test_families.py (load, generate, methods,
save/load) on a tiny random-init model of the family. Loading a family that is in the
table but not supported raises a clear error naming it (no silent half-working path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    model_type: str
    class_name: str
    vision: str
    connector: str
    language: str
    layout: str = "per_image"
    stacked: bool = False
    image_size: int | None = None
    supported: bool = False


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llava", "LlavaForConditionalGeneration",
           "model.vision_tower", "model.multi_modal_projector", "model.language_model", supported=True),
    Family("llava_next", "LlavaNextForConditionalGeneration",
           "model.vision_tower", "model.multi_modal_projector", "model.language_model", layout="anyres",
           supported=True),
    Family("qwen2_vl", "Qwen2VLForConditionalGeneration",
           "model.visual", "model.visual.merger", "model.language_model", layout="flat", image_size=448,
           supported=True),
    Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration",
           "model.visual", "model.visual.merger", "model.language_model", layout="flat", image_size=448,
           supported=True),
    Family("idefics3", "Idefics3ForConditionalGeneration",
           "model.vision_model", "model.connector", "model.text_model", stacked=True, supported=True),
)}


def supported_families() -> list[str]:
    return sorted(name for name, family in FAMILIES.items() if family.supported)


def family_of(model_type: str) -> Family:
    family = FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"unsupported model family {model_type!r}; vlforget supports: "
                         f"{', '.join(supported_families())}")
    if not family.supported:
        raise ValueError(f"model family {model_type!r} ({family.class_name}) is not supported yet; "
                         f"vlforget supports: {', '.join(supported_families())} (see docs/models.md)")
    return family


def model_class(model_type: str):
    import transformers

    return getattr(transformers, family_of(model_type).class_name)


def resolve(model: torch.nn.Module, path: str) -> torch.nn.Module:
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    return module
