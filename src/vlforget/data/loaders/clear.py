"""The `clear` loader (format described in `vlforget.data.loaders.persons`)."""

from vlforget.data.loaders.persons import load_clear

__all__ = ["load_clear"]
