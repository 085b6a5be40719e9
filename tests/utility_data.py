"""Generated utility benchmark files in the three formats `--utility` reads (tests only).

Questions ask the colour of a plain 8x8 image; the built-in model answers colours, so
its zero-shot accuracy is above zero and S is defined.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
QUESTIONS = [(colour, "What colour is the image?", ["red", "green", "blue"]) for colour in COLOURS]


def _png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def make_mmbench_tsv(path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", "hint", "A", "B", "C", "answer", "image", "category"])
        for i, (colour, question, options) in enumerate(QUESTIONS):
            writer.writerow([i, question, "nan", *options, "ABC"[options.index(colour)],
                             base64.b64encode(_png_bytes(colour)).decode(), "colour"])
        writer.writerow([9, "unanswered test-split row", "nan", "x", "y", "z", "", "", "colour"])
    return path


def make_scienceqa(folder: Path) -> Path:
    problems = {}
    for i, (colour, question, options) in enumerate(QUESTIONS):
        pid = str(100 + i)
        (folder / "test" / pid).mkdir(parents=True, exist_ok=True)
        (folder / "test" / pid / "image.png").write_bytes(_png_bytes(colour))
        problems[pid] = {"question": question, "choices": options, "answer": options.index(colour),
                         "image": "image.png", "split": "test", "hint": ""}
    problems["999"] = {"question": "text only", "choices": ["a", "b"], "answer": 0, "image": None, "split": "test"}
    path = folder / "problems.json"
    path.write_text(json.dumps(problems))
    return path


def make_llava_choices(folder: Path) -> Path:
    records = []
    for i, (colour, question, options) in enumerate(QUESTIONS):
        (folder / f"{i}.png").write_bytes(_png_bytes(colour))
        lettered = "\n".join(f"{l}. {o}" for l, o in zip("ABC", options))
        records.append({"id": i, "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{question}\n{lettered}\nAnswer with the option's letter from "
                                       "the given choices directly."},
            {"from": "gpt", "value": "ABC"[options.index(colour)]}]})
    path = folder / "llava_mc.json"
    path.write_text(json.dumps(records))
    return path
