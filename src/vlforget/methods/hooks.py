"""Installing forward hooks so they are always removed, and the decoder layers methods hook into or read."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch


@contextmanager
def installed(*registrations: Callable[[], torch.utils.hooks.RemovableHandle]):
    """Register hooks (each a zero-argument callable returning a handle); always remove them."""
    handles = []
    try:
        for register_hook in registrations:
            handles.append(register_hook())
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def decoder_layer(backbone, index: int) -> torch.nn.Module:
    layers = backbone.language_model.layers
    if not -len(layers) <= index < len(layers):
        raise ValueError(f"layer {index} does not exist; the language model has {len(layers)} decoder layers")
    return layers[index]


def layer_states(backbone, batch: dict, layer: int) -> torch.Tensor:
    """[B, S, H] output of decoder layer `layer` (hidden_states[0] is the embedding output)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    index = layer % len(backbone.language_model.layers) + 1
    return backbone.model(**inputs, output_hidden_states=True).hidden_states[index]
