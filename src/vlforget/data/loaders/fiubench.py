"""The `fiubench` loader (format described in `vlforget.data.loaders.persons`)."""

from vlforget.data.loaders.persons import load_fiubench

__all__ = ["load_fiubench"]
