"""vlforget: continual unlearning for large vision-language models."""

__version__ = "0.1.0"
