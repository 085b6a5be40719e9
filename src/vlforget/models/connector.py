"""`PerImageConnector`: the connector seen one row per image, for families whose model calls it otherwise."""

from __future__ import annotations

import torch


class PerImageConnector(torch.nn.Module):
    """A per-image view of a connector the model does not call per image.

    Input [B, T, D] (one row per image: every crop's or patch's connector input, in the
    model's order), output [B, T', H]: the wrapped projector applied as the model applies
    it. `rows` is how many rows of the model's own call one image takes: LLaVA-NeXT calls
    [B * crops, P, D] (rows = crops), Qwen2-VL's merger [B * patches, D] (rows = patches,
    `flat`). Holds the real projector as a submodule, so its parameters are shared and
    `copy.deepcopy` copies them. `busy` is set while it runs the projector, so the routing
    hook `Backbone` puts on the projector lets that inner call through.
    """

    def __init__(self, projector: torch.nn.Module, rows: int, flat: bool):
        super().__init__()
        self.projector = projector
        self.rows = rows
        self.flat = flat
        self.busy = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        inner = x.reshape(b * self.rows, d) if self.flat else x.reshape(b * self.rows, n // self.rows, d)
        self.busy = True
        try:
            out = self.projector(inner)
        finally:
            self.busy = False
        return out.reshape(b, -1, out.shape[-1])

