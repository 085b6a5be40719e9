"""The one training-step loop every gradient-trained method shares, under `accelerate`.

Methods train small things inside a frozen model (LoRA tensors, refuser copies of the
connector, expert adapters, a few projection weights), so instead of wrapping the whole
model in DDP through `accelerator.prepare(model)`, `train_steps` all-reduces (averages)
the gradients of the *trainable parameters only*, explicitly, before the optimiser step.

How a multi-process launch splits the work:
- Every process draws the *same* full batch (same seeded RNG, so the draws never drift
  apart) and keeps its own contiguous slice of it (`shard`). The per-process losses are
  means over their slices; the gradients are averaged across processes; every process
  clips and steps on identical gradients, so all end with identical weights.
- Terms that do not depend on the batch (EWC's penalty, CORE's prototype protection)
  are computed on every process; averaging identical gradients leaves them unchanged.
- Small replicated fits (CORE's router row and modulator head, probes, SAEs) are not
  split: every process computes the same thing from the same data.

In a single process (no launch, or a launch of one) nothing is reduced and `shard`
returns its input: the step is exactly the plain loop it replaced, bit for bit.

The average of per-slice token means is not the token mean of the whole batch when
slices hold different numbers of answer tokens, and float sums run in another order, so
a two-process run matches a one-process run closely, not bit for bit (tests/test_accelerate.py).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

# Every generate() in the package answers in chunks of 64 (Backbone.generate's batch
# size); evaluation shards whole chunks so each answer is computed exactly as in one process.
EVAL_CHUNK = 64


@functools.lru_cache(maxsize=1)
def get_accelerator():
    """The process's `Accelerator` (built once).

    `cpu=True` when no GPU is present: accelerate only forms a multi-process CPU group
    (gloo) when told it runs on CPU, e.g. under `accelerate launch --multi_gpu
    --num_processes 2` or `torchrun --nproc_per_node 2` on a CPU-only machine.
    """
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def num_processes() -> int:
    return get_accelerator().num_processes


def is_main_process() -> bool:
    return get_accelerator().is_main_process


def wait_for_everyone() -> None:
    if num_processes() > 1:
        get_accelerator().wait_for_everyone()


def shard_range(n: int) -> tuple[int, int]:
    """[start, stop) of this process's contiguous slice of n items (earlier slices one longer)."""
    acc = get_accelerator()
    world, rank = acc.num_processes, acc.process_index
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (1 if rank < extra else 0)


def shard(*columns: Sequence[T]) -> tuple[list[T], ...] | list[T]:
    """This process's slice of parallel lists (e.g. images, instructions, targets).

    In one process the columns come back unchanged (as lists). One column in, one out.
    """
    if num_processes() == 1:
        out = tuple(columns)
    else:
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            raise ValueError(f"shard() needs columns of one length, got lengths {sorted(lengths)}")
        n = lengths.pop()
        if n < num_processes():
            raise ValueError(f"a batch of {n} cannot be split over {num_processes()} processes; "
                             f"use a batch size of at least {num_processes()}")
        start, stop = shard_range(n)
        out = tuple(list(c)[start:stop] for c in columns)
    return out[0] if len(out) == 1 else out


def sync_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average the gradients of `params` over processes (no-op in one process).

    A parameter whose gradient is None on every process keeps None (the optimiser skips
    it, as in one process); one that has a gradient somewhere gets zeros where missing.
    """
    if num_processes() == 1:
        return
    acc = get_accelerator()
    params = list(params)
    present = acc.reduce(torch.tensor([float(p.grad is not None) for p in params], device=acc.device), "max")
    live = [p for p, flag in zip(params, present.tolist()) if flag > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not live:
        return
    # One flat all-reduce instead of one per tensor.
    flat = torch.cat([p.grad.reshape(-1) for p in live])
    flat = acc.reduce(flat, "mean")
    offset = 0
    for p in live:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def train_steps(params: Sequence[torch.Tensor], optimiser: torch.optim.Optimizer, steps: int,
                step_loss: Callable[[int], torch.Tensor | None], *, clip: float | None = 1.0,
                after_backward: Callable[[], None] | None = None,
                after_step: Callable[[], None] | None = None) -> None:
    """Run `steps` optimiser steps; `step_loss(step)` draws its batch (via `shard`) and returns the loss.

    Per step: loss, zero_grad(set_to_none), backward, gradient average across processes,
    `after_backward` (e.g. gradient masks), clip to `clip` (None: no clipping), optimiser
    step, `after_step` (e.g. projecting the update). `step_loss` may return None to stop
    early (every process must agree, which holds when it depends only on replicated data).
    """
    params = list(params)
    for step in range(steps):
        loss = step_loss(step)
        if loss is None:
            break
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(params)
        if after_backward is not None:
            after_backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimiser.step()
        if after_step is not None:
            after_step()


def accumulate_squared_grads(model: torch.nn.Module, params: Sequence[torch.Tensor], into: Sequence[torch.Tensor],
                             loss: Callable[[], torch.Tensor], batches: int) -> None:
    """`into[i] += grad(params[i])**2 / batches` over `batches` calls of `loss` (a diagonal empirical Fisher).

    Not split over processes: every process draws the same full batches and gets the same sums.
    """
    for _ in range(batches):
        model.zero_grad(set_to_none=True)
        loss().backward()
        for buffer, p in zip(into, params):
            buffer += p.grad.detach() ** 2 / batches
    model.zero_grad(set_to_none=True)


def map_sharded(fn: Callable[[list[T]], list[R]], items: Sequence[T], chunk: int = EVAL_CHUNK) -> list[R]:
    """`fn(items)`, with whole chunks spread over processes and the answers gathered on all.

    In one process this is exactly `fn(list(items))`. With several, chunk c goes to process
    c mod world; since every `generate` answers in chunks of `EVAL_CHUNK`, each answer is
    computed on the same batch as in one process, so the gathered list is the same.
    """
    items = list(items)
    if num_processes() == 1 or len(items) <= chunk:
        return fn(items) if items else []
    from accelerate.utils import gather_object

    acc = get_accelerator()
    starts = list(range(0, len(items), chunk))
    mine = [(s, fn(items[s:s + chunk])) for s in starts[acc.process_index::acc.num_processes]]
    gathered = dict(gather_object(mine))
    return [answer for s in starts for answer in gathered[s]]
