"""Relearning: fine-tune the unlearned state a little and see how much comes back.

The attacker holds the deployed model and a few of the forgotten pairs with their
original answers. It fine-tunes the language model's weights (every parameter of the
backbone's language model, including any LoRA a method injected there) with AdamW on
the answers' token-mean NLL, *through the method's inference path*
(`scoring.teacher_forced_logprobs`: gates and refusers stay in place, as deployed),
and leak and CRR are measured on the held-out forget test pairs after k steps.

Three arms, same steps, learning rate, batch size and number of pairs:
- `forget`: the unlearned state on `relearn_fraction` of each applied request's
  forget-train pairs, targets = their original answers;
- `retain_control`: the unlearned state on as many of the requests' retain-train
  pairs (correct answers): what ordinary fine-tuning brings back by itself;
- `base_retain`: the original model on the same retain pairs (the issue's control;
  it shows the level the original model answers at).
`excess_leak` at k = leak(forget, k) - leak(retain_control, k): what relearning brings
back beyond ordinary fine-tuning. Weights are restored after each arm.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import torch

from vlforget.evaluation.attacks.scoring import teacher_forced_logprobs
from vlforget.evaluation.attacks.target import subsample


@contextmanager
def weights_restored(module: torch.nn.Module):
    """Whatever happens inside, the module's parameters (and their requires_grad) come back."""
    saved = {n: (p.detach().clone(), p.requires_grad) for n, p in module.named_parameters()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in module.named_parameters():
                value, flag = saved[n]
                p.copy_(value)
                p.requires_grad_(flag)


def relearn_curve(model, pairs: list[tuple], schedule: list[int], lr: float, batch_size: int, seed: str,
                  measure) -> dict[int, dict]:
    """Fine-tune `model`'s language model on (sample, target) pairs; `measure()` after 0 and each k steps."""
    language_model = model.backbone.language_model
    params = list(language_model.parameters())
    curve = {0: measure()}
    with weights_restored(language_model):
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        rng = random.Random(seed)
        done = 0
        for k in schedule:
            while done < k:
                batch = rng.sample(pairs, min(batch_size, len(pairs)))
                logp, counts = teacher_forced_logprobs(model, [s.image for s, _ in batch],
                                                       [s.instruction for s, _ in batch], [t for _, t in batch])
                loss = -logp.sum() / counts.sum().clamp(min=1)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                done += 1
            curve[k] = measure()
    return curve


def attack_pairs(target) -> tuple[list[tuple], list[tuple]]:
    """(forget pairs with original answers, as many retain pairs with correct answers), per applied request."""
    cfg = target.config
    forget, retain = [], []
    for r in target.applied:
        known = [s for s in r.forget_train if s.meta.get("original_answer")]
        n = max(1, round(cfg.relearn_fraction * len(known))) if known else 0
        forget += [(s, s.meta["original_answer"]) for s in subsample(known, n, f"{cfg.seed}-relearn-{r.name}")]
        answerable = [s for s in r.retain_train if s.answer]
        retain += [(s, s.answer) for s in subsample(answerable, n, f"{cfg.seed}-control-{r.name}")]
    if not forget:
        raise ValueError("the relearning attack needs forget-train pairs with a known original answer")
    if not retain:
        raise ValueError("the relearning attack's control needs retain-train pairs with answers")
    return forget, retain


def run(target) -> dict:
    cfg = target.config
    forget, retain = attack_pairs(target)
    evaluated = target.forget_test()

    def measure_on(model):
        return lambda: {k: v for k, v in target.forget_metrics(model, evaluated).items() if k != "per_request"}

    def curve(model, pairs, arm):
        points = relearn_curve(model, pairs, cfg.relearn_steps, cfg.relearn_lr, cfg.relearn_batch_size,
                               f"{cfg.seed}-{arm}", measure_on(model))
        return {str(k): v for k, v in points.items()}

    arms = {"forget": curve(target.method, forget, "forget"),
            "retain_control": curve(target.method, retain, "retain"),
            "base_retain": curve(target.base(), retain, "retain")}
    excess = {k: (arms["forget"][k]["leak"] - arms["retain_control"][k]["leak"])
              if arms["forget"][k]["leak"] is not None and arms["retain_control"][k]["leak"] is not None else None
              for k in arms["forget"]}
    at = "20" if "20" in arms["forget"] else str(cfg.relearn_steps[-1])
    return {"steps": cfg.relearn_steps, "lr": cfg.relearn_lr, "batch_size": cfg.relearn_batch_size,
            "n_relearn_pairs": len(forget), "n_control_pairs": len(retain), "arms": arms, "excess_leak": excess,
            "headline": {f"leak after {at} steps": arms["forget"][at]["leak"],
                         f"control leak after {at}": arms["retain_control"][at]["leak"],
                         f"excess leak after {at}": excess[at],
                         f"CRR after {at}": arms["forget"][at]["crr"]}}
