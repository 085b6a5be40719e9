"""Prompt templates: how an instruction and one image become the prompt's token ids.

A template is a string with slots:

    {bos}          the tokenizer's begin-of-sequence token (dropped when it has none)
    {sep}          the tokenizer's sep token (an error when it has none)
    {image}        the model's image token, repeated `n_image_tokens` times
    {instruction}  the instruction's tokens

and literal text between them. `text_ids(instruction)` renders the whole prompt as text
(the image slot as the model's image token, once) and tokenizes it in one call, as the
family's processor does after `apply_chat_template`, then repeats the image token
`n_image_tokens` times (as the processor expands it). Tokenizing the pieces separately
is not the same for SentencePiece tokenizers: each piece gets its own leading `▁`
("\n" alone becomes "▁", "<0x0A>"), which is how LLaVA prompts used to carry two
tokens the checkpoint's processor does not make. `ids(instruction_ids)` (pieces around
pre-tokenized instructions) stays for the built-in layout, whose word-level tokenizer
splits both ways alike. Chat markers such as `<|im_start|>` must be single tokens of
the tokenizer, which `PromptTemplate` checks once, up front. The answer follows the
prompt, then the tokenizer's end-of-sequence token.

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
# Idefics3 ships with two tokenizers: SmolVLM's (ChatML markers, above) and Idefics3-8B's
# Llama-3 one, whose turns start at its bos (<|begin_of_text|>) with no <|im_start|>.
IDEFICS3_LLAMA3 = ("{bos}User:<fake_token_around_image><global-img>{image}<fake_token_around_image>"
                   "{instruction}<end_of_utterance>\nAssistant:")


def family_template(model_type: str, tokenizer=None) -> str:
    """The family's chat format for this checkpoint's tokenizer."""
    if model_type == "idefics3" and tokenizer is not None and "<|im_start|>" not in tokenizer.get_vocab():
        return IDEFICS3_LLAMA3
    return FAMILY_TEMPLATES[model_type]

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
        self.tokenizer, self.image_token_id = tokenizer, image_token_id
        image_text = tokenizer.convert_ids_to_tokens(image_token_id)
        # A leading {bos} is an id in front, as `tokenizer(text)` adds it: rendered as text it
        # would make the chat text a second segment, which Metaspace tokenizers do not prefix.
        body = template
        self._lead = []
        if template.startswith("{bos}"):
            body = template[len("{bos}"):]
            self._lead = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        slots = {"{bos}": tokenizer.bos_token or "", "{sep}": tokenizer.sep_token or "", "{image}": image_text}
        self._text = "".join(slots.get(part, part) for part in _SLOT_SPLIT.split(body))
        self._image_text = image_text

    @staticmethod
    def _text_ids(text: str, tokenizer, template: str) -> list[int]:
        for marker in _MARKER.findall(text):
            ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ValueError(f"prompt template marker {marker!r} is not one token of this tokenizer "
                                 f"(it gives {ids}); set prompt_template in vlforget.json to the checkpoint's "
                                 f"own chat format (template: {template!r})")
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_ids(self, instruction: str) -> list[int]:
        """The prompt's token ids for an instruction text, tokenized whole (see the module doc)."""
        text = self._text.replace("{instruction}", instruction.replace(self._image_text, " "))
        ids = self._lead + self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"prompt template {self.template!r}: the image token {self._image_text!r} did not come "
                             "out of the tokenizer as one token")
        at = ids.index(self.image_token_id)
        return ids[:at] + self.image_ids + ids[at + 1:]

    def ids(self, instruction_ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for piece in self.pieces:
            out += self.image_ids if piece == "{image}" else list(instruction_ids) if piece == "{instruction}" \
                else piece
        return out
