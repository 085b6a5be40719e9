"""Quantisation: the state's language model in 8 bits. Does the forgetting survive deployment compression?

torch's dynamic int8 quantisation on CPU (`torch.ao.nn.quantized.dynamic.Linear`,
what `torch.ao.quantization.quantize_dynamic` puts in place of every `nn.Linear`):
weights int8 per tensor, activations quantised on the fly per batch. Instead of
replacing the modules, each Linear of the language model keeps its identity and gets
the quantised module's `forward` (an instance attribute); so hooks and module
references a method holds (O3's targets, LoRA layers wrapping a base Linear) keep
working, and deleting the attribute restores the float model exactly.

Measured with and without quantisation: CRR and leak on the forget subsample, AR on
the retain subsample, S on the utility subsample (relative to the float original
model), and how far the original answers' log-probabilities move (forced decoding,
through the method), which shows the int8 model is not the float one.
`bitsandbytes` 8/4-bit is GPU-only and not run here (the machine has no GPU).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from vlforget.evaluation.attacks.scoring import deployed_logprobs


@contextmanager
def int8_linears(module: torch.nn.Module):
    """Every nn.Linear under `module` computes with dynamic int8 quantisation while inside."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import default_dynamic_qconfig

    linears = [m for m in module.modules() if type(m) is torch.nn.Linear]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        quantised = []
        for linear in linears:
            linear.qconfig = default_dynamic_qconfig
            quantised.append(DynamicLinear.from_float(linear))
            del linear.qconfig
    try:
        for linear, q in zip(linears, quantised):
            linear.forward = q.forward
        yield len(linears)
    finally:
        for linear in linears:
            if "forward" in linear.__dict__:
                del linear.forward


def answer_logprobs(target, model) -> torch.Tensor:
    flat = [s for samples in target.forget_test().values() for s in samples if s.meta.get("original_answer")]
    scored = deployed_logprobs(model, [s.image for s in flat], [s.instruction for s in flat],
                               [s.meta["original_answer"] for s in flat])
    return torch.cat(scored) if scored else torch.zeros(0)


def measure(target, base_accuracy: float | None) -> dict:
    model = target.method
    out = {k: v for k, v in target.forget_metrics(model).items() if k != "per_request"}
    out.update(target.retain_metrics(model))
    accuracy = target.utility_accuracy(model)
    out["utility_accuracy"] = accuracy
    out["s"] = 100.0 * accuracy / base_accuracy if accuracy is not None and base_accuracy else None
    return out


def run(target) -> dict:
    if target.method.backbone.device.type != "cpu":
        raise ValueError("the quantisation attack uses torch's dynamic int8 quantisation, which runs on CPU only; "
                         "run `vlforget attack` with --device cpu")
    base_accuracy = target.utility_accuracy(target.base())
    float_metrics = measure(target, base_accuracy)
    float_logprobs = answer_logprobs(target, target.method)
    with int8_linears(target.method.backbone.language_model) as n_linear:
        int8_metrics = measure(target, base_accuracy)
        int8_logprobs = answer_logprobs(target, target.method)
    change = (int8_logprobs - float_logprobs).abs()
    return {"scheme": "torch dynamic int8 (per-tensor weights, per-batch activations), language model Linear layers",
            "quantised_linear_layers": n_linear, "base_utility_accuracy": base_accuracy,
            "float": float_metrics, "int8": int8_metrics,
            "answer_logprob_change_mean": float(change.mean()) if len(change) else None,
            "answer_logprob_change_max": float(change.max()) if len(change) else None,
            "headline": {"CRR float -> int8": _arrow(float_metrics["crr"], int8_metrics["crr"]),
                         "AR float -> int8": _arrow(float_metrics["ar"], int8_metrics["ar"]),
                         "S float -> int8": _arrow(float_metrics["s"], int8_metrics["s"]),
                         "leak int8": int8_metrics["leak"]}}


def _arrow(a, b) -> str:
    show = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    return f"{show(a)} -> {show(b)}"
