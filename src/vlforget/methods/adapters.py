"""LoRA adapters on the language model, through PEFT.

`inject_adapter_in_model` mutates the LLaVA model in place (no PeftModel wrapper),
so `Backbone.generate` keeps working unchanged. The regex restricts LoRA to the
language model: a bare `["q_proj", "v_proj"]` would also wrap the vision tower.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

# The language model is `language_model` in LLaVA / LLaVA-NeXT / Qwen2-VL, `text_model` in Idefics3.
LANGUAGE_MODEL_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def add_lora(model: torch.nn.Module, rank: int, alpha: float, name: str = "default",
             targets: str = LANGUAGE_MODEL_TARGETS) -> list[torch.nn.Parameter]:
    """Inject a LoRA adapter `name`; returns its trainable parameters."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    inject_adapter_in_model(config, model, adapter_name=name)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def load_lora_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise ValueError(f"saved adapter tensors do not fit this model: {missing[:3]} ...")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


@contextmanager
def adapters_off(model: torch.nn.Module):
    """Run the original model: every LoRA layer bypassed, always restored."""
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    states = [m.disable_adapters for m in layers]
    try:
        for m in layers:
            m.enable_adapters(False)
        yield
    finally:
        for m, disabled in zip(layers, states):
            m.enable_adapters(not disabled)
