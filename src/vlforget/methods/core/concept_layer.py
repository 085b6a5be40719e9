"""The concept layer: query embeddings -> similarity with each request's concepts.

A request keeps its descriptions' embeddings: the visual ones from the concept
encoder's text side (`encoders.py`), the textual ones from the instruction side
(`text_side.py`). Nothing is fitted per request but two score levels per side.

A side without a concept ("any image" / "any question", or no descriptions) stores no
descriptions and scores 1 for every query: it says nothing, and the modulator relies on
the other side.

A query arrives as visual embeddings [P, E] (patches, or the pooled image embedding)
and instruction embeddings [S, d] (the whole instruction and its clauses). A request's
visual score is the max over patches of the mean of its top-quarter description
similarities (an object concept lives in one part of the image; alternatives such as
"three or seven" are OR-ed); its textual score the mean of its top `textual_share`
(three quarters by default) similarities, max over the instruction's pieces (a question
wrapped in a pressing sentence is one of its clauses).

Scores are put on a per-request scale where 1 = the request's typical forget pair
(mean) and 0 = its typical hard negative (25th percentile of retain pairs), so the
modulator and the task similarity compare like with like across requests.
"""

from __future__ import annotations

import torch


def top_mean(scores: torch.Tensor, share: float = 0.25) -> torch.Tensor:
    """Mean of the top `share` (at least one) along the last dimension."""
    k = max(1, int(scores.shape[-1] * share))
    return scores.topk(k, dim=-1).values.mean(-1)


class _Segments:
    """Each request's `top_mean` over its own columns of one side's similarities, for all
    requests at once. Why not a loop over requests: it ran for every query in the
    connector hook, 3.5% of generation time at 16 requests (docs/methods.md, "Latency").

    Columns are gathered into [.., T, n_max] (padding reads a -inf column), sorted once,
    and each request averages its first k of them; a request without columns scores 1
    (no concept on that side: every query matches it fully)."""

    def __init__(self, sizes: list[int], share: float):
        n_max, total = max(sizes, default=0), sum(sizes)
        starts = [sum(sizes[:r]) for r in range(len(sizes))]
        self.index = torch.tensor([[start + j if j < n else total for j in range(max(n_max, 1))]
                                   for start, n in zip(starts, sizes)], dtype=torch.long, device="cpu")
        self.k = torch.tensor([max(1, int(n * share)) for n in sizes], device="cpu")
        self.taken = torch.arange(int(self.k.max()) if sizes else 1, device="cpu") < self.k[:, None]  # [T, k_max]
        self.empty = torch.tensor([n == 0 for n in sizes], device="cpu")

    def top_mean(self, projected: torch.Tensor) -> torch.Tensor:
        """projected [B, P, total] -> [B, T]: per request, the max over P of its top-k mean."""
        device = projected.device
        padded = torch.cat([projected, projected.new_full((*projected.shape[:-1], 1), float("-inf"))], -1)
        top = padded[..., self.index.to(device)].topk(self.taken.shape[1], dim=-1).values  # [B, P, T, k_max]
        means = top.masked_fill(~self.taken.to(device), 0.0).sum(-1) / self.k.to(device)
        return means.amax(dim=1).masked_fill(self.empty.to(device), 1.0)


class ConceptBank:
    """Every request's description embeddings, concatenated so all are scored in two matmuls."""

    def __init__(self, textual_share: float = 0.75):
        # The textual score averages a larger share of the descriptions than the visual one:
        # a question close to one or two phrasings of an intent ("which one is larger" for a
        # size question) is not that intent; one close to most of them is (`CoreConfig.textual_share`).
        self.textual_share = textual_share
        self.names: list[str] = []
        self.visual: list[torch.Tensor] = []  # [n_v, E] per request
        self.textual: list[torch.Tensor] = []  # [n_t, d] per request
        self.levels: list[torch.Tensor] = []  # [2 (v, t), 2 (neg, pos)] per request
        self._cat = None

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, visual: torch.Tensor, textual: torch.Tensor, levels=None) -> None:
        self.names.append(name)
        self.visual.append(visual.float().contiguous())
        self.textual.append(textual.float().contiguous())
        self.levels.append(levels if levels is not None else torch.tensor([[0.0, 1.0], [0.0, 1.0]], device="cpu"))
        self._cat = None

    def set_levels(self, index: int, levels: torch.Tensor) -> None:
        self.levels[index] = levels
        self._cat = None

    def _concat(self):
        if self._cat is None:
            lv = torch.stack(self.levels)  # [T, 2, 2]
            self._cat = (torch.cat(self.visual).T.contiguous(), torch.cat(self.textual).T.contiguous(),
                         _Segments([w.shape[0] for w in self.visual], 0.25),
                         _Segments([w.shape[0] for w in self.textual], self.textual_share),
                         lv[:, :, 0], (lv[:, :, 1] - lv[:, :, 0]).clamp(min=1e-3))
        return self._cat

    def raw(self, visual: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """visual [B, P, E], instruction [B, S, d] -> [B, T, 2] unscaled (visual, textual) scores."""
        wv, wt, segments_v, segments_t, _, _ = self._concat()
        v = segments_v.top_mean(visual.float() @ wv)  # [B, T]
        t = segments_t.top_mean(instruction.float() @ wt)
        return torch.stack([v, t], -1)

    def scores(self, visual: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """[B, T, 2] scores on each request's scale (0 = hard negative, 1 = forget pair)."""
        *_, neg, gap = self._concat()
        return (self.raw(visual, instruction) - neg) / gap

    # -- state ---------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(len(self.names)):
            out[f"concept.{i}.visual"] = self.visual[i]
            out[f"concept.{i}.textual"] = self.textual[i]
            out[f"concept.{i}.levels"] = self.levels[i]
        return out

    def load(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        self.__init__(self.textual_share)
        for i, name in enumerate(names):
            self.add(name, *(tensors[f"concept.{i}.{k}"] for k in ("visual", "textual", "levels")))
