"""Losses shared by the fine-tuning methods (one place, so variants stay tiny)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_nll(model, batch: dict) -> torch.Tensor:
    """Mean token NLL of the target answer (labels are -100 elsewhere)."""
    return model(**batch).loss


def sequence_logprob(model, batch: dict) -> torch.Tensor:
    """Per-sample summed log-probability of the target tokens."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def answer_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over the answer positions only, averaged per token."""
    mask = (labels[:, 1:] != -100).float()
    s = torch.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1) * temperature**2


def npo_loss(logp_current: torch.Tensor, logp_reference: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation: -(2/beta) log sigmoid(-beta * log(pi/pi_ref))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp_current - logp_reference)).mean()
