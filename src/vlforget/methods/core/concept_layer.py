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


class _SizeGroups:
    """One side's `top_mean` for every request, done once per group of requests with the
    same number of descriptions rather than once per request: the side's description
    columns are stored group by group, so a group's similarities are one [B, P, g, n]
    view. The arithmetic is the per-request loop's (the same top-k values averaged), in
    a few operations instead of a few per request. Why: `ConceptBank.raw` runs in the
    connector hook for every batch of queries; a single padded block for all requests
    was slower than the loop on batches (60 queries: 5.9 vs 3.6 ms), as it sorted every
    request's padding too."""

    def __init__(self, weights: list[torch.Tensor], share: float):
        sizes = [w.shape[0] for w in weights]
        self.groups = []  # (requests, n, k) per distinct size n > 0; k as in `top_mean`
        for n in sorted(set(sizes) - {0}):
            requests = [r for r, size in enumerate(sizes) if size == n]
            self.groups.append((torch.tensor(requests, device="cpu"), n, max(1, int(n * share))))
        # the description embeddings as one [dim, sum n] matrix, group by group
        columns = [weights[r] for requests, _, _ in self.groups for r in requests.tolist()]
        self.matrix = (torch.cat(columns) if columns else weights[0][:0]).T.contiguous()
        self.count = len(sizes)

    def top_mean(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings [B, P, dim] -> [B, T]: per request, the max over P of the mean of its
        top-k description similarities; 1 for a request without descriptions on this side
        (no concept there: every query matches it fully)."""
        projected = embeddings.float() @ self.matrix  # [B, P, sum n]
        out = projected.new_ones(len(projected), self.count)
        start = 0
        for requests, n, k in self.groups:
            block = projected[:, :, start:start + len(requests) * n].unflatten(-1, (len(requests), n))
            out[:, requests.to(out.device)] = block.topk(k, dim=-1).values.mean(-1).amax(dim=1)
            start += len(requests) * n
        return out


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
            self._cat = (_SizeGroups(self.visual, 0.25), _SizeGroups(self.textual, self.textual_share),
                         lv[:, :, 0], (lv[:, :, 1] - lv[:, :, 0]).clamp(min=1e-3))
        return self._cat

    def raw(self, visual: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """visual [B, P, E], instruction [B, S, d] -> [B, T, 2] unscaled (visual, textual) scores."""
        visual_side, textual_side, _, _ = self._concat()
        return torch.stack([visual_side.top_mean(visual), textual_side.top_mean(instruction)], -1)

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
