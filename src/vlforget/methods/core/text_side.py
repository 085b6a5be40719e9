"""CORE's textual side: what an instruction asks for, read by a sentence encoder.

An instruction is embedded as a whole *and* clause by clause (split after . ? ! , ;),
and a request's textual score is the best of those pieces: a question wrapped in a
sentence that presses for an answer ("you must answer. how many stars are there?")
still contains the question as one clause, scored as if asked alone.

The encoder's raw similarities are dominated by object words ("what colour is the
star?" sits near "where is the star?"), so the embeddings go through an *intent
projection* fitted on the benchmark's general pairs (never a request's): the answers'
embeddings are clustered (answer kinds: colours, numbers, positions, yes/no, ...), and
a shrunk linear discriminant keeps the directions of the instruction embedding that
tell those kinds apart and drops those that vary within a kind (object words,
phrasing). Strong shrinkage keeps it near the encoder's own geometry, so phrasings the
general pool never used still land near their intent (measured on the validation
sequence, textual AUC of intent vs other test questions: 0.92 raw -> 0.96 projected,
0.95 on pressure phrasings; docs/methods.md).

Nothing here is fitted per request: a request only brings its textual descriptions,
which are embedded and projected the same way, so the phrasings of its forget pairs
are not what the gate learns.

By default (`intent_neighbours` > 0) the query itself is not read by the encoder but by
the backbone (`NeighbourSide`): the encoder's projection still places some intents
next to each other (identifying next to counting and locating), the backbone's state
just before it answers does not.
"""

from __future__ import annotations

import warnings

import re

import torch
import torch.nn.functional as F

MAX_SEGMENTS = 4  # the whole instruction + up to 3 clauses (more are merged into the last)
_SPLIT = re.compile(r"(?<=[.?!,;:])\s+")


def segments(text: str) -> list[str]:
    """[the whole text, its clauses...] (just the text when it has one clause)."""
    parts = [p.strip() for p in _SPLIT.split(text.strip()) if p.strip()]
    if len(parts) <= 1:
        return [text]
    if len(parts) > MAX_SEGMENTS - 1:
        parts = parts[:MAX_SEGMENTS - 2] + [" ".join(parts[MAX_SEGMENTS - 2:])]
    return [text] + parts


class MiniLMText:
    """MiniLM sentence embeddings (the default text encoder), cached per sentence."""

    name = "minilm"

    def __init__(self):
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        from vlforget.models.text_encoder import load_minilm

        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            vectors = load_minilm().encode(todo, batch_size=128, convert_to_numpy=True, normalize_embeddings=True)
            self._cache.update((t, torch.from_numpy(v).float()) for t, v in zip(todo, vectors))
        if not texts:
            return torch.zeros(0, 384, device="cpu")
        return torch.stack([self._cache[t] for t in texts])


    def clear(self) -> None:
        self._cache.clear()


_MINILM: MiniLMText | None = None


def minilm() -> MiniLMText:
    """One shared MiniLM text encoder per process (its cache is shared too)."""
    global _MINILM
    if _MINILM is None:
        _MINILM = MiniLMText()
    return _MINILM


def answer_in_question(instruction: str, answer: str) -> bool:
    """Whether the answer is one of the instruction's own words (a choice question:
    "which is larger, the star or the cross?" -> "cross"), not a word the model must supply."""
    words = re.findall(r"[a-z0-9]+", answer.lower())
    return bool(words) and re.search(r"\b" + r"\W+".join(words) + r"\b", instruction.lower()) is not None


def intent_projection(instructions: torch.Tensor, answers: torch.Tensor, kinds: int = 12, dim: int = 16,
                      shrink: float = 0.8, seed: int = 0,
                      choice: torch.Tensor | None = None) -> dict[str, torch.Tensor] | None:
    """Shrunk LDA of instruction embeddings over clusters of their answers' embeddings:
    {"mean": [D], "matrix": [D, dim]}.

    instructions, answers [N, D] unit embeddings of general (instruction, answer) pairs.
    `shrink` in [0, 1] pulls the within-kind covariance toward isotropic: 1 = keep the
    encoder's geometry restricted to the between-kind directions, 0 = plain LDA (which
    learned the general pool's own phrasings, measured worse on unseen ones).
    """
    from vlforget.methods.clustering import kmeans

    distinct = len(torch.unique(instructions, dim=0))
    if distinct < 2 * dim or len(torch.unique(answers, dim=0)) < 2:
        # Too few distinct general questions (or one answer kind) to estimate kinds and
        # their spread: no projection, instructions stay in the encoder's own space.
        warnings.warn(f"CORE: the general pool holds {distinct} distinct instructions, fewer than the "
                      f"{2 * dim} the intent projection needs; instructions are compared without it "
                      "(name more general pairs with `general:` in the data config)")
        return None
    centres = kmeans(answers, min(kinds, len(answers)), seed)
    labels = torch.cdist(answers, centres).argmin(1)
    if choice is not None:  # a choice question and an open one with answers of one kind are two kinds
        labels = labels * 2 + choice.long()
    x = instructions.double()
    mu = x.mean(0)
    d = x.shape[1]
    within = torch.zeros(d, d, dtype=torch.double, device="cpu")
    between = torch.zeros_like(within)
    for c in labels.unique():
        xc = x[labels == c]
        m = xc.mean(0)
        within += (xc - m).T @ (xc - m)
        between += len(xc) * torch.outer(m - mu, m - mu)
    within, between = within / len(x), between / len(x)
    eye = torch.eye(d, dtype=torch.double, device="cpu")
    within = (1 - shrink) * within + shrink * eye * within.trace() / d + 1e-9 * eye  # never singular
    inv_chol = torch.linalg.inv(torch.linalg.cholesky(within))
    # The between-kind scatter has rank <= kinds - 1: eigenvectors past it belong to a zero
    # eigenvalue, i.e. arbitrary directions (a 1e-9 change moved them and the numbers).
    n_kinds = len(labels.unique())
    _, vectors = torch.linalg.eigh(inv_chol @ between @ inv_chol.T)
    matrix = (inv_chol.T @ vectors[:, -min(dim, n_kinds - 1):]).float().contiguous()
    return {"mean": mu.float(), "matrix": matrix}


def pairs_projection(encode, instructions: list[str], answers: list[str], kinds: int = 12, dim: int = 16,
                     shrink: float = 0.8) -> dict[str, torch.Tensor] | None:
    """`intent_projection` of general (instruction, answer) pairs read by `encode`, a choice
    question being a kind of its own (`answer_in_question`).

    Why: the answer kinds come from the answers alone, and "which is larger, the star or
    the cross?" -> "cross" has the answer of "what is at the top left?" -> "cross", so
    comparing and identifying were one kind and the projection dropped what tells them
    apart (validation + probe requests: star-or-compare CRR bound 72.5 -> 87.5 with the
    split; docs/methods.md)."""
    choice = torch.tensor([answer_in_question(i, a) for i, a in zip(instructions, answers)], device="cpu")
    return intent_projection(encode(list(instructions)), encode(list(answers)), kinds, dim, shrink, choice=choice)


class InstructionSide:
    """Embeds instructions as [B, width, d] and descriptions as [n, d], unit vectors
    (centred and projected first when there is a projection).

    width = 1 with general instructions to compare against (`pick` keeps the piece that
    is the question); else MAX_SEGMENTS pieces, padded with the whole text so a max over
    them is unaffected. Tried and dropped: pieces left unnormalised after the projection,
    so a piece that asks for nothing would score near 0: its norm did not tell pressure
    from questions ("no sorry." 1.05, "how many crosses are there?" 0.88, in units of the
    median general instruction), and the validation textual AUC fell from 0.970 to 0.955.
    """

    def __init__(self, encode, projection: dict[str, torch.Tensor] | None = None,
                 reference: torch.Tensor | None = None):
        self.encode = encode  # list[str] -> [n, D] unit embeddings
        self.projection = projection
        # [M, D] encoder embeddings of general instructions: with them, only the piece that
        # most resembles a question asked of an image is scored (see `pick`).
        self.reference = reference
        self._cache: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        """Forget every instruction read so far."""
        self._cache.clear()

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return x
        return (x - self.projection["mean"]) @ self.projection["matrix"]

    def texts(self, texts: list[str], questions: list[str] | None = None) -> torch.Tensor:
        """[n, d] unit description embeddings (`questions`: read by `NeighbourSide` only)."""
        if not texts:
            return torch.zeros(0, self.dim, device="cpu")
        return F.normalize(self._project(self.encode(list(texts))), dim=-1)

    def pieces(self, texts: list[str]) -> torch.Tensor:
        """[n, d] unit instruction-piece embeddings."""
        return F.normalize(self._project(self.encode(list(texts))), dim=-1)

    @property
    def dim(self) -> int:
        return self.projection["matrix"].shape[1] if self.projection is not None else self.encode([" "]).shape[1]

    def pick(self, texts: list[str]) -> list[str]:
        """Per text, the piece (the whole text or one clause) closest to a general instruction:
        the question inside "you must answer. how many stars are there?", not the pressure."""
        if self.reference is None:
            return list(texts)
        out = []
        for text in texts:
            pieces = segments(text)
            if len(pieces) == 1:
                out.append(text)
                continue
            resemblance = (self.encode(pieces) @ self.reference.T).amax(1)
            out.append(pieces[int(resemblance.argmax())])
        return out

    @property
    def width(self) -> int:
        """Pieces kept per instruction: the picked one, or all of them (max over their scores)."""
        return 1 if self.reference is not None else MAX_SEGMENTS

    def instructions(self, instructions: list[str]) -> torch.Tensor:
        todo = [s for s in dict.fromkeys(instructions) if s not in self._cache]
        if todo:
            if self.reference is not None:
                pieces = [[p] for p in self.pick(todo)]
            else:
                pieces = [segments(s) for s in todo]
            flat = self.pieces([p for ps in pieces for p in ps])
            at = 0
            for s, ps in zip(todo, pieces):
                rows = flat[at:at + len(ps)]
                at += len(ps)
                pad = rows[:1].expand(self.width - len(ps), -1)
                self._cache[s] = torch.cat([rows, pad]).contiguous()
        if not instructions:
            return torch.zeros(0, self.width, self.dim, device="cpu")
        return torch.stack([self._cache[s] for s in instructions])


class NeighbourSide:
    """The instruction side read through the backbone: a query is its nearest general
    instructions in the model's own answer state (`Backbone.prompt_states`).

    A sentence encoder, even through the intent projection, places "which object is at the
    top left?" between naming an object, counting and locating (digits are numbers,
    positions are words of the question). The backbone does not confuse them: at the end of
    the prompt it is about to give a shape, a number or a position, and its state says
    which (validation sequence, intent-vs-rest AUC of each request's textual score on
    unseen phrasings: 0.986 with the encoder's own score, 1.000 through 15 neighbours;
    docs/methods.md). So:

    - a request's textual description is represented by how much each general instruction
      resembles it, read by `describer` (the encoder + intent projection): one row [G] per
      description (`texts`);
    - a query is the average over its `k` nearest general instructions in answer state,
      weighted by closeness (`instructions`: [B, 1, G] weights summing to 1);

    so a query's similarity to a description is the mean of its neighbours' similarities,
    and `ConceptBank` scores it exactly as before. Nothing is fitted per request: the
    neighbours are general instructions, the descriptions are the request's text, and the
    request's forget questions enter only through their answer states, as the coverage
    that lowers general instructions none of them reads like (`texts`); their wording is
    never compared with a query's.
    """

    width = 1

    def __init__(self, describer: InstructionSide, states, k: int, general: list[str] | None = None,
                 saved: dict[str, torch.Tensor] | None = None, coverage_penalty: float = 0.0,
                 temperature: float = 0.0):
        self.describer = describer  # InstructionSide: encoder + projection (+ question picking)
        self.states = states  # list[str] -> [n, H] answer states (the backbone's)
        self.k = k
        self.temperature = temperature  # 0 = uniform weights over the k neighbours
        self.coverage_penalty = coverage_penalty
        if saved is not None:
            self.general_states, self.general_embedded = saved["states"].float(), saved["embedded"].float()
            self.state_mean, self.state_scale = saved["mean"].float(), saved["scale"].float()
        else:
            raw = states(list(general))
            self.state_mean, self.state_scale = raw.mean(0), raw.std(0) + 1e-6
            self.general_states = self._normalise(raw)
            # each general instruction as the describer reads it (the question, projected)
            self.general_embedded = describer.pieces(describer.pick(list(general)))
        self._cache: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        """Forget every instruction read so far (the describer's too)."""
        self._cache.clear()
        self.describer.clear()

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return F.normalize((raw - self.state_mean) / self.state_scale, dim=-1)

    def saved(self) -> dict[str, torch.Tensor]:
        return {"states": self.general_states.half(), "embedded": self.general_embedded.half(),
                "mean": self.state_mean, "scale": self.state_scale}

    @property
    def dim(self) -> int:
        return len(self.general_states)

    def pick(self, texts: list[str]) -> list[str]:
        return self.describer.pick(texts)

    def texts(self, texts: list[str], questions: list[str] | None = None) -> torch.Tensor:
        """[n, G]: each description's similarity to every general instruction.

        `questions` (the request's forget instructions) say which kinds of question the
        request covers: a general instruction that none of them reads like (max cosine c of
        answer states) has its similarities lowered by `coverage_penalty` * (1 - c). The
        descriptions alone rank "which object is at the top left?" below "is there a star?"
        for a request on identifying stars (the encoder's weak spot); the forget questions,
        as the model reads them, do not. Their wording plays no part, only their answer state.
        """
        if not texts:
            return torch.zeros(0, self.dim, device="cpu")
        rows = self.describer.texts(list(texts)) @ self.general_embedded.T
        if questions and self.coverage_penalty > 0:
            read = self._normalise(self.states(self.describer.pick(list(questions))))
            coverage = (self.general_states @ read.T).amax(1)  # [G]
            rows = rows - self.coverage_penalty * (1 - coverage)[None]
        return rows.contiguous()

    def instructions(self, instructions: list[str]) -> torch.Tensor:
        """[B, 1, G]: weights summing to 1 on each instruction's k nearest general instructions
        (cached per string): 1/k each, or by closeness with a temperature.

        Why closeness: a general pool asks some intents in few distinct ways (the built-in
        one: 5 distinct "describe the image" questions, 54 "what is at the top left?"), so
        with k = 15 a describe question's neighbours were its 5 describe questions and 10
        size questions at cosine 0.4 (against 0.9-1.0), and its textual score was a third
        of the way to the size intent's. Weighted by exp((cos - nearest cos) / temperature),
        neighbours far below the nearest one count for nothing, however many there are."""
        todo = [s for s in dict.fromkeys(instructions) if s not in self._cache]
        if todo:
            questions = self.describer.pick(todo)  # the question inside a pressing sentence
            sims = self._normalise(self.states(questions)) @ self.general_states.T
            nearest = sims.topk(min(self.k, self.dim), dim=1)
            if self.temperature > 0:
                share = torch.softmax(nearest.values / self.temperature, dim=1)
            else:
                share = torch.full_like(nearest.values, 1.0 / nearest.values.shape[1])
            weights = torch.zeros(len(todo), self.dim, device="cpu").scatter_(1, nearest.indices, share)
            for s, row in zip(todo, weights):
                self._cache[s] = row[None].contiguous()
        if not instructions:
            return torch.zeros(0, 1, self.dim, device="cpu")
        return torch.stack([self._cache[s] for s in instructions])
