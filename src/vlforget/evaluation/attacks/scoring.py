"""Log-probabilities of given answers *through a method's own inference path*.

Methods that act at inference (CORE's gated refusers, the expert baselines' routes,
MLLMEraser's steering, ECO's prompt corruption) install their hooks inside
`method.generate` and then call `backbone.generate`. To score an answer "as deployed"
we call `method.generate` as usual and swap the backbone's `generate` (an instance
attribute shadows the class method for the duration) for a scorer: every hook the
method installs is live while the scorer runs, and the method's gate decides exactly
as it would for a real query. Methods that change weights (LoRA, edits) need nothing
special: their weights are simply the ones in the model.

Two scorers:
- `deployed_logprobs` (no gradients): *forced decoding*. `model.generate` runs the
  prompt's prefill and then one decoding step per answer token, with a logits
  processor that records the raw log-probability of the next answer token and forces
  it. Hooks therefore see the prefill and the decoding steps exactly as in a real
  generation (MLLMEraser steers the last prompt position at prefill only; ECO corrupts
  the prompt only); the answer is the one given, not the one the model would pick.
- `teacher_forced_logprobs` (differentiable, for PGD and relearning): one forward of
  prompt + answer with labels, under the same hooks (for PGD also through the
  method's `torch.no_grad()` blocks, see `no_grad_lifted`). For methods whose hooks act on
  the whole input (CORE, the expert baselines, the weight-changing methods) this is the
  same computation; for MLLMEraser (steers the *last* position) and ECO (corrupts every
  position) it differs from deployment, which docs/metrics.md states.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

ChunkScorer = Callable[[list, list, list], list]


@contextmanager
def backbone_generate_replaced(backbone, chunk_scorer: ChunkScorer, targets: Sequence):
    """Inside: `backbone.generate(images, instructions, batch_size=64, ...)` calls
    `chunk_scorer(images, instructions, targets)` per chunk of `batch_size` (the chunks
    `Backbone.generate` uses, so per-chunk hooks such as CORE's see the same batches),
    taking targets in order. Yields a list that collects the chunk scorer's outputs."""
    collected: list = []
    cursor = {"at": 0}

    def scoring_generate(images, instructions, batch_size: int = 64, **_ignored):
        answers = []
        for start in range(0, len(images), batch_size):
            ims, ins = list(images[start:start + batch_size]), list(instructions[start:start + batch_size])
            at = cursor["at"]
            if at + len(ims) > len(targets):
                raise RuntimeError("the method generated for more queries than were given to score")
            collected.extend(chunk_scorer(ims, ins, list(targets[at:at + len(ims)])))
            cursor["at"] = at + len(ims)
            answers += [""] * len(ims)
        return answers

    backbone.generate = scoring_generate  # instance attribute: shadows Backbone.generate
    try:
        yield collected
    finally:
        del backbone.generate


def through_method(method, images, instructions, targets, chunk_scorer: ChunkScorer) -> list:
    """Run `chunk_scorer` under `method`'s inference hooks for every (image, instruction, target)."""
    images, instructions = list(images), list(instructions)
    if not (len(images) == len(instructions) == len(targets)):
        raise ValueError("images, instructions and targets must have the same length")
    with backbone_generate_replaced(method.backbone, chunk_scorer, targets) as collected:
        method.generate(images, instructions)
    if len(collected) != len(targets):
        raise RuntimeError(f"scored {len(collected)} of {len(targets)} queries; the method generated "
                           "for fewer queries than it was given")
    return collected


class ForceAnswer(LogitsProcessor):
    """Records log p(next answer token) from the raw logits, then forces that token."""

    def __init__(self, answers: list[list[int]], eos: int):
        self.answers = answers
        self.eos = eos
        self.step = 0
        self.logprobs: list[list[float]] = [[] for _ in answers]

    def __call__(self, input_ids, scores):
        logp = torch.log_softmax(scores.float(), dim=-1)
        forced = torch.full_like(scores, float("-inf"))
        for row, answer in enumerate(self.answers):
            token = answer[self.step] if self.step < len(answer) else self.eos
            if self.step < len(answer):
                self.logprobs[row].append(float(logp[row, token]))
            forced[row, token] = 0.0
        self.step += 1
        return forced


def forced_decoding_scorer(backbone) -> ChunkScorer:
    """Chunk scorer: per query, the list of log-probs of its answer tokens (eos excluded)."""
    eos = backbone.tokenizer.eos_token_id

    @torch.no_grad()
    def score(images, instructions, targets):
        answers = backbone.encode_text(targets)
        batch = backbone.build_batch(images, instructions)
        # `scores` handed to processors are the raw logits under greedy decoding with no
        # other processors (no temperature, no repetition penalty is configured).
        forcer = ForceAnswer(answers, eos)
        backbone.model.generate(**batch, max_new_tokens=max(len(a) for a in answers) + 1, do_sample=False,
                                num_beams=1, logits_processor=LogitsProcessorList([forcer]),
                                pad_token_id=backbone.tokenizer.pad_token_id, eos_token_id=eos)
        return [torch.tensor(lp) for lp in forcer.logprobs]
    return score


def deployed_logprobs(method, images, instructions, targets) -> list[torch.Tensor]:
    """Per query, the log-probabilities of the target's tokens as the deployed method scores them."""
    return through_method(method, images, instructions, targets, forced_decoding_scorer(method.backbone))


def teacher_forced_scorer(backbone) -> ChunkScorer:
    """Chunk scorer: per query, the differentiable summed log-prob of the target tokens (+ eos),
    and its token count, from one forward of prompt + target."""
    def score(images, instructions, targets):
        batch = backbone.build_batch(images, instructions, targets)
        labels = batch.pop("labels")[:, 1:]
        logits = backbone.model(**batch).logits[:, :-1].float()
        mask = labels != -100
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums = (logp * mask).sum(-1)
        return [(sums[i], int(mask[i].sum())) for i in range(len(targets))]
    return score


class _KeepGradients(contextlib.ContextDecorator):
    """Stands in for torch.no_grad: does nothing, as a context manager or a decorator."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@contextmanager
def no_grad_lifted():
    """Inside, `with torch.no_grad():` blocks run *with* gradients (decorators applied at import
    time are not affected). A white-box attacker runs the inference code without the blocks that
    only save memory; keeping them would hide the gradient (gradient masking, Athalye et al. 2018):
    CORE, for one, computes its gated refuser mixture inside `torch.no_grad()`, so no gradient
    reaches the pixels through the deployed path."""
    original = torch.no_grad
    torch.no_grad = _KeepGradients
    try:
        yield
    finally:
        torch.no_grad = original


def teacher_forced_logprobs(method, images, instructions, targets,
                            lift_no_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] summed target log-probs with gradients, [B] target token counts) under the method's hooks;
    `lift_no_grad`: also through the method's `torch.no_grad()` blocks (`no_grad_lifted`)."""
    with torch.enable_grad(), (no_grad_lifted() if lift_no_grad else contextlib.nullcontext()):
        scored = through_method(method, images, instructions, targets, teacher_forced_scorer(method.backbone))
    return torch.stack([s for s, _ in scored]), torch.tensor([n for _, n in scored])
