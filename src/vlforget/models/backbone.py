"""`Backbone`: the built-in tiny LLaVA (or a saved model of a supported family) behind one small API.

The model class and where its vision tower, connector and language model live come
from `families.FAMILIES`, keyed by the saved config's `model_type`.

Sequences are `<pad>... prompt answer </s>`, left-padded for training and generation
alike; the prompt comes from a `prompt.PromptTemplate`. The built-in model's template
(`prompt.BUILTIN`) is

    <s> instruction words <image> x n_image_tokens <sep>

(the question comes *before* the image tokens so the causal language model reads the
image knowing what to look for); a real checkpoint loaded without a `vlforget.json`
gets its family's chat format (`prompt.FAMILY_TEMPLATES`). `labels` are -100 everywhere
except the answer tokens and the final `</s>`, so `model(**batch).loss` is the answer's
mean NLL. The language models use rotary position embeddings (relative), so the left
padding offset does not change what a sequence computes.

Next to it: `inputs` (pixels and token batches), `checkpoints` (model folders,
`vlforget.json`), `connector` (the per-image connector view), `placement` (device, dtype).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from safetensors import SafetensorError

from vlforget.models.checkpoints import FORMAT_VERSION, META_FILE, builtin_path, checkpoint_meta, local_model_folder
from vlforget.models.connector import PerImageConnector
from vlforget.models.families import family_of, model_class, resolve
from vlforget.models.inputs import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD, assemble, images_to_pixels, per_channel
from vlforget.models.prompt import BUILTIN, PromptTemplate


class Backbone:
    """A vision-language model of a supported family + tokenizer: batch building, generation, feature access."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", meta: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.meta = {
            "format_version": FORMAT_VERSION,
            # models vlforget builds use the built-in layout; `load` gives a folder without
            # vlforget.json (real weights) its family's chat format
            "prompt_template": BUILTIN,
            "padding_side": "left",
            # unless set (vlforget.json, `checkpoint_meta`): the vision tower's own input size
            "image_size": int(getattr(model.config.vision_config, "image_size", IMAGE_SIZE)),
            "pixel_mean": PIXEL_MEAN,
            "pixel_std": PIXEL_STD,
            "n_image_tokens": None,  # filled below unless the saved meta has it
            **(meta or {}),
        }
        self._view = None  # per-image connector view (see `connector`), LLaVA-NeXT and Qwen2-VL
        self._processor = None  # their transformers image processor, built on first use
        self.source, self.folder = None, None  # set by `load`: what --model named, and its folder
        if self.meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"unsupported backbone format version {self.meta['format_version']} "
                             f"(this vlforget reads version {FORMAT_VERSION})")
        if tokenizer.eos_token_id is None:  # every answer ends with it; fail here, not mid-batch
            raise ValueError("the tokenizer has no eos_token; every answer ends with one (see docs/models.md)")
        if tokenizer.pad_token_id is None:  # left padding is masked out, so any token will do
            tokenizer.pad_token = tokenizer.eos_token
        self.model.to(self.device)
        if self.meta["n_image_tokens"] is None:
            self.meta["n_image_tokens"] = (int(model.config.image_seq_length) if model.config.model_type == "llava"
                                           else self._count_image_tokens())
        # compiled now, so a template the tokenizer cannot express fails at load, not mid-run
        self.prompt = PromptTemplate(self.meta["prompt_template"], tokenizer, model.config.image_token_id,
                                     self.n_image_tokens)
        if self.family.layout != "per_image":
            self.connector  # noqa: B018 -- installs the per-image routing hook before any forward

    # -- loading / saving ----------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu", dtype=None) -> "Backbone":
        """Load a saved backbone (None = the built-in model shipped with vlforget).

        `path`: a folder, or a Hugging Face hub id whose download is already in the local
        cache (nothing is fetched). `dtype`: a torch dtype, "auto" (the checkpoint's own) or
        None (float32). The model class comes from the saved config's `model_type` (see
        `families.FAMILIES`); a family vlforget does not support is refused by name.
        """
        from transformers import AutoConfig, PreTrainedTokenizerFast
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load tqdm bar would interleave with our own progress output
        source = None if path is None else (str(Path(path).resolve()) if Path(path).exists() else str(path))
        path = builtin_path() if path is None else local_model_folder(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model found in {path} (expected config.json, weights and tokenizer files)")
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"model folder {path}: config.json is not a readable model config "
                             f"({' '.join(str(error).split())[:300]})") from None
        family_of(model_type)  # an unsupported family is refused by name, before any weights load
        kwargs = {"dtype": dtype} if dtype is not None else {}
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
            model = model_class(model_type).from_pretrained(path, **kwargs)
            model.eval()
        except (OSError, SafetensorError, RuntimeError, TypeError) as error:
            raise ValueError(f"model folder {path}: could not load the weights or tokenizer "
                             f"({' '.join(str(error).split())[:300]})") from None
        tokenizer.padding_side = "left"
        try:
            meta = checkpoint_meta(path, model_type, tokenizer)
            if (path / META_FILE).exists():  # it overrides only the settings it names
                meta.update(json.loads((path / META_FILE).read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"model folder {path}: {META_FILE} or preprocessor_config.json is not valid JSON "
                             f"({error})") from None
        backbone = cls(model, tokenizer, device, meta)
        backbone.source, backbone.folder = source, path  # recorded by runs (models/identity.py)
        return backbone

    def save(self, path: str | Path) -> None:
        """The model, tokenizer and `vlforget.json` (prompt template, image size, normalisation)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        (path / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    # -- module access ---------------------------------------------------------------
    @property
    def family(self):
        return family_of(self.model.config.model_type)

    @property
    def vision_encoder(self) -> torch.nn.Module:
        return resolve(self.model, self.family.vision)

    @property
    def connector(self) -> torch.nn.Module:
        """The connector as methods see it: one call per batch, input [B, P, D] one row per image.

        LLaVA: the projector itself. Families whose model calls it otherwise (layout
        "anyres" / "flat") get a `PerImageConnector` view sharing the projector's
        parameters (see `_per_image_view`)."""
        projector = resolve(self.model, self.family.connector)
        return projector if self.family.layout == "per_image" else self._per_image_view(projector)

    @property
    def language_model(self) -> torch.nn.Module:
        return resolve(self.model, self.family.language)

    @property
    def connector_path(self) -> str:
        """Dotted name of the projector inside `.model` (for peft targets or hooks)."""
        projector = resolve(self.model, self.family.connector)
        for name, module in self.model.named_modules():
            if module is projector:
                return name
        raise RuntimeError("projector not found among the model's modules")

    def _per_image_view(self, projector: torch.nn.Module) -> PerImageConnector:
        """The per-image view, and (once) a hook routing the model's own call through it.

        The hook reshapes the model's call ([B * crops, P, D] or [B * patches, D]) to
        [B, T, D], runs the view (so hooks that methods put on the view see one row per
        image and can replace rows) and returns its output in the model's shape. The
        projector thus runs twice per forward (the first output is discarded): cheap next
        to the vision tower and the LM, and it keeps the checkpoint's module names intact
        (wrapping the projector in place would rename its weights). Copies of the projector
        (refuser pools, EProj) carry the hook function along but it ignores them.
        """
        if self._view is not None and self._view.projector is projector:
            return self._view
        rows = self._rows_per_image()
        view = PerImageConnector(projector, rows, flat=self.family.layout == "flat")

        def route(module, args, output, view=view):
            if module is not view.projector or view.busy:
                return None
            x = args[0]
            out = view(x.reshape(x.shape[0] // view.rows, -1, x.shape[-1]))
            return out.reshape(output.shape)

        projector.register_forward_hook(route)
        self._view = view
        return view

    def _rows_per_image(self) -> int:
        """Rows of the model's connector call per image at the fixed size (crops or patches)."""
        size = int(self.meta["image_size"])
        inputs = self._image_inputs([Image.new("RGB", (size, size))])
        return int(inputs["pixel_values"].shape[1 if self.family.layout == "anyres" else 0])

    @torch.no_grad()
    def _count_image_tokens(self) -> int:
        """Image placeholder tokens per image at the fixed image size (one dummy image through the model)."""
        size = int(self.meta["image_size"])
        inputs = self._image_inputs([Image.new("RGB", (size, size))])
        out = self.model.model.get_image_features(**inputs)
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        if isinstance(features, (list, tuple)):  # LLaVA-NeXT, Qwen2-VL, Idefics3: one tensor per image
            return int(sum(f.shape[0] for f in features))
        return int(features.shape[-2])

    @property
    def n_image_tokens(self) -> int:
        return int(self.meta["n_image_tokens"])

    # -- inputs ----------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Normalised pixels at the fixed size S: [B, 3, S, S]; Idefics3 [B, 1, 3, S, S];
        LLaVA-NeXT [B, crops, 3, V, V]; Qwen2-VL [B * patches, 3 * 2 * p * p] (flattened temporal patches)."""
        return self._image_inputs(images)["pixel_values"]

    def _image_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The model's image inputs: `pixel_values`, plus `image_sizes` (LLaVA-NeXT) or
        `image_grid_thw` (Qwen2-VL). Every image is first resized to the fixed size, so all
        images give the same number of image tokens (the prompt layout relies on it)."""
        size = int(self.meta["image_size"])
        if self.family.layout == "per_image":
            pixels = images_to_pixels(images, size, self.meta["pixel_mean"], self.meta["pixel_std"])
            if self.family.stacked:  # one image per sample; Idefics3 then takes every pixel as real
                pixels = pixels[:, None]
            return {"pixel_values": pixels.to(self.device, dtype=self.model.dtype)}
        resized = [im.convert("RGB") for im in images]
        resized = [im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR) for im in resized]
        out = self._image_processor()(resized, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in out.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def _image_processor(self):
        """transformers' own (PIL) image processor of the family, built once: it cuts
        LLaVA-NeXT's base image + anyres tiles and Qwen2-VL's patches exactly as the model expects."""
        if self._processor is not None:
            return self._processor
        cfg, vision = self.model.config, self.model.config.vision_config
        norm = {"image_mean": per_channel(self.meta["pixel_mean"]), "image_std": per_channel(self.meta["pixel_std"]),
                "resample": Image.BILINEAR}
        if self.family.layout == "anyres":
            from transformers import LlavaNextImageProcessorPil

            side = vision.image_size
            self._processor = LlavaNextImageProcessorPil(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                image_grid_pinpoints=cfg.image_grid_pinpoints, **norm)
        elif self.family.layout == "flat":
            from transformers import Qwen2VLImageProcessorPil

            size, factor = int(self.meta["image_size"]), vision.patch_size * vision.spatial_merge_size
            # min/max pixels chosen so the fixed-size image keeps its size (rounded to the patch grid)
            self._processor = Qwen2VLImageProcessorPil(
                size={"shortest_edge": factor * factor, "longest_edge": max(size * size, factor * factor)},
                patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                temporal_patch_size=vision.temporal_patch_size, **norm)
        else:
            raise ValueError(f"no image processor for layout {self.family.layout!r}")
        return self._processor

    def encode_text(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def assemble(self, instruction_ids: Sequence[Sequence[int]],
                 target_ids: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """Token tensors (CPU) for encoded instructions (and targets): the prompt template + answer + eos."""
        return assemble([self.prompt.ids(ids) for ids in instruction_ids], target_ids,
                        eos=self.tokenizer.eos_token_id, pad=self.tokenizer.pad_token_id)

    def build_batch(self, images: Sequence[Image.Image], instructions: Sequence[str],
                    targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors for `model(**batch)`; with `targets`, `labels` mark the answer + eos only."""
        if len(images) != len(instructions) or (targets is not None and len(targets) != len(images)):
            raise ValueError("images, instructions (and targets) must have the same length")
        prompts = [self.prompt.text_ids(text) for text in instructions]  # as the family's processor tokenizes
        batch = assemble(prompts, None if targets is None else self.encode_text(targets),
                         eos=self.tokenizer.eos_token_id, pad=self.tokenizer.pad_token_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch.update(self._image_inputs(images))
        if self.family.layout == "flat":  # Qwen2-VL's multimodal RoPE finds image tokens through these
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.model.config.image_token_id).int()
        return batch

    # -- outputs ---------------------------------------------------------------------
    @contextmanager
    def eval_mode(self):
        """The model in eval mode (no dropout) for the block, its own mode restored after:
        a method may be mid-training when it asks for answers or answer states."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], instructions: Sequence[str], max_new_tokens: int = 24,
                 batch_size: int = 64, min_new_tokens: int = 0) -> list[str]:
        """Greedy answers, decoded and stripped.

        `min_new_tokens` = `max_new_tokens` makes every answer exactly that long (end-of-sequence
        suppressed): the latency benchmarks use it to compare compute at equal work."""
        answers: list[str] = []
        with self.eval_mode():
            for start in range(0, len(images), batch_size):
                batch = self.build_batch(images[start:start + batch_size], instructions[start:start + batch_size])
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                          do_sample=False,
                                          num_beams=1, pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=self.tokenizer.eos_token_id)
                new = out[:, batch["input_ids"].shape[1]:]
                answers += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return answers

    @torch.no_grad()
    def prompt_states(self, instructions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[B, text_hidden] float32 on the CPU: the language model's last-layer state at the
        end of each prompt, asked of a blank image (every pixel the normalisation mean), so
        only the instruction speaks. It is the state the first answer token is read from:
        what kind of answer the model is about to give (CORE's textual side reads it)."""
        size = int(self.meta["image_size"])
        blank = Image.new("RGB", (size, size), tuple(round(255 * m) for m in per_channel(self.meta["pixel_mean"])))
        rows = []
        with self.eval_mode():
            for start in range(0, len(instructions), batch_size):
                chunk = list(instructions[start:start + batch_size])
                batch = self.build_batch([blank] * len(chunk), chunk)
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1]
                positions = torch.arange(hidden.shape[1], device=hidden.device)
                last = (batch["attention_mask"].to(hidden.device) * positions).argmax(1)  # any padding side
                rows.append(hidden[torch.arange(len(chunk), device=hidden.device), last].float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, self.model.get_input_embeddings().weight.shape[1])

    def answer_logprobs(self, images: Sequence[Image.Image], instructions: Sequence[str],
                        targets: Sequence[str]) -> torch.Tensor:
        """[B] summed log-probability of each target (+ eos); differentiable."""
        batch = self.build_batch(images, instructions, targets)
        labels = batch.pop("labels")
        logits = self.model(**batch).logits[:, :-1].float()
        labels = labels[:, 1:]
        mask = labels != -100
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logp * mask).sum(-1)

    def vision_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, P, vision_hidden]: the vision tower output fed to the connector, one row per image.

        P = n_image_tokens for LLaVA; LLaVA-NeXT: crops x patches (the model then packs the
        connector output and adds row-end embeddings); Qwen2-VL: patches before the 2x2 merge
        (Qwen2.5-VL: in its window-attention order, as the merger receives them); Idefics3:
        patches before the connector's pixel shuffle."""
        cfg = self.model.config
        inputs = self._image_inputs(images)
        if self.family.layout == "flat":
            view = self.connector
            view.busy = True  # the tower ends with the merger: run it plainly, no method hooks
            try:
                out = self.vision_encoder(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
            finally:
                view.busy = False
            return out.last_hidden_state.reshape(len(images), -1, out.last_hidden_state.shape[-1])
        pixels = inputs["pixel_values"]
        if self.family.layout == "anyres" or self.family.stacked:
            pixels = pixels.flatten(0, 1)
        if not hasattr(cfg, "vision_feature_layer"):  # Idefics3: the connector reads the last layer
            return self.vision_encoder(pixel_values=pixels).last_hidden_state
        out = self.vision_encoder(pixels, output_hidden_states=True)
        features = out.hidden_states[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        if self.family.layout == "anyres":  # [B * crops, P, D] -> [B, crops * P, D], the per-image connector input
            features = features.reshape(len(images), -1, features.shape[-1])
        return features

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, P, text_hidden]: connector output (what the language model reads, before LLaVA-NeXT's packing)."""
        return self.connector(self.vision_features(images))
