"""Run by tests/test_accelerate.py under `accelerate launch`: a tiny model trained with
`train_steps` on sharded batches; each process writes its final weights."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlforget.methods.training import get_accelerator, shard, train_steps


def train(steps: int = 25) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    data = [(torch.randn(6), torch.randn(1)) for _ in range(40)]
    rng = random.Random(1)
    params = list(model.parameters())
    optimiser = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)

    def step_loss(step):
        picked = shard([rng.randrange(len(data)) for _ in range(8)])  # same draw everywhere, own slice
        x = torch.stack([data[i][0] for i in picked])
        y = torch.stack([data[i][1] for i in picked])
        return torch.nn.functional.mse_loss(model(x), y)

    train_steps(params, optimiser, steps, step_loss)
    return model


if __name__ == "__main__":
    out = Path(sys.argv[1])
    acc = get_accelerator()
    model = train()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{acc.process_index}.safetensors"))
    (out / f"rank{acc.process_index}.json").write_text(json.dumps({"processes": acc.num_processes,
                                                                  "distributed_type": str(acc.distributed_type)}))
