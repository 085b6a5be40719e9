"""The concept layer: cheap frozen embeddings -> similarity with each request's concepts.

Per request, two linear maps:
- visual: per patch, vision features (what the connector receives anyway) -> the
  similarity of that patch with each of the request's visual descriptions. With
  `visual_scores="scorer"` (the default) the patches first go through the aligned
  scorer's own image projection (`ConceptBank.project`) and the map is the
  descriptions' scorer embeddings; with `"distilled"` it is a ridge fit (closed form,
  deterministic) of the scorer's similarities;
- textual: the instruction's hashed bag of token unigrams and bigrams
  (`CoreMethod.instruction_features`, a table lookup; `text_buckets` wide) -> MiniLM's
  similarity of the instruction with each of the request's textual descriptions, a
  ridge fit, optionally refined by a per-request linear correction on the same bag
  (`ut`, `text_tuning_steps`).
At inference a request's visual score is the max over patches of the mean of its
top-quarter description scores (an object concept lives in one cell; alternatives such
as "three or seven" are OR-ed), its textual score the same mean without the patch max.
The scorer and MiniLM are thus needed only while a request is applied.

Scores are put on a per-request scale where 1 = the request's typical forget pair
(mean) and 0 = its typical hard negative (25th percentile of retain pairs), so the
modulator and the task similarity compare like with like across requests.
"""

from __future__ import annotations

import torch


def ridge_fit(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W, b minimising |x W + b - y|^2 + penalty |W|^2 (x centred, so b is not penalised)."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc + penalty * torch.eye(x.shape[1], dtype=x.dtype, device="cpu")
    w = torch.linalg.solve(gram, xc.T @ yc)
    b = my - mx @ w
    return w.float(), b.float()


def top_mean(scores: torch.Tensor) -> torch.Tensor:
    """Mean of the top quarter (at least one) along the last dimension."""
    k = max(1, scores.shape[-1] // 4)
    return scores.topk(k, dim=-1).values.mean(-1)


class ConceptBank:
    """Every request's concept layer, concatenated so all are scored in two matmuls."""

    def __init__(self, project=None):
        # Optional per-patch transform applied before the visual maps: with
        # `visual_scores="scorer"` it is the scorer's own (normalised) image projection,
        # and each request's visual map is its descriptions' scorer embeddings.
        self.project = project
        self.names: list[str] = []
        self.wv: list[torch.Tensor] = []
        self.bv: list[torch.Tensor] = []
        self.wt: list[torch.Tensor] = []
        self.bt: list[torch.Tensor] = []
        self.levels: list[torch.Tensor] = []  # [2 (v, t), 2 (neg, pos)] per request
        self.ut: list[torch.Tensor | None] = []  # per request: textual correction on the token bag (or None)
        self._cat = None

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, wv, bv, wt, bt, levels=None) -> None:
        self.names.append(name)
        self.wv.append(wv)
        self.bv.append(bv)
        self.wt.append(wt)
        self.bt.append(bt)
        self.levels.append(levels if levels is not None else torch.tensor([[0.0, 1.0], [0.0, 1.0]], device="cpu"))
        self.ut.append(None)
        self._cat = None

    def set_text_correction(self, index: int, u: torch.Tensor) -> None:
        self.ut[index] = u
        self._cat = None

    def set_levels(self, index: int, levels: torch.Tensor) -> None:
        self.levels[index] = levels
        self._cat = None

    def _concat(self):
        if self._cat is None:
            sv = torch.tensor([0] + [w.shape[1] for w in self.wv], device="cpu").cumsum(0).tolist()
            st = torch.tensor([0] + [w.shape[1] for w in self.wt], device="cpu").cumsum(0).tolist()
            lv = torch.stack(self.levels)  # [T, 2, 2]
            dim = self.wt[0].shape[0]
            ut = torch.stack([u if u is not None else torch.zeros(dim, device="cpu") for u in self.ut], 1)  # [D, T]
            self._cat = (torch.cat(self.wv, 1), torch.cat(self.bv), torch.cat(self.wt, 1), torch.cat(self.bt),
                         sv, st, lv[:, :, 0], (lv[:, :, 1] - lv[:, :, 0]).clamp(min=1e-3), ut)
        return self._cat

    def raw(self, features: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """[B, T, 2] unscaled (visual, textual) scores of every request."""
        wv, bv, wt, bt, sv, st, _, _, _ = self._concat()
        patches = self.project(features.float()) if self.project is not None else features.float()
        pv = patches @ wv + bv  # [B, P, sum n_v]
        pt = instruction.float() @ wt + bt  # [B, sum n_t]
        out = []
        for r in range(len(self.names)):
            v = top_mean(pv[:, :, sv[r]:sv[r + 1]]).amax(dim=1)
            t = top_mean(pt[:, st[r]:st[r + 1]])
            out.append(torch.stack([v, t], -1))
        return torch.stack(out, 1)

    def scores(self, features: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """[B, T, 2] scores on each request's scale (0 = hard negative, 1 = forget pair)."""
        _, _, _, _, _, _, neg, gap, ut = self._concat()
        z = (self.raw(features, instruction) - neg) / gap
        if any(u is not None for u in self.ut):
            z = torch.stack([z[..., 0], z[..., 1] + instruction.float() @ ut], -1)
        return z

    # -- state ---------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(len(self.names)):
            for key in ("wv", "bv", "wt", "bt", "levels"):
                out[f"concept.{i}.{key}"] = getattr(self, key)[i]
            if self.ut[i] is not None:
                out[f"concept.{i}.ut"] = self.ut[i]
        return out

    def load(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        self.__init__(self.project)
        for i, name in enumerate(names):
            self.add(name, *(tensors[f"concept.{i}.{k}"] for k in ("wv", "bv", "wt", "bt", "levels")))
            self.ut[i] = tensors.get(f"concept.{i}.ut")
