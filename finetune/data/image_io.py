"""Reading one input image for the figure tools (image filter, sub-figure splitter), with typed errors.

Every failure is one of the project's input errors (:mod:`pathasst.core.case_model`), with the file name and the
reason in the message:

* ``UnreadablePathError``: not a file (missing, a folder);
* ``CorruptImageError``: an empty file, a corrupt or truncated image;
* ``FileTooLargeError``: more bytes than ``max_bytes``;
* ``ImageTooLargeError``: more pixels than ``max_pixels`` (checked from the header, before decoding);
* ``UnsupportedFormatError``: not an image (a text file named ``.png``, a PDF ...).

Decoding itself is :func:`pathasst.core.readers.read_patch`, the one the case loader uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathasst.core.case_model import (
    CaseError,
    CorruptImageError,
    FileTooLargeError,
    ImageTooLargeError,
    UnreadablePathError,
    UnsupportedFormatError,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "CaseError",
    "CorruptImageError",
    "FileTooLargeError",
    "ImageTooLargeError",
    "UnreadablePathError",
    "UnsupportedFormatError",
    "as_rgb",
    "load_image",
]

#: defaults: a figure of a paper is far below both (the case loader's own limits are settings)
DEFAULT_MAX_PIXELS = 60_000_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def load_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; a ``CaseError`` subclass (module docstring) when it cannot be used."""
    from pathasst.core.readers import read_patch

    path = Path(path)
    if not path.is_file():
        raise UnreadablePathError(f"{path.name}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise CorruptImageError(f"{path.name}: empty file (0 bytes)")
    if size > max_bytes:
        raise FileTooLargeError(f"{path.name}: {size} bytes exceeds the limit of {max_bytes} bytes")
    return read_patch(path, max_pixels).pixels


def as_rgb(image: np.ndarray | Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image given as a path or an array, as (H, W, 3) uint8; ``CorruptImageError`` for an unusable array."""
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels)
    from pathasst.core.imaging import as_rgb_uint8

    arr = np.asarray(image)
    if arr.size == 0 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise CorruptImageError(f"image array of shape {arr.shape} is not an image")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageTooLargeError(f"image array of {arr.shape[1]}x{arr.shape[0]} pixels exceeds the limit of "
                                 f"{max_pixels} pixels")
    try:
        return as_rgb_uint8(arr)
    except ValueError as exc:
        raise CorruptImageError(f"image array of shape {arr.shape}: {exc}") from exc
