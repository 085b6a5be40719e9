"""Installing forward hooks so they are always removed, and where methods hook in."""

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
