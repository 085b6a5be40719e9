"""CORE (concept-aware refusers), the main method; registered as `core`."""

from vlforget.methods.core.config import CoreConfig
from vlforget.methods.core.method import Core

__all__ = ["Core", "CoreConfig"]
