"""MLLMEraser (arXiv 2510.04217): training-free activation steering, gated per query.

An erasure direction in a decoder layer's hidden state (the mean activation where the
model refuses minus the mean activation where it recalls a forget answer, with forget
images perturbed by PGD to recall harder) is added at the last prompt position of the
queries an input-aware gate flags: a logistic probe on that same activation, forget
pairs vs the request's retain pairs and general pairs. The model's weights never
change; the steering hook is installed only for the duration of `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlforget.configs import option
from vlforget.methods.base import Method, MethodConfig, register
from vlforget.methods.hooks import decoder_layer, installed, layer_states
from vlforget.methods.samples import images_of, instructions_of
from vlforget.text import is_refusal
from vlforget.types import DeletionRequest, Sample


def fit_logistic(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced L2 logistic regression by full-batch L-BFGS (deterministic); returns (w, b)."""
    w = torch.zeros(x.shape[1], requires_grad=True, device=x.device)
    b = torch.zeros(1, requires_grad=True, device=x.device)
    weight = torch.where(y > 0.5, 0.5 / y.sum().clamp(min=1), 0.5 / (1 - y).sum().clamp(min=1))
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = (weight * F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).sum()
        loss = loss + penalty * (w * w).sum()
        loss.backward()
        return loss
    optimiser.step(closure)
    return w.detach(), b.detach()


@dataclass
class MLLMEraserConfig(MethodConfig):
    layer: int = option(2, "decoder layer whose output is read (gate) and steered (0-based)")
    strength: float = option(1.0, "alpha in h + alpha * direction at the last prompt position of gated queries")
    refusal_pool: int = option(1500, "general pairs scanned for the model's own refusals (the erasure side)")
    attack_steps: int = option(5, "PGD steps perturbing forget images so the model recalls its answer harder")
    attack_epsilon: float = option(0.1, "L-inf bound of that perturbation, in normalised pixel units")
    gate_negatives: int = option(300, "general pairs added to the request's retain pairs as gate negatives")
    gate_penalty: float = option(1.0, "L2 penalty of the gate probe (on standardised activations)")
    gate_threshold: float = option(0.5, "gate probability above which a query is steered")

    def __post_init__(self) -> None:
        if self.strength <= 0 or self.refusal_pool < 1 or self.attack_steps < 0 or not 0 < self.gate_threshold < 1:
            raise ValueError("strength > 0, refusal_pool >= 1, attack_steps >= 0 and 0 < gate_threshold < 1 required")


@register
class MLLMEraser(Method):
    name = "mllmeraser"
    reads = ("forget", "retain", "general")
    # It steers toward the model's own generic decline ("sorry, there is no star in the image."),
    # never toward the request's refusal sentences, so its CRR can only be 0: it is compared,
    # and tuned, on leak, AR and S like the other methods that do not teach a refusal.
    refuses = False
    description = ("MLLMEraser: training-free activation steering along a refusing-minus-recalling direction, "
                   "applied only to queries an activation probe gates in")
    config_class = MLLMEraserConfig

    def __init__(self, backbone, config=None):
        super().__init__(backbone, config)
        self.erase_mean: torch.Tensor | None = None  # [H] mean activation of the model's own refusals
        self.directions: list[torch.Tensor] = []  # [H] per request
        self.gates: list[tuple[torch.Tensor, ...]] = []  # (mean, std, w, b) per request
        self.last_gated: torch.Tensor | None = None  # which rows of the last prefill were steered

    def last_prompt_states(self, batch: dict) -> torch.Tensor:
        """[B, H]: the layer output at the last prompt position (left padding puts it last)."""
        with torch.no_grad():
            return layer_states(self.backbone, batch, self.config.layer)[:, -1].float()

    def refusal_activations(self) -> torch.Tensor:
        """The erasure side: where the original model itself refuses (general should-decline pairs).

        Our tiny model cannot follow a "please refuse" instruction the way the paper's
        LLaVA can, so the refusing state is read where the model refuses on its own.
        """
        pool = self.general_pool(self.config.refusal_pool, f"inference-methods-{self.config.seed}")
        answers = self.backbone.generate(images_of(pool), instructions_of(pool))
        refusing = [s for s, a in zip(pool, answers) if is_refusal(a)]
        if not refusing:
            raise ValueError(f"the model refused none of {len(pool)} general pairs; MLLMEraser needs refusing "
                             "activations (raise refusal_pool)")
        return self.last_prompt_states(self.backbone.build_batch(images_of(refusing), instructions_of(refusing)))

    def recall_activations(self, samples: list[Sample]) -> torch.Tensor:
        """The recall side: forget queries whose images are perturbed (PGD) to make the model's answer likelier."""
        cfg = self.config
        answers = self.backbone.generate(images_of(samples), instructions_of(samples))  # what the model recalls now
        batch = self.backbone.build_batch(images_of(samples), instructions_of(samples), answers)
        pixels = batch.pop("pixel_values")
        delta = torch.zeros_like(pixels, requires_grad=True)
        step = cfg.attack_epsilon / max(1, cfg.attack_steps) * 2.5
        for _ in range(cfg.attack_steps):
            loss = self.backbone.model(**batch, pixel_values=pixels + delta).loss
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta - step * grad.sign()).clamp(-cfg.attack_epsilon, cfg.attack_epsilon).detach().requires_grad_(True)
        batch.pop("labels")
        prompt = self.backbone.build_batch(images_of(samples), instructions_of(samples))
        prompt["pixel_values"] = (pixels + delta).detach()
        return self.last_prompt_states(prompt)

    def _unlearn(self, request: DeletionRequest) -> None:
        cfg = self.config
        if self.erase_mean is None:
            self.erase_mean = self.refusal_activations().mean(0)
        forget = self.recall_activations(request.forget_train)
        self.directions.append(self.erase_mean - forget.mean(0))
        # Input-aware gate: a probe on the same activation, forget pairs vs hard negatives + general pairs.
        negatives = request.retain_train + self.general_pool(
            cfg.gate_negatives, f"inference-methods-{cfg.seed + 1 + len(self.applied)}")
        clean_forget = self.last_prompt_states(self.backbone.build_batch(images_of(request.forget_train),
                                                                         instructions_of(request.forget_train)))
        neg = self.last_prompt_states(self.backbone.build_batch(images_of(negatives), instructions_of(negatives)))
        x = torch.cat([clean_forget, neg])
        mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
        y = torch.cat([torch.ones(len(clean_forget), device=x.device), torch.zeros(len(neg), device=x.device)])
        w, b = fit_logistic((x - mean) / std, y, cfg.gate_penalty)
        self.gates.append((mean, std, w, b))

    def gate_probabilities(self, states: torch.Tensor) -> torch.Tensor:
        """[B, T] probability that each query belongs to each request."""
        return torch.stack([torch.sigmoid(((states - m) / s) @ w + b) for m, s, w, b in self.gates], dim=1)

    def _steer(self, module, args, output):
        if output.shape[1] == 1:
            return None  # a decoding step: the prompt was steered at prefill and lives on in the KV cache
        probability, which = self.gate_probabilities(output[:, -1].float()).max(1)
        on = probability >= self.config.gate_threshold
        self.last_gated = on
        if not on.any():
            return None
        steered = output.clone()
        steered[on, -1] += self.config.strength * torch.stack(self.directions)[which[on]].to(output.dtype)
        return steered

    def generate(self, images, instructions, **kwargs) -> list[str]:
        if not self.directions:
            return self.backbone.generate(images, instructions, **kwargs)
        layer = decoder_layer(self.backbone, self.config.layer)
        with installed(lambda: layer.register_forward_hook(self._steer)):
            return self.backbone.generate(images, instructions, **kwargs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {} if self.erase_mean is None else {"erase_mean": self.erase_mean}
        for i, (direction, gate) in enumerate(zip(self.directions, self.gates)):
            out[f"direction.{i}"] = direction
            out.update({f"gate.{i}.{k}": v for k, v in zip(("mean", "std", "w", "b"), gate)})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.erase_mean = tensors.get("erase_mean")
        n = len(self.applied)
        self.directions = [tensors[f"direction.{i}"] for i in range(n)]
        self.gates = [tuple(tensors[f"gate.{i}.{k}"] for k in ("mean", "std", "w", "b")) for i in range(n)]
