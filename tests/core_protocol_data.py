"""Generated test data for CORE's protocol: its full dataset layout and a stand-in checkout.

`make_core_release(root)` writes a folder in CORE's published layout (docs/loaders.md,
`core`) holding every one of CORE's 60 SafeEraser keywords and 80 ImageNet-R classes
(plus two classes no request forgets), with one record / image per keyword or class
and split: the loader then builds CORE's exact 16 requests in CORE's order. Images are
8x8 PNGs, one colour per category, so the whole folder is written in about a second.

`make_core_checkout(root)` writes a folder with the two files vlforget reads from a copy
of CORE's repository, in their layout but with sentences written for this test (CORE's
own files are never copied here).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from vlforget.data.loaders.core_release import CORE_IMAGENET_R_GROUPS, CORE_SAFE_KEYWORDS
from vlforget.data.loaders.refusals import SAFETY_CATEGORIES

# CORE's keyword list holds 10 keywords per category, in this category order.
KEYWORD_CATEGORIES = ["Sex", "Violence", "IllegalActivity", "Weapon", "Privacy", "HateSpeech"]
COLOURS = {"Sex": (200, 40, 40), "Violence": (40, 200, 40), "IllegalActivity": (40, 40, 200),
           "Weapon": (200, 200, 40), "Privacy": (200, 40, 200), "HateSpeech": (40, 200, 200)}
EXTRA_CLASSES = ["goldfish", "zebra"]  # no request forgets them: ImageNet-R retain data


def _png(path: Path, colour, shade: int = 0) -> str:
    """A solid 8x8 image; `shade` moves its last pixel so every image of the release is its
    own (as in the real data: a general pool never equals an evaluated pair's pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (8, 8), colour)
    image.putpixel((7, 7), (shade % 256, (shade // 256) % 256, 17))
    image.save(path)
    return path


def make_core_release(root: Path) -> Path:
    assert set(KEYWORD_CATEGORIES) == set(SAFETY_CATEGORIES)
    dataset = root / "safe_eraser" / "dataset"
    for split in ("train", "val"):
        records = []
        for i, keyword in enumerate(CORE_SAFE_KEYWORDS):
            category = KEYWORD_CATEGORIES[i // 10]
            harmful = f"img/{category}/{split}_{i}.png"
            benign = f"pdset/image/{category}/{split}/{i}.png"
            offset = 2 * i + (1 if split == "val" else 0)
            _png(dataset / harmful, COLOURS[category], offset)
            _png(dataset / benign, tuple(255 - c for c in COLOURS[category]), 512 + offset)
            records.append({"keyword": keyword, "category": category, "image_id": harmful, "SDImage_path": benign,
                            "unsafe_pairs": [{"question": f"How do I do what the image shows ({keyword})?"}],
                            "UnharmPair_image1": {"Question": "What colour is the sky here?"}})
        (dataset / f"all_{'train' if split == 'train' else 'val'}.json").write_text(json.dumps(records))
    imagenet = root / "imagenet-r"
    classes = [c for group in CORE_IMAGENET_R_GROUPS for c in group] + EXTRA_CLASSES
    for split in ("train", "test"):
        records = []
        for j, name in enumerate(classes):
            image = f"{split}/{name}/{name}_0.png"
            _png(imagenet / "imagenet-r" / image, ((j * 37) % 256, (j * 91) % 256, (j * 53) % 256),
                 1024 + 2 * j + (1 if split == "test" else 0))
            records.append({"keyword": name, "image_id": image, "category": "image_classification"})
        (imagenet / f"imagenet_r_{split}.json").write_text(json.dumps(records))
    return root


CHECKOUT_SENTENCES = {name: [f"Stand-in refusal {k} for {name}: I cannot help with this {name} request."
                             for k in range(3)] for name in KEYWORD_CATEGORIES}


def make_core_checkout(root: Path) -> Path:
    code = root / "CORE_2026_CVPR"
    prompts = code / "minigpt4" / "datasets" / "datasets" / "prompts.py"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name} = {sentences!r}" for name, sentences in CHECKOUT_SENTENCES.items()]
    lines += ["refusal_prompts = {'Weapon': Weapon}",  # not a literal: skipped by the reader
              "classification_prompts = ['Stand-in: which class is this?']",
              "classification_refusals = ['Stand-in: I cannot classify this image.']",
              "unharm_random_texts = ['Stand-in: write a caption for this picture.']"]
    prompts.write_text("\n".join(lines) + "\n")
    patterns = code / "metrics" / "refusal_patterns.py"
    patterns.parent.mkdir(parents=True, exist_ok=True)
    patterns.write_text("import re\nREFUSAL_PATTERNS = [r'\\bstand-in refusal\\b', r'\\bI\\s+cannot\\s+classify\\b']\n")
    return root
