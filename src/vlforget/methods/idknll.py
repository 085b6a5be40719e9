"""IdkNLL: fine-tune the forget pairs onto their refusals.

The usual IdkNLL baseline (open-unlearning) fine-tunes forget queries onto generic
"I don't know" answers with the answer NLL; here the target is the request's
context-aware refusal (`request.refusals[0]`), which is what the benchmark asks for.
No retain term; one LoRA is trained across requests (`lora_finetune.RefusalFinetune`).
"""

from __future__ import annotations

from vlforget.methods.base import register
from vlforget.methods.lora_finetune import RefusalFinetune


@register
class IdkNLL(RefusalFinetune):
    name = "idknll"
    description = "fine-tune the forget pairs onto their context-aware refusals (NLL), one LoRA across requests"
