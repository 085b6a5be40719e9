"""White-box PGD on the pixels: push the original answer's likelihood up, then ask again.

Projected gradient ascent (Madry et al. 2018) in [0, 1] RGB pixel space at the
model's input size, L-infinity ball of radius epsilon around the clean image:

    x_{t+1} = clip_[0,1]( x_0 + clip_[-eps, eps]( x_t + alpha * sign(grad_x J(x_t)) - x_0 ) )
    J(x)    = sum over pairs of (1 / |a|) * log p_method(a | x, instruction)

with a the pair's original answer, scored through the method's own hooks
(`scoring.teacher_forced_logprobs`: CORE's gate and refusers, an expert's route and
adapter all see the adversarial pixels), with the method's `torch.no_grad()` blocks
lifted so the gradient is the true one (`scoring.no_grad_lifted`; a white-box attacker
is not stopped by a memory-saving block). The final images are rounded to 8-bit PIL
images, so what is evaluated is a real image file an attacker could send; CRR and
leak are then measured with the method's normal generation, and the answer's
log-likelihood with forced decoding (`scoring.deployed_logprobs`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from vlforget.evaluation.attacks.scoring import deployed_logprobs, teacher_forced_logprobs
from vlforget.models.inputs import per_channel


def to_unit_pixels(images, size: int) -> torch.Tensor:
    """[B, 3, S, S] in [0, 1], resized exactly as the model's input pipeline does (bilinear)."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)
                         if im.size != (size, size) else im.convert("RGB"), dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


@contextmanager
def pixels_replaced(backbone, images, pixels: torch.Tensor):
    """While inside, the backbone reads `pixels` (in [0, 1], may require grad) for these PIL images.

    Every path that turns images into model inputs goes through `_image_inputs` (the
    batch for the forward and the vision features the expert baselines route on), so
    the gate and the forward see the same adversarial image."""
    original = backbone._image_inputs
    rows = {id(im): i for i, im in enumerate(images)}
    mean = torch.tensor(per_channel(backbone.meta["pixel_mean"])).reshape(1, 3, 1, 1)
    std = torch.tensor(per_channel(backbone.meta["pixel_std"])).reshape(1, 3, 1, 1)

    def image_inputs(ims):
        if not all(id(im) in rows for im in ims):
            return original(ims)
        picked = pixels[[rows[id(im)] for im in ims]]
        return {"pixel_values": ((picked - mean) / std).to(backbone.device, dtype=backbone.model.dtype)}

    backbone._image_inputs = image_inputs
    try:
        yield
    finally:
        del backbone._image_inputs


def pgd(method, images, instructions, answers, epsilon: float, step_size: float, steps: int) -> torch.Tensor:
    """Adversarial pixels [B, 3, S, S] in [0, 1] maximising the answers' mean token log-likelihood."""
    backbone = method.backbone
    if backbone.family.layout != "per_image":
        raise ValueError(f"the pgd attack needs a model that reads one pixel tensor per image (LLaVA, the "
                         f"built-in model); {backbone.model.config.model_type} cuts images into crops or patches")
    clean = to_unit_pixels(images, int(backbone.meta["image_size"]))
    adv = clean.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        with pixels_replaced(backbone, images, adv):
            logp, counts = teacher_forced_logprobs(method, images, instructions, answers, lift_no_grad=True)
        objective = (logp / counts.clamp(min=1)).sum()
        grad, = torch.autograd.grad(objective, adv)
        with torch.no_grad():
            adv = clean + (adv + step_size * grad.sign() - clean).clamp(-epsilon, epsilon)
            adv = adv.clamp(0.0, 1.0)
    return adv.detach()


def mean_logprob(method, samples) -> float:
    scored = deployed_logprobs(method, [s.image for s in samples], [s.instruction for s in samples],
                               [s.meta["original_answer"] for s in samples])
    return float(torch.stack([t.mean() for t in scored]).mean())


def run(target) -> dict:
    cfg = target.config
    method = target.method
    pairs = {name: [s for s in samples if s.meta.get("original_answer")]
             for name, samples in target.forget_test().items()}
    flat = [s for samples in pairs.values() for s in samples]
    if not flat:
        raise ValueError("the pgd attack needs forget pairs with a known original answer")
    adv = pgd(method, [s.image for s in flat], [s.instruction for s in flat],
              [s.meta["original_answer"] for s in flat], cfg.pgd_epsilon, cfg.pgd_step_size, cfg.pgd_steps)
    attacked_images = iter(to_images(adv))
    attacked = {name: [replace(s, image=next(attacked_images)) for s in samples] for name, samples in pairs.items()}
    flat_attacked = [s for samples in attacked.values() for s in samples]
    clean = target.forget_metrics(method, pairs)
    after = target.forget_metrics(method, attacked)
    before_lp, after_lp = mean_logprob(method, flat), mean_logprob(method, flat_attacked)
    return {"epsilon": cfg.pgd_epsilon, "step_size": cfg.pgd_step_size, "steps": cfg.pgd_steps,
            "clean": clean, "attacked": after,
            "answer_logprob_clean": before_lp, "answer_logprob_attacked": after_lp,
            "headline": {"clean CRR": clean["crr"], "CRR under PGD": after["crr"], "leak under PGD": after["leak"],
                         "answer log-prob clean -> PGD": f"{before_lp:.2f} -> {after_lp:.2f}"}}
