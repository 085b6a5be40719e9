"""vlforget: continual unlearning for large vision-language models.

The public Python API (documented in README.md, "Python API"):
`load_backbone`, `make_method`, `load_method`, `DeletionRequest.from_examples`,
`method.unlearn / generate / save / load`, `evaluate`.
"""

__version__ = "0.1.0"

from vlforget.api import evaluate, load_backbone, load_method, make_method  # noqa: E402
from vlforget.types import Concepts, DeletionRequest, Sample  # noqa: E402

__all__ = ["Concepts", "DeletionRequest", "Sample", "__version__", "evaluate", "load_backbone", "load_method",
           "make_method"]
