"""Tiny random-init models of every supported family, for tests and smoke runs.

Each model is built from its family's real transformers config class (few layers,
small hidden sizes) over the built-in word-level tokenizer, so the built-in tokenizer
is reused and `Backbone.load(folder)` goes through the same transformers model class
a user with real weights loads. The weights are random: these models answer nonsense
and only exercise code paths (shapes, hooks, save/load).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlforget.models.backbone import Backbone
from vlforget.models.inputs import IMAGE_SIZE

PATCH = 16
HIDDEN = 64
HEADS = 4


def _llama_text(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                       num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                       max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False)


def _clip_vision():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                            num_attention_heads=HEADS, image_size=IMAGE_SIZE, patch_size=PATCH,
                            projection_dim=HIDDEN)


def llava_config(tokenizer):
    from transformers import LlavaConfig

    return LlavaConfig(vision_config=_clip_vision(), text_config=_llama_text(tokenizer),
                       image_token_index=tokenizer.image_token_id, image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       tie_word_embeddings=False)


def llava_next_config(tokenizer):
    from transformers import LlavaNextConfig

    # One grid pinpoint equal to the image size: anyres gives the base image + one tile.
    return LlavaNextConfig(vision_config=_clip_vision(), text_config=_llama_text(tokenizer),
                           image_token_index=tokenizer.image_token_id, image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
                           vision_feature_layer=-1, vision_feature_select_strategy="default",
                           tie_word_embeddings=False)


def _qwen_text(tokenizer) -> dict:
    # mrope_section splits each head's rotary half (head_dim 16 -> 8) over time, height, width
    return dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=256,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)


def qwen2_vl_config(tokenizer):
    from transformers import Qwen2VLConfig

    # 8-pixel patches merged 2x2: a 48-pixel image is 6x6 patches -> 9 image tokens.
    vision = dict(depth=2, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=HEADS, mlp_ratio=2, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(vision_config=vision, text_config=_qwen_text(tokenizer),
                         image_token_id=tokenizer.image_token_id, tie_word_embeddings=False)


def qwen2_5_vl_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    # window_size 32 px = 2x2 merged tokens per attention window; block 1 attends fully
    vision = dict(depth=2, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, out_hidden_size=HIDDEN,
                  num_heads=HEADS, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=32, fullatt_block_indexes=[1])
    return Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text(tokenizer),
                            image_token_id=tokenizer.image_token_id, tie_word_embeddings=False)


def idefics3_config(tokenizer):
    from transformers import Idefics3Config

    # 8-pixel patches, pixel shuffle by 2: a 48-pixel image is 6x6 patches -> 9 image tokens.
    vision = dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                  image_size=IMAGE_SIZE, patch_size=8)
    return Idefics3Config(vision_config=vision, text_config=_llama_text(tokenizer), scale_factor=2,
                          image_token_id=tokenizer.image_token_id, tie_word_embeddings=False)


CONFIGS = {"llava": llava_config, "llava_next": llava_next_config, "qwen2_vl": qwen2_vl_config,
           "qwen2_5_vl": qwen2_5_vl_config, "idefics3": idefics3_config}


def build_family(family: str, seed: int = 0) -> Backbone:
    """A random-init tiny `Backbone` of `family` (a key of `CONFIGS`) with the built-in tokenizer."""
    from vlforget.models.families import model_class
    from vlforget.models.tokenizer import build_tokenizer

    if family not in CONFIGS:
        raise ValueError(f"no tiny config for family {family!r}; have: {', '.join(CONFIGS)}")
    tokenizer = build_tokenizer()
    config = CONFIGS[family](tokenizer)
    torch.manual_seed(seed)
    model = model_class(config.model_type)(config)
    model.eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return Backbone(model, tokenizer)


def save_family(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny `family` model and save it as a folder `Backbone.load` reads."""
    out_dir = Path(out_dir)
    build_family(family, seed).save(out_dir)
    return out_dir


def save_hub_layout(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """The tiny `family` model saved the way a hub checkpoint is: no vlforget.json (so it
    loads with its family's chat format), the format's chat markers as special tokens of
    its tokenizer, no sep token, Qwen without bos, and a per-channel CLIP-style
    `preprocessor_config.json`."""
    import json
    import re

    from vlforget.models.prompt import FAMILY_TEMPLATES

    out_dir = Path(out_dir)
    backbone = build_family(family, seed)
    tokenizer, model = backbone.tokenizer, backbone.model
    markers = sorted(set(re.findall(r"<\|?[A-Za-z_][\w\-]*\|?>", FAMILY_TEMPLATES[family])))
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    tokenizer.sep_token = None
    if family.startswith("qwen"):
        tokenizer.bos_token = None
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return out_dir
