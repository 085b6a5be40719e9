"""vlforget's prompt token ids equal the family processor's on the same instruction.

Each family's transformers processor gets the prompt as its model card writes it (the
text `apply_chat_template` renders for one image and one question) and expands the image
placeholder itself; vlforget's `Backbone.build_batch` must give the same ids. LLaVA-1.5
and LLaVA-NeXT run with SentencePiece-style (Llama) tokenizers built here, in both of
the normalisations Llama tokenizers ship with (legacy "prepend ▁ to every segment" and
Metaspace "first segment only"): tokenizing the prompt piece by piece gives extra `▁`
tokens with both. Qwen2-VL, Qwen2.5-VL and Idefics3 run with the built-in tokenizer plus
their chat markers (Qwen's expansion re-done as its processor does it: the class needs
torchvision for videos). Idefics3 also loads with a Llama-3-style tokenizer (no <|im_start|>).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlforget.models.backbone import Backbone
from vlforget.models.prompt import FAMILY_TEMPLATES, IDEFICS3_LLAMA3
from vlforget.models.tiny_families import CONFIGS, build_family

QUESTIONS = ["what colour is the star?", "How many circles are there?\nAnswer briefly."]
CARD_PROMPTS = {  # the prompt each model card documents, with the processor's image placeholder
    "llava": "USER: <image>\n{q} ASSISTANT:",
    "llava_next": "[INST] <image>\n{q} [/INST]",
    "qwen2_vl": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                 "<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n"),
    "idefics3": "<|im_start|>User:<image>{q}<end_of_utterance>\nAssistant:",
}
CARD_PROMPTS["qwen2_5_vl"] = CARD_PROMPTS["qwen2_vl"]


def llama_tokenizer(legacy: bool):
    """A small Llama-style tokenizer: BPE with byte fallback, `▁` for spaces, <s> added in front."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast

    corpus = [p.format(q=q) for p in CARD_PROMPTS.values() for q in QUESTIONS] * 5
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    draft.train_from_iterator(corpus, trainer)
    trained = json.loads(draft.to_str())["model"]
    vocab = trained["vocab"]
    for byte in range(256):  # Llama's byte-fallback tokens (<0x0A> is the newline)
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    core = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy:
        core.normalizer = draft.normalizer
    else:
        core.normalizer = normalizers.Replace(" ", "▁")
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    tokenizer = LlamaTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=True, extra_special_tokens={"image_token": "<image>"})
    return tokenizer


def _backbone(family: str, tokenizer, template: str) -> Backbone:
    config = CONFIGS[family](tokenizer)
    torch.manual_seed(0)
    from vlforget.models.families import model_class

    return Backbone(model_class(config.model_type)(config), tokenizer, meta={"prompt_template": template})


def _processor(family: str, backbone: Backbone):
    import transformers

    tokenizer, size = backbone.tokenizer, int(backbone.meta["image_size"])
    if family == "llava":
        image = transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return transformers.LlavaProcessor(image_processor=image, tokenizer=tokenizer, patch_size=16,
                                           vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if family == "llava_next":
        return transformers.LlavaNextProcessor(image_processor=backbone._image_processor(), tokenizer=tokenizer,
                                               patch_size=16, vision_feature_select_strategy="default",
                                               num_additional_image_tokens=1)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return QwenImageOnlyProcessor(backbone._image_processor(), tokenizer)
    vision = backbone.model.config.vision_config
    image = transformers.Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": size},
                                                max_image_size={"longest_edge": vision.image_size})
    return transformers.Idefics3Processor(image_processor=image, tokenizer=tokenizer,
                                          image_seq_len=backbone.n_image_tokens)


class QwenImageOnlyProcessor:
    """Qwen2-VL's processor for images, as `Qwen2VLProcessor.__call__` does it: the image
    processor's grid gives grid_t * grid_h * grid_w / merge_size**2 placeholders, which
    replace <|image_pad|> before the text is tokenized. (The transformers class itself
    cannot be built here: its video processor needs torchvision.)"""

    def __init__(self, image_processor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(self, text: str, images):
        grid = self.image_processor(images, return_tensors="pt")["image_grid_thw"][0]
        count = int(grid.prod()) // self.image_processor.merge_size ** 2
        return self.tokenizer([text.replace("<|image_pad|>", "<|image_pad|>" * count)], return_tensors="pt")


def _marker_tokenizer(family: str):
    import re

    tokenizer = build_family(family).tokenizer
    markers = sorted(set(re.findall(r"<\|?[A-Za-z_][\w\-]*\|?>", FAMILY_TEMPLATES[family] + CARD_PROMPTS[family])))
    tokenizer.add_special_tokens({"additional_special_tokens": [m for m in markers if m != "<image>"]})
    tokenizer.sep_token = None
    if family.startswith("qwen"):
        tokenizer.bos_token = None
        tokenizer.image_token = "<|image_pad|>"  # Qwen's processors read the placeholder from the tokenizer
    return tokenizer


CASES = [("llava", True), ("llava", False), ("llava_next", True), ("llava_next", False),
         ("qwen2_vl", None), ("qwen2_5_vl", None), ("idefics3", None)]


@pytest.mark.parametrize("family,legacy", CASES, ids=[f"{f}-{'sp-legacy' if l else 'sp' if l is False else 'words'}"
                                                      for f, l in CASES])
def test_prompt_ids_equal_the_family_processors(family, legacy):
    tokenizer = llama_tokenizer(legacy) if legacy is not None else _marker_tokenizer(family)
    if family.startswith("qwen"):
        tokenizer.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    backbone = _backbone(family, tokenizer, FAMILY_TEMPLATES[family])
    processor = _processor(family, backbone)
    size = int(backbone.meta["image_size"])
    image = Image.new("RGB", (size, size), "red")
    for question in QUESTIONS:
        ours = backbone.build_batch([image], [question])["input_ids"][0].tolist()
        theirs = processor(text=CARD_PROMPTS[family].format(q=question), images=[image])["input_ids"][0]
        theirs = list(theirs.tolist() if hasattr(theirs, "tolist") else theirs)
        if family in ("idefics3",) and tokenizer.bos_token_id is not None and theirs[0] != tokenizer.bos_token_id:
            theirs = [tokenizer.bos_token_id] + theirs  # Idefics3's card prompt is given without <s>; we add it
        assert ours == theirs, (tokenizer.convert_ids_to_tokens(ours), tokenizer.convert_ids_to_tokens(theirs))
        pieces = backbone.prompt.ids(backbone.encode_text([question])[0])
        if legacy is not None:  # the old piece-by-piece prompt differs: what this test guards against
            assert pieces != ours


def test_idefics3_loads_with_a_llama3_style_tokenizer(tmp_path):
    """Idefics3-8B's tokenizer has no <|im_start|>: the Llama-3 turn format is chosen, not refused."""
    from vlforget.models.tiny_families import save_family

    folder = save_family("idefics3", tmp_path / "idefics3")
    tokenizer = build_family("idefics3").tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<global-img>",
                                                                "<end_of_utterance>"]})
    tokenizer.bos_token = "<s>"  # stands for <|begin_of_text|>
    tokenizer.sep_token = None
    tokenizer.save_pretrained(folder)
    (folder / "vlforget.json").unlink()
    backbone = Backbone.load(folder)
    assert backbone.meta["prompt_template"] == IDEFICS3_LLAMA3
    ids = backbone.build_batch([Image.new("RGB", (48, 48))], ["what colour is it?"])["input_ids"][0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<s>" and "<|im_start|>" not in tokens and tokens.count("<image>") == backbone.n_image_tokens


def test_vlforget_json_overrides_only_what_it_names(tmp_path):
    from vlforget.models.tiny_families import save_family

    folder = save_family("llava", tmp_path / "llava")
    (folder / "vlforget.json").write_text(json.dumps({"prompt_template": "{bos}Q: {image}\n{instruction} A:"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                 "image_std": [0.5, 0.6, 0.7]}))
    backbone = Backbone.load(folder)
    assert backbone.meta["prompt_template"] == "{bos}Q: {image}\n{instruction} A:"
    assert backbone.meta["pixel_mean"] == [0.1, 0.2, 0.3] and backbone.meta["pixel_std"] == [0.5, 0.6, 0.7]
