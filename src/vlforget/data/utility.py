"""General benchmarks for S (`--utility PATH`): multiple-choice questions on images.

S is the model's accuracy on general questions no request targets, relative to the
zero-shot model's accuracy on the same questions. Three formats, told apart by the file:

- **MMBench-style TSV** (`.tsv`): columns `question`, `A`..`E` (the options present),
  `answer` (a letter), `image` (base64); optional `hint`, `index`. Rows without an
  answer (MMBench's test split) are skipped: they cannot be scored.
- **ScienceQA-style JSON** (`problems.json`): an object id -> `{question, choices,
  answer (index), image, split}`; the image is looked for at `<folder>/<split>/<id>/<image>`,
  `<folder>/images/<split>/<id>/<image>` and `<folder>/<id>/<image>`. Problems without
  an image are skipped (every pair needs one).
- **LLaVA-style JSON**: a list of `{id, image, conversations: [{from: human, value},
  {from: gpt, value}]}`; the human turn holds the question with lettered options
  ("A. ..." lines), the gpt turn the letter. Images are relative to the file's folder
  (or `image_folder`).

Each question becomes a `Sample` whose instruction is LLaVA's multiple-choice prompt
(`evaluation/choices.py`), whose answer is the letter and whose `meta["options"]` maps
letters to option texts; the runner scores it with `choices.predicted_choice`.
An unknown or malformed file is a ValueError naming it.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
from pathlib import Path

from vlforget.data.loaders._common import ImageCache, load_image_bytes
from vlforget.types import Sample

LETTERS = "ABCDEFGH"
_OPTION_LINE = re.compile(r"^\s*\(?([A-H])[.)]\s+(.+?)\s*$")


def choice_prompt(question: str, options: dict[str, str], hint: str | None = None) -> str:
    """LLaVA's multiple-choice evaluation prompt: hint, question, lettered options, instruction."""
    lines = ([hint.strip()] if hint and hint.strip() else []) + [question.strip()]
    lines += [f"{letter}. {text}" for letter, text in options.items()]
    lines.append("Answer with the option's letter from the given choices directly.")
    return "\n".join(lines)


def _sample(image, question: str, options: dict[str, str], answer: str, source: str, hint: str | None = None,
            **meta) -> Sample:
    if answer not in options:
        raise ValueError(f"{source}: answer {answer!r} is not one of the options {', '.join(options)}")
    return Sample(image, choice_prompt(question, options, hint), answer, "multiple_choice",
                  {"options": options, "split": "utility", "utility_source": source, **meta})


def read_mmbench_tsv(path: Path, limit: int | None = None) -> list[Sample]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = set(reader.fieldnames or [])
        missing = {"question", "A", "B", "answer", "image"} - columns
        if missing:
            raise ValueError(f"{path}: not an MMBench-style TSV (missing columns {', '.join(sorted(missing))})")
        out = []
        for n, row in enumerate(reader):
            answer = (row.get("answer") or "").strip().upper()
            if not answer:
                continue
            options = {k: row[k].strip() for k in LETTERS if (row.get(k) or "").strip() and row[k] != "nan"}
            where = f"{path} row {n + 2}"
            try:
                blob = base64.b64decode(row["image"], validate=False)
            except ValueError as error:
                raise ValueError(f"{where}: image is not base64: {error}") from error
            hint = row.get("hint") if row.get("hint") not in (None, "", "nan") else None
            out.append(_sample(load_image_bytes(blob, where), row["question"], options, answer, "mmbench", hint,
                               index=row.get("index")))
            if limit and len(out) >= limit:
                break
    return out


def read_scienceqa(path: Path, limit: int | None = None) -> list[Sample]:
    data = json.loads(path.read_text(encoding="utf-8"))
    cache, out = ImageCache(), []
    for pid, problem in data.items():
        if not isinstance(problem, dict) or "choices" not in problem or "answer" not in problem:
            raise ValueError(f"{path}: problem {pid!r} lacks 'choices' / 'answer' (not ScienceQA-style)")
        if not problem.get("image"):
            continue
        split = problem.get("split", "")
        candidates = [path.parent / split / pid / problem["image"], path.parent / "images" / split / pid / problem["image"],
                      path.parent / pid / problem["image"]]
        image_path = next((c for c in candidates if c.is_file()), candidates[0])
        options = dict(zip(LETTERS, [str(c) for c in problem["choices"]]))
        answer = LETTERS[int(problem["answer"])]
        out.append(_sample(cache.file(image_path), problem["question"], options, answer, "scienceqa",
                           problem.get("hint") or None, index=pid))
        if limit and len(out) >= limit:
            break
    return out


def read_llava_choices(path: Path, limit: int | None = None, image_folder: Path | None = None) -> list[Sample]:
    data = json.loads(path.read_text(encoding="utf-8"))
    cache, out = ImageCache(), []
    root = image_folder or path.parent
    for n, record in enumerate(data):
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not turns or len(turns) < 2 or not record.get("image"):
            raise ValueError(f"{path}: record #{n + 1} needs 'image' and a human/gpt 'conversations' pair")
        lines = str(turns[0]["value"]).replace("<image>", "").strip().splitlines()
        options = {m.group(1): m.group(2) for m in map(_OPTION_LINE.match, lines) if m}
        question = "\n".join(line for line in lines if not _OPTION_LINE.match(line)
                             and not line.lower().startswith("answer with the option"))
        if not options:
            raise ValueError(f"{path}: record #{n + 1} has no lettered options ('A. ...' lines)")
        answer = str(turns[1]["value"]).strip().rstrip(".").strip("()").upper()[:1]
        out.append(_sample(cache.file(root / record["image"]), question, options, answer, "llava",
                           index=record.get("id")))
        if limit and len(out) >= limit:
            break
    return out


def load_utility(path: str | Path, limit: int | None = None) -> list[Sample]:
    """The multiple-choice questions of a general benchmark file (format from its content)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"utility file not found: {path}")
    if path.suffix.lower() == ".tsv":
        samples = read_mmbench_tsv(path, limit)
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"could not parse {path}: {error}") from error
        if isinstance(data, dict):
            samples = read_scienceqa(path, limit)
        elif isinstance(data, list):
            samples = read_llava_choices(path, limit)
        else:
            raise ValueError(f"{path}: unknown utility format (a JSON object of ScienceQA problems or a "
                             "LLaVA-style list was expected)")
    else:
        raise ValueError(f"{path}: unknown utility format {path.suffix!r}; use an MMBench-style .tsv, a "
                         "ScienceQA-style problems .json or a LLaVA-style .json")
    if not samples:
        raise ValueError(f"{path}: no scorable multiple-choice question with an image")
    return samples


class WithUtility:
    """A request sequence (built-in or loaded) whose utility split is a general benchmark file;
    results.json records the file's name, format and size under `benchmark_config.utility`."""

    def __init__(self, sequence, samples: list[Sample], path: str | Path):
        from dataclasses import asdict, is_dataclass

        self._sequence, self._samples = sequence, samples
        self.version = sequence.version
        config = asdict(sequence.config) if is_dataclass(sequence.config) else dict(sequence.config)
        self.config = {**config, "utility": {"file": Path(path).name, "format": samples[0].meta["utility_source"],
                                            "questions": len(samples)}}
        self.method_defaults = getattr(sequence, "method_defaults", {})

    def requests(self):
        return self._sequence.requests()

    def utility_split(self) -> list[Sample]:
        return self._samples

    def general_pool(self, n: int, tag: str) -> list[Sample]:
        """The wrapped sequence's general pairs: a utility file replaces what S is measured on,
        not what methods fit on (without this, --utility would hide the pool from the runner)."""
        return self._sequence.general_pool(n, tag)
