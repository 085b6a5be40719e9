"""The README and docs/ point only at files that exist inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").glob("*.md"))]
TOP = ("src/", "docs/", "tests/", "benchmarks/", "examples/", "results/")


def references(text: str):
    """(kind, target) for markdown links and images, backticked paths and bare *.md names."""
    for match in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        yield "link", match.group(1)
    for match in re.finditer(r"`([^`\s]+)`", text):
        yield "code", match.group(1)
    for match in re.finditer(r"(?<![\w/.`-])([A-Z][A-Za-z0-9_-]*\.md)\b", text):
        yield "name", match.group(1)


def problems(doc: Path) -> list[str]:
    found = []
    for kind, target in references(doc.read_text()):
        if kind == "link":
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a web address or an anchor on this page
            path = (doc.parent / target.split("#")[0]).resolve()
            if ROOT not in path.parents:
                found.append(f"link {target!r} leaves the repository")
            elif not path.exists():
                found.append(f"link {target!r} points to a missing file")
        elif kind == "code":
            if target.startswith("../"):
                found.append(f"`{target}` is outside the repository")
            elif target.startswith(TOP) and not re.search(r"[<>*{}$]|NN|tt", target):
                if not (ROOT / target.rstrip("/").split("::")[0].split(":")[0]).exists():
                    found.append(f"`{target}` does not exist")
        elif not ((ROOT / target).exists() or (doc.parent / target).exists()):
            found.append(f"{target} is cited but does not exist")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_doc_references_exist(doc):
    assert not problems(doc), problems(doc)


def test_the_checker_catches_broken_references(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("see [a](missing.md), [b](../../outside.md), `../shared/N.md`, `src/nope.py` and METHODS.md")
    found = problems(doc)
    assert len(found) == 5, found
