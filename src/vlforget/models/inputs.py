"""Model inputs as tensors: images -> normalised pixels, token ids -> left-padded batches.

Defaults are the built-in model's: `IMAGE_SIZE` px square, one `PIXEL_MEAN` / `PIXEL_STD`
for every channel; a checkpoint's own values come through `Backbone.meta`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 48
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25
Norm = float | Sequence[float]  # one value for all channels, or per RGB channel


def images_to_pixels(images: Sequence[Image.Image], image_size: int = IMAGE_SIZE,
                     mean: Norm = PIXEL_MEAN, std: Norm = PIXEL_STD) -> torch.Tensor:
    """[B, 3, H, W] float tensor: RGB scaled to [0, 1], then (x - mean) / std."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return normalise_uint8(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), mean, std)


def normalise_uint8(pixels: torch.Tensor, mean: Norm = PIXEL_MEAN, std: Norm = PIXEL_STD) -> torch.Tensor:
    """[B, 3, H, W] uint8 -> float (x / 255 - mean) / std, per channel when mean / std are lists."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).reshape(-1, 1, 1)
    return (pixels.float() / 255.0 - mean_t) / std_t


def per_channel(value: Norm) -> list[float]:
    """A normalisation value as three floats, one per RGB channel."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3


def assemble(prompt_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]] | None, *,
             eos: int, pad: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids / attention_mask (and labels when targets are given): prompt + target + eos."""
    rows, labels = [], []
    for i, prompt in enumerate(prompt_ids):
        prompt = list(prompt)
        if target_ids is None:
            rows.append(prompt)
        else:
            answer = [*target_ids[i], eos]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device="cpu")
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    label_tensor = torch.full((len(rows), width), -100, dtype=torch.long, device="cpu")
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row, device="cpu")
        attention_mask[i, width - len(row):] = 1
        if labels:
            label_tensor[i, width - len(row):] = torch.tensor(labels[i], device="cpu")
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if target_ids is not None:
        batch["labels"] = label_tensor
    return batch

