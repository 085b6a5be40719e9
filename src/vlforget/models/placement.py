"""Where a model runs and in which dtype: the `--device` / `--dtype` choices, checked once.

`resolve_device` turns "auto", "cpu", "cuda" or "cuda:N" into a torch device (under
`accelerate launch`, "auto" takes this process's GPU); `resolve_precision` the dtype to
load with, falling back to float32 on CPU.
"""

from __future__ import annotations

import torch

HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPES = {"float32": torch.float32, **HALF}


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"; a clear error otherwise."""
    if device == "auto":  # under `accelerate launch` each process takes its own GPU (LOCAL_RANK)
        import os

        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(device)
    raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def resolve_precision(dtype: str, device: torch.device) -> tuple[torch.dtype | str, str | None]:
    """The dtype to load with, and a note when the request was changed.

    "auto" is the checkpoint's own dtype on a GPU and float32 on CPU; half precision on
    CPU falls back to float32 (CPU half-precision kernels are slow or missing for some ops).
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    if device.type == "cpu":
        note = f"note: --dtype {dtype} ignored on CPU; using float32" if dtype in HALF else None
        return torch.float32, note
    return ("auto" if dtype == "auto" else DTYPES[dtype]), None

