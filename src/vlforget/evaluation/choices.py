"""Multiple-choice answers: which option a free-form response picked.

Utility benchmarks (MMBench, ScienceQA, LLaVA-style multiple-choice JSON) ask the model
to answer with an option's letter, as LLaVA's evaluation prompt does; models still write
"B. a cat", "(B)", "The answer is B" or just the option's text. A response picks:
1. the letter it starts with ("B", "B.", "(B)", "B) ..."), else
2. the letter after "answer is" / "answer:", else
3. the one option whose text it contains (normalised, whole words), else nothing (wrong).
"""

from __future__ import annotations

import re

from vlforget.text import normalise_answer

_LEADING = re.compile(r"^\s*\(?([A-Z])\)?(?:[.):,]|\s|$)")
_STATED = re.compile(r"answer(?:\s+is|:)\s*\(?([A-Z])\)?(?![a-z])", re.IGNORECASE)


def predicted_choice(response: str, options: dict[str, str]) -> str | None:
    text = response or ""
    for pattern in (_LEADING, _STATED):
        match = pattern.search(text)
        if match and match.group(1).upper() in options:
            return match.group(1).upper()
    said = normalise_answer(text)
    hits = [letter for letter, option in options.items()
            if normalise_answer(option) and re.search(rf"(?<![a-z0-9]){re.escape(normalise_answer(option))}(?![a-z0-9])",
                                                      said)]
    return hits[0] if len(hits) == 1 else None

