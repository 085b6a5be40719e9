"""The `mllmu` loader (format described in `vlforget.data.loaders.persons`)."""

from vlforget.data.loaders.persons import load_mllmu

__all__ = ["load_mllmu"]
