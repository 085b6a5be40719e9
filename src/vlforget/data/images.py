"""Opening user-supplied images: one size limit and one kind of error for every entry point.

`chat --image` and the dataset loaders read images users hand in. A file is checked by
its header before any pixel is decoded, so a 20000 x 20000 image is refused in
milliseconds instead of allocating gigabytes; everything the model sees is resized to
its input size anyway.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 40_000_000  # e.g. 8000 x 5000; larger images are refused before decoding


def open_rgb(source: str | Path | bytes, where: str, unreadable: str = "could not decode image") -> Image.Image:
    """The image at `source` (a path, or the file's bytes) as RGB; ValueError naming `where`
    when it cannot be decoded or has more than `MAX_IMAGE_PIXELS` pixels."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image {where} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} pixels are "
                                 "accepted (the model sees a small resized copy: shrink it first)")
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise ValueError(f"image {where} has more than {MAX_IMAGE_PIXELS:,} pixels (the model sees a small "
                         "resized copy: shrink it first)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as error:
        raise ValueError(f"{unreadable} {where}: {' '.join(str(error).split())}") from None
