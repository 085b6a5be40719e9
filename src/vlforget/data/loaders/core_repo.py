"""Reading CORE's own sentences from the user's copy of CORE's repository.

CORE's protocol refuses with per-category refusal templates and asks from fixed prompt
pools (`minigpt4/datasets/datasets/prompts.py`), and its CRR counts a response as a
refusal by a list of regular expressions (`metrics/refusal_patterns.py`). Those files are
CORE's, so vlforget never ships them: given the path of a local checkout (GitHub
`Jin0316/CORE`; the repository root or its `CORE_2026_CVPR/` folder), this module reads
the lists out of them. The files are parsed, never imported or executed: only top-level
`NAME = [string, ...]` assignments are read (`ast.literal_eval`).

Without a checkout vlforget uses its own sentences (`refusals.py`, `core_release.py`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PROMPTS_FILE = "minigpt4/datasets/datasets/prompts.py"
PATTERNS_FILE = "metrics/refusal_patterns.py"
CATEGORY_LISTS = ("Sex", "Violence", "IllegalActivity", "Weapon", "Privacy", "HateSpeech")


def code_folder(repo: str | Path) -> Path:
    """The folder holding CORE's code: `repo/CORE_2026_CVPR` or `repo` itself."""
    root = Path(repo).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"CORE repository not found: {root}")
    for candidate in (root / "CORE_2026_CVPR", root):
        if (candidate / PROMPTS_FILE).is_file() or (candidate / PATTERNS_FILE).is_file():
            return candidate
    raise ValueError(f"{root} does not look like a copy of CORE's repository: neither CORE_2026_CVPR/{PROMPTS_FILE} "
                     f"nor {PROMPTS_FILE} is there")


def string_lists(path: Path) -> dict[str, list[str]]:
    """Top-level `NAME = ["...", ...]` assignments of a Python file, read without running it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise ValueError(f"could not parse {path}: {error}") from error
    out: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:  # not a literal (e.g. a dict of names): skip
                continue
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                out[node.targets[0].id] = value
    return out


@dataclass(frozen=True)
class CoreSentences:
    """What a CORE checkout provides; empty fields where its files lack them."""

    refusals: dict[str, list[str]]  # safety category -> refusal templates
    classification_refusals: list[str]
    classification_prompts: list[str]
    open_prompts: list[str]  # CORE's `unharm_random_texts`: benign open prompts on images


def read_core_sentences(repo: str | Path) -> CoreSentences:
    path = code_folder(repo) / PROMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CORE's prompt file not found: {path}")
    lists = string_lists(path)
    missing = [name for name in CATEGORY_LISTS if name not in lists]
    if missing:
        raise ValueError(f"{path} lacks the refusal lists {', '.join(missing)}")
    return CoreSentences(refusals={name: lists[name] for name in CATEGORY_LISTS},
                         classification_refusals=lists.get("classification_refusals", []),
                         classification_prompts=lists.get("classification_prompts", []),
                         open_prompts=lists.get("unharm_random_texts", []))


def read_refusal_patterns(repo: str | Path) -> list[str]:
    """CORE's CRR refusal regular expressions (matched case-insensitively, as its code does)."""
    path = code_folder(repo) / PATTERNS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CORE's refusal patterns not found: {path}")
    patterns = string_lists(path).get("REFUSAL_PATTERNS")
    if not patterns:
        raise ValueError(f"{path} has no REFUSAL_PATTERNS list")
    return patterns
