"""`none`: the base model with nothing forgotten, the reference row of every comparison.

Its AR, leak and S on each view are what the model does before any unlearning (how
much of a method's AR drop is the model itself, e.g. on unseen phrasings).
"""

from __future__ import annotations

from vlforget.methods.base import Method, register
from vlforget.types import DeletionRequest


@register
class NoUnlearning(Method):
    """The base model, nothing forgotten: the reference row for AR, leak and S."""

    name = "none"

    reads = ()  # nothing: the base model
    description = "the base model, nothing forgotten (reference row for AR, leak and S)"
    refuses = False  # it answers forget pairs as before; CRR/dRR would only measure that

    def _unlearn(self, request: DeletionRequest) -> None:
        pass  # deliberately nothing: the requests are recorded as applied, the model is unchanged
