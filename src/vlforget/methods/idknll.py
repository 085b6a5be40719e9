"""IdkNLL: fine-tune the forget pairs onto their refusals, and the retain pairs onto their answers.

The standard IdkNLL baseline (open-unlearning's `IdkNLL`) is the NLL of an "I don't
know" answer on forget queries plus the NLL of the retain answers (its `retain_loss`,
weight 1). Here the forget target is the request's context-aware refusal (the answer
its forget pairs carry, `request.refusals[0]`), which is what the benchmark asks for,
and the retain term is `retain_weight` x the answer NLL of the request's retain pairs
(default 1; 0, `use_retain=False` or a request without retain pairs = forget NLL only).
Without the retain term one LoRA trained on refusals alone refuses nearly everything
(validation, 3 requests: AR Last 0.0, over-refusal 91.7; docs/methods.md). One LoRA is
trained across requests (`lora_finetune.RefusalFinetune`, which holds the loss).
"""

from __future__ import annotations

from vlforget.methods.base import register
from vlforget.methods.lora_finetune import RefusalFinetune


@register
class IdkNLL(RefusalFinetune):
    name = "idknll"
    reads = ("forget", "retain")  # forget pairs -> refusal NLL; retain pairs -> their answers' NLL
    description = "fine-tune forget pairs onto their context-aware refusals + retain pairs onto their answers (NLL)"
    uses_retain = True  # the loss (forget + retain NLL) is RefusalFinetune's, shared with ewc
