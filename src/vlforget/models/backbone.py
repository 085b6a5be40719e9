"""`Backbone`: the built-in tiny LLaVA (or a saved copy) behind one small API.

Prompt layout (format version 1), left-padded for training and generation alike:

    <pad>... <s> instruction words <image> x n_image_tokens <sep> answer words </s>

The question comes *before* the image tokens so the causal language model reads the
image knowing what to look for. `labels` are -100 everywhere except the answer
tokens and the final `</s>`, so `model(**batch).loss` is the answer's mean NLL.
The language model uses rotary position embeddings (relative), so the left padding
offset does not change what a sequence computes.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

FORMAT_VERSION = 1
META_FILE = "vlforget.json"
PROMPT_LAYOUT = "bos instruction image* sep answer eos"
IMAGE_SIZE = 48
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def builtin_path() -> Path:
    """Folder of the committed model (inside the installed package)."""
    return Path(str(resources.files("vlforget") / "assets" / "tiny-llava"))


def images_to_pixels(images: Sequence[Image.Image], image_size: int = IMAGE_SIZE,
                     mean: float = PIXEL_MEAN, std: float = PIXEL_STD) -> torch.Tensor:
    """[B, 3, H, W] float tensor: RGB scaled to [0, 1], then (x - mean) / std."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return normalise_uint8(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), mean, std)


def normalise_uint8(pixels: torch.Tensor, mean: float = PIXEL_MEAN, std: float = PIXEL_STD) -> torch.Tensor:
    return (pixels.float() / 255.0 - mean) / std


def assemble(instruction_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]] | None, *,
             bos: int, eos: int, sep: int, pad: int, image: int, n_image_tokens: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids / attention_mask (and labels when targets are given)."""
    rows, labels = [], []
    for i, ids in enumerate(instruction_ids):
        prompt = [bos, *ids, *([image] * n_image_tokens), sep]
        if target_ids is None:
            rows.append(prompt)
        else:
            answer = [*target_ids[i], eos]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_tensor = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention_mask[i, width - len(row):] = 1
        if labels:
            label_tensor[i, width - len(row):] = torch.tensor(labels[i])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if target_ids is not None:
        batch["labels"] = label_tensor
    return batch


class Backbone:
    """A LLaVA model + tokenizer with batch building, generation and feature access."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", meta: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.meta = {
            "format_version": FORMAT_VERSION,
            "prompt_layout": PROMPT_LAYOUT,
            "padding_side": "left",
            "image_size": IMAGE_SIZE,
            "pixel_mean": PIXEL_MEAN,
            "pixel_std": PIXEL_STD,
            "n_image_tokens": int(model.config.image_seq_length),
            **(meta or {}),
        }
        if self.meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"unsupported backbone format version {self.meta['format_version']} "
                             f"(this vlforget reads version {FORMAT_VERSION})")
        self.model.to(self.device)

    # -- loading / saving ----------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu", dtype=None) -> "Backbone":
        """Load a saved backbone (None = the built-in model shipped with vlforget)."""
        from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load tqdm bar would interleave with our own progress output
        path = builtin_path() if path is None else Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model found in {path} (expected config.json, weights and tokenizer files)")
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = LlavaForConditionalGeneration.from_pretrained(path, **kwargs)
        model.eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        tokenizer.padding_side = "left"
        return cls(model, tokenizer, device, meta)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        (path / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    # -- module access ---------------------------------------------------------------
    @property
    def vision_encoder(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def connector(self) -> torch.nn.Module:
        return self.model.model.multi_modal_projector

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    @property
    def connector_path(self) -> str:
        """Dotted name of the projector inside `.model` (for peft targets or hooks)."""
        for name, module in self.model.named_modules():
            if module is self.connector:
                return name
        raise RuntimeError("projector not found among the model's modules")

    @property
    def n_image_tokens(self) -> int:
        return int(self.meta["n_image_tokens"])

    # -- inputs ----------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = images_to_pixels(images, self.meta["image_size"], self.meta["pixel_mean"], self.meta["pixel_std"])
        return pixels.to(self.device, dtype=self.model.dtype)

    def encode_text(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _special(self) -> dict[str, int]:
        tok = self.tokenizer
        return {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "sep": tok.sep_token_id,
                "pad": tok.pad_token_id, "image": self.model.config.image_token_id,
                "n_image_tokens": self.n_image_tokens}

    def build_batch(self, images: Sequence[Image.Image], instructions: Sequence[str],
                    targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors for `model(**batch)`; with `targets`, `labels` mark the answer + eos only."""
        if len(images) != len(instructions) or (targets is not None and len(targets) != len(images)):
            raise ValueError("images, instructions (and targets) must have the same length")
        batch = assemble(self.encode_text(instructions), None if targets is None else self.encode_text(targets),
                         **self._special())
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = self.pixel_values(images)
        return batch

    # -- outputs ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], instructions: Sequence[str], max_new_tokens: int = 24,
                 batch_size: int = 64, min_new_tokens: int = 0) -> list[str]:
        """Greedy answers, decoded and stripped.

        `min_new_tokens` = `max_new_tokens` makes every answer exactly that long (end-of-sequence
        suppressed): the latency benchmarks use it to compare compute at equal work."""
        was_training = self.model.training
        self.model.eval()
        answers: list[str] = []
        try:
            for start in range(0, len(images), batch_size):
                batch = self.build_batch(images[start:start + batch_size], instructions[start:start + batch_size])
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                          do_sample=False,
                                          num_beams=1, pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=self.tokenizer.eos_token_id)
                new = out[:, batch["input_ids"].shape[1]:]
                answers += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        finally:
            self.model.train(was_training)
        return answers

    def answer_logprobs(self, images: Sequence[Image.Image], instructions: Sequence[str],
                        targets: Sequence[str]) -> torch.Tensor:
        """[B] summed log-probability of each target (+ eos); differentiable."""
        batch = self.build_batch(images, instructions, targets)
        labels = batch.pop("labels")
        logits = self.model(**batch).logits[:, :-1].float()
        labels = labels[:, 1:]
        mask = labels != -100
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logp * mask).sum(-1)

    def vision_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, n_image_tokens, vision_hidden]: the vision tower output fed to the connector."""
        cfg = self.model.config
        out = self.vision_encoder(self.pixel_values(images), output_hidden_states=True)
        features = out.hidden_states[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        return features

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, n_image_tokens, text_hidden]: connector output (what the language model sees)."""
        return self.connector(self.vision_features(images))
