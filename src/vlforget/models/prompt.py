"""Prompt templates: how an instruction and one image become the prompt's token ids.

A template is a string with slots:

    {bos}          the tokenizer's begin-of-sequence token (dropped when it has none)
    {sep}          the tokenizer's sep token (an error when it has none)
    {image}        the model's image token, repeated `n_image_tokens` times
    {instruction}  the instruction's tokens

and literal text between them, tokenized piece by piece (without special tokens added)
the way the checkpoint's tokenizer splits it; chat markers such as `<|im_start|>` must be
single tokens of that tokenizer, which `PromptTemplate` checks once, up front. The answer
follows the prompt, then the tokenizer's end-of-sequence token.

The built-in model is trained on `BUILTIN` (no chat text: bos, the question, the image,
then a sep token). A real checkpoint answers best in the chat format it was tuned on:
`FAMILY_TEMPLATES` holds each supported family's published single-image, single-turn
format (model cards / chat templates of llava-hf/llava-1.5, llava-v1.6-mistral,
Qwen2-VL-Instruct, Idefics3 / SmolVLM without image splitting). A checkpoint tuned on
another format sets `prompt_template` in its `vlforget.json`.
"""

from __future__ import annotations

import re
from typing import Sequence

BUILTIN = "{bos}{instruction}{image}{sep}"

_QWEN = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
         "<|vision_start|>{image}<|vision_end|>{instruction}<|im_end|>\n<|im_start|>assistant\n")
FAMILY_TEMPLATES = {
    "llava": "{bos}USER: {image}\n{instruction} ASSISTANT:",
    "llava_next": "{bos}[INST] {image}\n{instruction} [/INST]",
    "qwen2_vl": _QWEN,
    "qwen2_5_vl": _QWEN,
    "idefics3": ("{bos}<|im_start|>User:<fake_token_around_image><global-img>{image}<fake_token_around_image>"
                 "{instruction}<end_of_utterance>\nAssistant:"),
}

SLOTS = ("{bos}", "{sep}", "{image}", "{instruction}")
_SLOT_SPLIT = re.compile(r"(\{bos\}|\{sep\}|\{image\}|\{instruction\})")
_MARKER = re.compile(r"<\|?[A-Za-z_][\w\-]*\|?>")  # <s>, <|im_start|>, <end_of_utterance>, ...


class PromptTemplate:
    """A template compiled against one tokenizer: `ids(instruction_ids)` gives the prompt."""

    def __init__(self, template: str, tokenizer, image_token_id: int, n_image_tokens: int):
        if template.count("{image}") != 1 or template.count("{instruction}") != 1:
            raise ValueError(f"prompt template {template!r} must contain {{image}} and {{instruction}} exactly once")
        stray = re.findall(r"\{[a-z_]+\}", _SLOT_SPLIT.sub("", template))
        if stray:
            raise ValueError(f"prompt template {template!r} has unknown slot(s) {', '.join(stray)}; "
                             f"slots are {', '.join(SLOTS)}")
        self.template = template
        # pieces: token-id lists, or the strings "{image}" / "{instruction}" filled per prompt
        self.pieces: list[list[int] | str] = []
        for part in _SLOT_SPLIT.split(template):
            if part in ("{image}", "{instruction}"):
                self.pieces.append(part)
            elif part == "{bos}":
                if tokenizer.bos_token_id is not None:  # Qwen has none: nothing to add
                    self.pieces.append([tokenizer.bos_token_id])
            elif part == "{sep}":
                if tokenizer.sep_token_id is None:
                    raise ValueError(f"prompt template {template!r} uses {{sep}} but the tokenizer has no sep token; "
                                     "use the family's chat template (see docs/models.md)")
                self.pieces.append([tokenizer.sep_token_id])
            elif part:
                self.pieces.append(self._text_ids(part, tokenizer, template))
        self.image_ids = [image_token_id] * n_image_tokens

    @staticmethod
    def _text_ids(text: str, tokenizer, template: str) -> list[int]:
        for marker in _MARKER.findall(text):
            ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ValueError(f"prompt template marker {marker!r} is not one token of this tokenizer "
                                 f"(it gives {ids}); set prompt_template in vlforget.json to the checkpoint's "
                                 f"own chat format (template: {template!r})")
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def ids(self, instruction_ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for piece in self.pieces:
            out += self.image_ids if piece == "{image}" else list(instruction_ids) if piece == "{instruction}" \
                else piece
        return out
