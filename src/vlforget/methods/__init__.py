"""Unlearning methods; importing this package registers every method.

Every module in this package (and sub-package, e.g. `core`) is imported here, so a
new method only needs its own module with a `@register`-ed class: no list to edit.
"""

import importlib
import pkgutil

from vlforget.methods.base import Method, available_methods, make_method, method_class, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "available_methods", "make_method", "method_class", "register"]
