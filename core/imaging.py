"""Shared image helpers for tools: the ``ImageData`` a tool analyses, and small geometry helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ImageData", "as_rgb_uint8", "by_rows", "fill_holes", "looks_like_he", "open_disk", "tissue_mask"]


@dataclass
class ImageData:
    """Pixels handed to a tool.

    ``pixels`` is an ``(H, W, 3)`` uint8 RGB array. ``origin`` and ``scale`` map array coordinates to the source
    image's level-0 coordinates: ``level0 = origin + array_xy * scale`` (plain images: origin (0, 0), scale 1).
    ``mpp`` is microns per pixel of ``pixels`` (None when unknown).
    """

    pixels: np.ndarray
    name: str = "image"
    mpp: float | None = None
    origin: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    #: the open whole slide these pixels came from (for tools that read tiles themselves, e.g. MIL), else None
    slide: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.pixels = as_rgb_uint8(self.pixels)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def area_mm2(self) -> float | None:
        if self.mpp is None:
            return None
        h, w = self.shape
        return h * w * (self.mpp / 1000.0) ** 2

    def to_level0(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` array (x, y) coordinates to level-0 coordinates of the source image."""
        xy = np.asarray(xy, dtype=float)
        return xy * self.scale + np.asarray(self.origin, dtype=float)


#: rows per band of :func:`by_rows`
BAND_ROWS = 512


def by_rows(fn: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """``fn`` applied to bands of ``BAND_ROWS`` rows of the (equally tall) ``arrays`` and the bands stacked again: a
    per-pixel computation whose float temporaries (``rgb2hed``'s three float64 planes: 400 MB on a 4096 px window)
    stay the size of a band. ``fn`` must be per-pixel (no neighbourhood across rows)."""
    height = arrays[0].shape[0]
    return np.concatenate([fn(*(a[i : i + BAND_ROWS] for a in arrays)) for i in range(0, max(1, height), BAND_ROWS)])


def as_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Return an ``(H, W, 3)`` uint8 RGB view/copy of a grey, RGB or RGBA array."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB(A) or grey image, got array of shape {a.shape}")
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.max(initial=0) <= 1.0:
            a = (a * 255.0).round()
        elif a.dtype == np.uint16:
            a = a / 257.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` of a 2-D mask (same result: a hole is a 4-connected background
    component that does not touch the border), by one labelling instead of scipy's iterated dilation: 5-10x faster
    on a 576 px tile."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    background, n = ndi.label(~mask)
    outside = np.zeros(n + 1, bool)
    outside[0] = True  # label 0 is the mask itself
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    return mask | ~outside[background]


def open_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """``scipy.ndimage.binary_opening(mask, structure=skimage.morphology.disk(radius))`` (same result: outside the
    image counts as background), in OpenCV."""
    import cv2

    r = np.arange(-radius, radius + 1)
    disk = (r[:, None] ** 2 + r[None, :] ** 2 <= radius**2).astype(np.uint8)
    m = np.ascontiguousarray(mask, np.uint8)
    kw = {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
    return cv2.dilate(cv2.erode(m, disk, **kw), disk, **kw).astype(bool)


def tissue_mask(rgb: np.ndarray, min_size: int = 64) -> np.ndarray:
    """Boolean tissue mask of an RGB image: saturation/darkness above an Otsu threshold, small specks removed.

    Works on thumbnails of whole slides and on patches; a blank (all-background) image gives an empty mask.
    """
    from skimage import filters, morphology

    rgb = as_rgb_uint8(rgb)
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0)  # HSV saturation and value, as rgb2hsv gives them
    dark = 1.0 - hi / 255.0
    score = np.maximum(sat, dark * 0.5)
    if float(score.max() - score.min()) < 0.05:  # flat image: nothing to separate
        return np.zeros(rgb.shape[:2], dtype=bool)
    thr = max(float(filters.threshold_otsu(score)), 0.07)
    mask = score > thr
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    mask = morphology.remove_small_holes(mask, max_size=min_size * 4)
    return mask


def looks_like_he(rgb: np.ndarray) -> bool:
    """True unless the image has stained tissue but (almost) no eosin: fewer than 5 % of the pixels with optical
    density > 0.3 have an eosin OD (rgb2hed) above 0.005 (an IHC or other non-H&E stain, or a grey image). Blank
    images count as H&E."""
    from skimage.color import rgb2hed

    rgb = as_rgb_uint8(rgb)
    rgb = rgb[:: max(1, rgb.shape[0] // 512), :: max(1, rgb.shape[1] // 512)]
    tissue = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0).sum(-1) > 0.3
    if int(tissue.sum()) < 100:
        return True
    eosin = rgb2hed(np.clip(rgb, 1, 255).astype(np.uint8))[..., 1]
    return float((eosin[tissue] > 0.005).mean()) >= 0.05
