"""Overlays and QuPath GeoJSON for the deep backends: boxes, heatmaps, class maps, captions.

Every overlay is an RGB uint8 array of the analysed image's shape; every feature has level-0 coordinates
(see :mod:`pathasst.tools.geojson`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pathasst.core.imaging import ImageData, by_rows
from pathasst.tools.geojson import polygon_feature

__all__ = [
    "outline_overlay",
    "box_features",
    "caption",
    "class_map_overlay",
    "colormap",
    "draw_boxes",
    "heatmap_overlay",
    "level0_to_array",
]

#: anchor colours of the heatmap scale (dark blue -> cyan -> yellow -> red), at 0, 1/3, 2/3, 1
_HEAT_ANCHORS = np.array([[20, 30, 140], [0, 200, 220], [250, 220, 0], [220, 20, 20]], dtype=np.float32)


def level0_to_array(image: ImageData, boxes_level0: np.ndarray) -> np.ndarray:
    """``(N, 4)`` level-0 boxes -> array coordinates of ``image``."""
    ox, oy = image.origin
    return (np.asarray(boxes_level0, dtype=np.float64).reshape(-1, 4) - [ox, oy, ox, oy]) / image.scale


def box_features(
    image: ImageData,
    boxes_level0: np.ndarray,
    classes: Sequence[str],
    scores: Sequence[float],
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One rectangular Polygon detection per box, classified, with its score (and ``extra`` measurements)."""
    feats = []
    for k, (b, name, sc) in enumerate(zip(level0_to_array(image, boxes_level0), classes, scores)):
        x0, y0, x1, y1 = (float(v) for v in b)
        ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        meas = {"Score": round(float(sc), 4), **(dict(extra[k]) if extra else {})}
        feats.append(polygon_feature([ring], image, name, "detection", meas))
    return feats


def draw_boxes(
    image: ImageData, boxes_level0: np.ndarray, colors: Sequence[tuple[int, int, int]], thickness: int = 2
) -> np.ndarray:
    """A copy of the image with each box outlined in its colour."""
    out = np.array(image.pixels, copy=True)
    h, w = out.shape[:2]
    for b, col in zip(level0_to_array(image, boxes_level0), colors):
        x0, y0 = int(np.clip(np.floor(b[0]), 0, w - 1)), int(np.clip(np.floor(b[1]), 0, h - 1))
        x1, y1 = int(np.clip(np.ceil(b[2]) - 1, 0, w - 1)), int(np.clip(np.ceil(b[3]) - 1, 0, h - 1))
        for t in range(thickness):
            ya, yb = min(y0 + t, y1), max(y1 - t, y0)
            xa, xb = min(x0 + t, x1), max(x1 - t, x0)
            out[ya, x0 : x1 + 1] = col
            out[yb, x0 : x1 + 1] = col
            out[y0 : y1 + 1, xa] = col
            out[y0 : y1 + 1, xb] = col
    return out


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 on the heatmap scale."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    lo = np.floor(v).astype(np.int64)
    hi = np.minimum(lo + 1, len(_HEAT_ANCHORS) - 1)
    f = (v - lo)[..., None]
    return np.round(_HEAT_ANCHORS[lo] * (1 - f) + _HEAT_ANCHORS[hi] * f).astype(np.uint8)


def heatmap_overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45, mask: np.ndarray | None = None) -> np.ndarray:
    """The image blended with a heatmap of ``heat`` (values in [0, 1], same H x W); ``mask`` limits the blend.
    Computed in bands of rows (float temporaries of a band, not of the image)."""
    def band(rgb_b: np.ndarray, heat_b: np.ndarray, mask_b: np.ndarray) -> np.ndarray:
        a = np.where(mask_b, alpha, 0.0).astype(np.float32)[..., None]
        out = rgb_b.astype(np.float32) * (1 - a) + colormap(heat_b).astype(np.float32) * a
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    heat = np.asarray(heat)
    return by_rows(band, np.asarray(rgb), heat, np.ones(heat.shape, bool) if mask is None else np.asarray(mask))


def class_map_overlay(rgb: np.ndarray, class_map: np.ndarray, colors: Mapping[int, tuple[int, int, int]], alpha: float = 0.35) -> np.ndarray:
    """The image tinted by class (``colors`` per class index; classes without a colour left as is), outlines drawn."""
    from skimage.segmentation import find_boundaries

    out = np.asarray(rgb, dtype=np.float32).copy()
    edges = find_boundaries(class_map, mode="inner")
    for idx, col in colors.items():
        sel = class_map == idx
        if sel.any():
            out[sel] = out[sel] * (1 - alpha) + np.asarray(col, dtype=np.float32) * alpha
            out[sel & edges] = col
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def caption(rgb: np.ndarray, lines: Sequence[str], color: tuple[int, int, int] = (255, 200, 0)) -> np.ndarray:
    """A copy of the image with a coloured frame and ``lines`` of text in a dark box at the top-left."""
    from PIL import Image, ImageDraw, ImageFont

    out = np.array(rgb, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    t = max(1, min(h, w) // 100)
    out[:t], out[-t:], out[:, :t], out[:, -t:] = color, color, color, color
    im = Image.fromarray(out)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    y = t + 2
    for line in lines:
        x0, y0, x1, y1 = draw.textbbox((t + 4, y), line, font=font)
        draw.rectangle((x0 - 2, y0 - 1, x1 + 2, y1 + 1), fill=(0, 0, 0))
        draw.text((t + 4, y), line, fill=color, font=font)
        y = y1 + 3
        if y >= h:
            break
    return np.asarray(im)


_Color = tuple[int, int, int]


def outline_overlay(rgb: np.ndarray, labels: np.ndarray, colors: dict[int, _Color] | _Color) -> np.ndarray:
    """RGB copy of ``rgb`` with object outlines drawn (one colour, or ``{label: colour}``)."""
    from skimage.segmentation import find_boundaries

    out = np.array(rgb[..., :3], dtype=np.uint8, copy=True)
    edges = find_boundaries(labels, mode="inner")
    if isinstance(colors, tuple):
        out[edges] = colors
        return out
    lut = np.zeros((int(labels.max()) + 1, 3), np.uint8)
    for lab, col in colors.items():
        lut[lab] = col
    out[edges] = lut[labels[edges]]
    return out
