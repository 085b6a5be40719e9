"""`Backbone`: the built-in tiny LLaVA (or a saved model of a supported family) behind one small API.

The model class and where its vision tower, connector and language model live come
from `families.FAMILIES`, keyed by the saved config's `model_type`.

Prompt layout (format version 1), left-padded for training and generation alike:

    <pad>... <s> instruction words <image> x n_image_tokens <sep> answer words </s>

The question comes *before* the image tokens so the causal language model reads the
image knowing what to look for. `labels` are -100 everywhere except the answer
tokens and the final `</s>`, so `model(**batch).loss` is the answer's mean NLL.
The language model uses rotary position embeddings (relative), so the left padding
offset does not change what a sequence computes.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vlforget.models.families import family_of, model_class, resolve

FORMAT_VERSION = 1
META_FILE = "vlforget.json"
PROMPT_LAYOUT = "bos instruction image* sep answer eos"
IMAGE_SIZE = 48
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def builtin_path() -> Path:
    """Folder of the committed model (inside the installed package)."""
    return Path(str(resources.files("vlforget") / "assets" / "tiny-llava"))


def images_to_pixels(images: Sequence[Image.Image], image_size: int = IMAGE_SIZE,
                     mean: float = PIXEL_MEAN, std: float = PIXEL_STD) -> torch.Tensor:
    """[B, 3, H, W] float tensor: RGB scaled to [0, 1], then (x - mean) / std."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return normalise_uint8(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), mean, std)


def normalise_uint8(pixels: torch.Tensor, mean: float = PIXEL_MEAN, std: float = PIXEL_STD) -> torch.Tensor:
    return (pixels.float() / 255.0 - mean) / std


def assemble(instruction_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]] | None, *,
             bos: int, eos: int, sep: int, pad: int, image: int, n_image_tokens: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids / attention_mask (and labels when targets are given)."""
    rows, labels = [], []
    for i, ids in enumerate(instruction_ids):
        prompt = [bos, *ids, *([image] * n_image_tokens), sep]
        if target_ids is None:
            rows.append(prompt)
        else:
            answer = [*target_ids[i], eos]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_tensor = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention_mask[i, width - len(row):] = 1
        if labels:
            label_tensor[i, width - len(row):] = torch.tensor(labels[i])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if target_ids is not None:
        batch["labels"] = label_tensor
    return batch


HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPES = {"float32": torch.float32, **HALF}


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"; a clear error otherwise."""
    if device == "auto":  # under `accelerate launch` each process takes its own GPU (LOCAL_RANK)
        import os

        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(device)
    raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def resolve_precision(dtype: str, device: torch.device) -> tuple[torch.dtype | str, str | None]:
    """The dtype to load with, and a note when the request was changed.

    "auto" is the checkpoint's own dtype on a GPU and float32 on CPU; half precision on
    CPU falls back to float32 (CPU half-precision kernels are slow or missing for some ops).
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    if device.type == "cpu":
        note = f"note: --dtype {dtype} ignored on CPU; using float32" if dtype in HALF else None
        return torch.float32, note
    return ("auto" if dtype == "auto" else DTYPES[dtype]), None


def local_model_folder(model: str | Path) -> Path:
    """`model` as a folder: itself if it exists, else the local-cache snapshot of that hub id.

    Never downloads: vlforget runs offline; weights must be fetched beforehand.
    """
    path = Path(model)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model), local_files_only=True))
    except HFValidationError:  # cannot be a hub id either
        raise FileNotFoundError(f"model folder not found: {model}") from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{model!r} is not a folder, and the weights for hub id {model!r} are not in the local Hugging Face "
            f"cache; download them first (e.g. `hf download {model}` where there is internet, then copy the "
            f"cache here) or pass --model the folder holding config.json, the weights and the tokenizer") from None


class PerImageConnector(torch.nn.Module):
    """A per-image view of a connector the model calls once per crop (LLaVA-NeXT's anyres).

    Input [B, crops * P, D] (every crop's features of one image, in crop order), output
    [B, crops * P, H]: the wrapped projector applied to each crop. Holds the real projector
    as a submodule, so its parameters are shared and `copy.deepcopy` copies them.
    `busy` is set while it runs the projector, so the routing hook `Backbone` puts on
    the projector lets that inner call through instead of routing it a second time.
    """

    def __init__(self, projector: torch.nn.Module, crops: int):
        super().__init__()
        self.projector = projector
        self.crops = crops
        self.busy = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        self.busy = True
        try:
            return self.projector(x.reshape(b * self.crops, n // self.crops, d)).reshape(b, n, -1)
        finally:
            self.busy = False


class Backbone:
    """A LLaVA model + tokenizer with batch building, generation and feature access."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", meta: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.meta = {
            "format_version": FORMAT_VERSION,
            "prompt_layout": PROMPT_LAYOUT,
            "padding_side": "left",
            # a folder without vlforget.json (e.g. real weights): the vision tower's own input size
            "image_size": int(getattr(getattr(model.config, "vision_config", None), "image_size", IMAGE_SIZE)),
            "pixel_mean": PIXEL_MEAN,
            "pixel_std": PIXEL_STD,
            "n_image_tokens": None,  # filled below unless the saved meta has it
            **(meta or {}),
        }
        self._view = None  # LLaVA-NeXT's per-image connector view (see `connector`)
        self._processor = None  # LLaVA-NeXT's anyres image processor, built on first use
        if self.meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"unsupported backbone format version {self.meta['format_version']} "
                             f"(this vlforget reads version {FORMAT_VERSION})")
        self.model.to(self.device)
        if self.meta["n_image_tokens"] is None:
            self.meta["n_image_tokens"] = (int(model.config.image_seq_length) if model.config.model_type == "llava"
                                           else self._count_image_tokens())
        if self.family.crops:
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
        path = builtin_path() if path is None else local_model_folder(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model found in {path} (expected config.json, weights and tokenizer files)")
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model_type = AutoConfig.from_pretrained(path).model_type
        model = model_class(model_type).from_pretrained(path, **kwargs)
        model.eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        tokenizer.padding_side = "left"
        return cls(model, tokenizer, device, meta)

    def save(self, path: str | Path) -> None:
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
        """The connector as methods see it: called once per batch of images, [B, n_image_tokens, ...].

        For families that run the connector per crop (LLaVA-NeXT) this is a `PerImageConnector`
        view sharing the real projector's parameters (see `_per_image_view`)."""
        projector = resolve(self.model, self.family.connector)
        return self._per_image_view(projector) if self.family.crops else projector

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

    @property
    def crops(self) -> int:
        """Connector calls per image: 1, or LLaVA-NeXT's base image + anyres tiles at the fixed image size."""
        if not self.family.crops:
            return 1
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        size = int(self.meta["image_size"])
        return image_size_to_num_patches((size, size), self.model.config.image_grid_pinpoints,
                                         self.model.config.vision_config.image_size)

    def _per_image_view(self, projector: torch.nn.Module) -> PerImageConnector:
        """The per-image view, and (once) a hook routing the model's per-crop call through it.

        The model calls the projector on [B * crops, P, D]; the hook reshapes that to
        [B, crops * P, D], runs the view (so hooks that methods put on the view see one row
        per image and can replace rows) and returns its output in the model's shape. The
        projector thus runs twice per forward (the first output is discarded): cheap next
        to the vision tower and the LM, and it keeps the checkpoint's module names intact
        (wrapping the projector in place would rename its weights). Copies of the projector
        (refuser pools, EProj) carry the hook function along but it ignores them.
        """
        if self._view is not None and self._view.projector is projector:
            return self._view
        view = PerImageConnector(projector, self.crops)

        def route(module, args, output, view=view):
            if module is not view.projector or view.busy:
                return None
            x = args[0]
            out = view(x.reshape(x.shape[0] // view.crops, view.crops * x.shape[1], x.shape[2]))
            return out.reshape(output.shape)

        projector.register_forward_hook(route)
        self._view = view
        return view

    @torch.no_grad()
    def _count_image_tokens(self) -> int:
        """Image placeholder tokens per image at the fixed image size (one dummy image through the model)."""
        size = int(self.meta["image_size"])
        pixels = self.pixel_values([Image.new("RGB", (size, size))])
        out = self.model.model.get_image_features(pixel_values=pixels, **self._extra_inputs(1))
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        return int(sum(f.shape[0] for f in features)) if isinstance(features, (list, tuple)) else int(features.shape[-2])

    @property
    def n_image_tokens(self) -> int:
        return int(self.meta["n_image_tokens"])

    # -- inputs ----------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels at the fixed size S (LLaVA-NeXT: [B, crops, 3, V, V])."""
        if self.family.crops:
            return self._anyres_pixels(images)
        pixels = images_to_pixels(images, self.meta["image_size"], self.meta["pixel_mean"], self.meta["pixel_std"])
        return pixels.to(self.device, dtype=self.model.dtype)

    def _anyres_pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """LLaVA-NeXT's base image + anyres tiles, cut by transformers' own (PIL) image processor
        from the image resized to the fixed size, so every image gives the same crops and tokens."""
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        if self._processor is None:
            cfg, side = self.model.config, self.model.config.vision_config.image_size
            self._processor = LlavaNextImageProcessorPil(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                image_grid_pinpoints=cfg.image_grid_pinpoints, resample=Image.BILINEAR,
                image_mean=[self.meta["pixel_mean"]] * 3, image_std=[self.meta["pixel_std"]] * 3)
        size = int(self.meta["image_size"])
        resized = [im.convert("RGB").resize((size, size), Image.BILINEAR) if im.size != (size, size)
                   else im.convert("RGB") for im in images]
        pixels = self._processor(resized, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, dtype=self.model.dtype)

    def _extra_inputs(self, n: int) -> dict[str, torch.Tensor]:
        """Family-specific model inputs besides ids, mask and pixels (LLaVA-NeXT: `image_sizes`)."""
        if self.model.config.model_type == "llava_next":
            size = int(self.meta["image_size"])
            return {"image_sizes": torch.tensor([[size, size]] * n, device=self.device)}
        return {}

    def encode_text(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _special(self) -> dict[str, int]:
        tok = self.tokenizer
        return {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "sep": tok.sep_token_id,
                "pad": tok.pad_token_id, "image": self.model.config.image_token_id,
                "n_image_tokens": self.n_image_tokens}

    def build_batch(self, images: Sequence[Image.Image], instructions: Sequence[str],
                    targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors for `model(**batch)`; with `targets`, `labels` mark the answer + eos only."""
        if len(images) != len(instructions) or (targets is not None and len(targets) != len(images)):
            raise ValueError("images, instructions (and targets) must have the same length")
        batch = assemble(self.encode_text(instructions), None if targets is None else self.encode_text(targets),
                         **self._special())
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = self.pixel_values(images)
        batch.update(self._extra_inputs(len(images)))
        return batch

    # -- outputs ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], instructions: Sequence[str], max_new_tokens: int = 24,
                 batch_size: int = 64) -> list[str]:
        """Greedy answers, decoded and stripped."""
        was_training = self.model.training
        self.model.eval()
        answers: list[str] = []
        try:
            for start in range(0, len(images), batch_size):
                batch = self.build_batch(images[start:start + batch_size], instructions[start:start + batch_size])
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          num_beams=1, pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=self.tokenizer.eos_token_id)
                new = out[:, batch["input_ids"].shape[1]:]
                answers += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        finally:
            self.model.train(was_training)
        return answers

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

        P = n_image_tokens for LLaVA; for LLaVA-NeXT P = crops x patches (the model then
        packs the connector output and adds row-end embeddings, giving n_image_tokens)."""
        cfg = self.model.config
        pixels = self.pixel_values(images)
        if self.family.crops:
            pixels = pixels.flatten(0, 1)
        out = self.vision_encoder(pixels, output_hidden_states=True)
        features = out.hidden_states[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        if self.family.crops:  # [B * crops, P, D] -> [B, crops * P, D], the per-image connector input
            features = features.reshape(len(images), -1, features.shape[-1])
        return features

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, P, text_hidden]: connector output (what the language model reads, before LLaVA-NeXT's packing)."""
        return self.connector(self.vision_features(images))
