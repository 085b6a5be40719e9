"""Unlearning methods; importing this package registers every method."""

from vlforget.methods import classic  # noqa: F401  (idknll, ga, graddiff, kl, npo, ewc, lwf)
from vlforget.methods import core  # noqa: F401  (core: concept-aware refusers, the main method)
from vlforget.methods.base import Method, available_methods, make_method, method_class, register

__all__ = ["Method", "available_methods", "make_method", "method_class", "register"]
