"""The viewer's pixel work: which level-0 window a zoom and centre show, reading it, and drawing overlays on it.

No Streamlit here. A whole slide is read window by window through ``SlideReader.read_region`` at the downsample the
view needs (OpenSlide picks the pyramid level), never whole at level 0. Overlays come from the case outputs: the
overlay PNG of a tool call (placed with the call's ``image_origin`` / ``image_scale``) and its GeoJSON features
(level-0 coordinates), drawn per tool call so each can be toggled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ImageInfo", "Layer", "Marker", "ViewResult", "Window", "compose", "window_for", "zoom_levels"]

MAX_FEATURES_DRAWN = 30_000
_DEFAULT_RGB = (255, 200, 0)


@dataclass(frozen=True)
class ImageInfo:
    name: str
    kind: str  # "patch" | "wsi"
    width: int
    height: int
    mpp: float | None = None
    level_downsamples: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class Window:
    """A level-0 rectangle."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Marker:
    """A user-drawn point (``box`` None) or box, level-0 pixels, for ``region_segmentation``."""

    x: int
    y: int
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1


@dataclass
class Layer:
    """What one tool call contributes to the viewer."""

    call_id: str
    tool: str
    image: str
    overlay_path: Path | None = None
    origin: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    features: list[dict[str, Any]] = field(default_factory=list)
    question: int | None = None  # the question (Q1, Q2...) whose analysis made it

    @property
    def label(self) -> str:
        parts = []
        if self.features:
            parts.append(f"{len(self.features)} objects")
        if self.overlay_path is not None:
            parts.append("overlay")
        where = f"Q{self.question} · " if self.question else ""
        return f"{where}{self.tool} ({', '.join(parts) or 'nothing to draw'})"


@dataclass
class ViewResult:
    pixels: np.ndarray
    window: Window
    scale: float  # level-0 pixels per view pixel
    level: int | None = None  # pyramid level read (slides)
    drawn: dict[str, int] = field(default_factory=dict)  # call id -> objects drawn (as the layer counts them)
    painted: list[str] = field(default_factory=list)  # call ids whose overlay image is blended in


def zoom_levels(info: ImageInfo, view_px: int) -> list[float]:
    """Zoom factors from 'whole image' (1) in powers of two up to 4 view pixels per level-0 pixel."""
    top = max(1.0, max(info.width, info.height) * 4 / view_px)
    levels, z = [1.0], 2.0
    while z <= top:
        levels.append(z)
        z *= 2
    return levels


def window_for(info: ImageInfo, zoom: float, cx: float, cy: float) -> Window:
    """The level-0 window of the image seen at ``zoom`` (1 = whole image) centred as near (cx, cy) as fits."""
    zoom = max(1.0, float(zoom))
    w = max(1, min(info.width, round(info.width / zoom)))
    h = max(1, min(info.height, round(info.height / zoom)))
    x = int(min(max(0, round(cx - w / 2)), info.width - w))
    y = int(min(max(0, round(cy - h / 2)), info.height - h))
    return Window(x, y, w, h)


def _rgb(feature: dict[str, Any]) -> tuple[int, int, int]:
    colour = ((feature.get("properties") or {}).get("classification") or {}).get("color")
    if isinstance(colour, (list, tuple)) and len(colour) >= 3:
        return tuple(int(c) for c in colour[:3])  # type: ignore[return-value]
    return _DEFAULT_RGB


def _rings(geometry: dict[str, Any]) -> list[list[list[float]]]:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        return list(coords or [])
    if kind == "MultiPolygon":
        return [ring for poly in coords or [] for ring in poly]
    if kind == "LineString":
        return [coords or []]
    return []


def _points(geometry: dict[str, Any]) -> list[list[float]]:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Point":
        return [coords]
    if kind == "MultiPoint":
        return list(coords or [])
    return []


def _paste_overlay(canvas: Image.Image, layer: Layer, window: Window, scale: float, alpha: float) -> bool:
    """Blend the part of ``layer``'s overlay PNG that falls in ``window``; False when none does."""
    assert layer.overlay_path is not None
    with Image.open(layer.overlay_path) as im:
        ov = im.convert("RGB")
    ox, oy = layer.origin
    s = layer.scale or 1.0
    x0, y0 = max(window.x, ox), max(window.y, oy)
    x1 = min(window.x + window.width, ox + ov.width * s)
    y1 = min(window.y + window.height, oy + ov.height * s)
    if x1 <= x0 or y1 <= y0:
        return False
    crop = ov.crop((int((x0 - ox) / s), int((y0 - oy) / s), math.ceil((x1 - ox) / s), math.ceil((y1 - oy) / s)))
    vx0, vy0 = round((x0 - window.x) / scale), round((y0 - window.y) / scale)
    vw = max(1, round((x1 - x0) / scale))
    vh = max(1, round((y1 - y0) / scale))
    crop = crop.resize((vw, vh), Image.Resampling.NEAREST)
    base = canvas.crop((vx0, vy0, vx0 + vw, vy0 + vh))
    canvas.paste(Image.blend(base, crop, alpha), (vx0, vy0))
    return True


def _draw_features(draw: ImageDraw.ImageDraw, layer: Layer, window: Window, scale: float, budget: int) -> int:
    wx0, wy0 = window.x, window.y
    wx1, wy1 = wx0 + window.width, wy0 + window.height
    radius = max(2, min(5, round(3 / max(scale, 1e-6) ** 0.25)))
    n = 0
    for feat in layer.features:
        if n >= budget:
            break
        geom = feat.get("geometry") or {}
        colour = _rgb(feat)
        seen = False  # one count per feature, however many rings or points it has
        for ring in _rings(geom):
            if len(ring) < 2:
                continue
            xs = [p[0] for p in ring]
            ys = [p[1] for p in ring]
            if max(xs) < wx0 or min(xs) > wx1 or max(ys) < wy0 or min(ys) > wy1:
                continue
            pts = [((x - wx0) / scale, (y - wy0) / scale) for x, y in zip(xs, ys, strict=True)]
            draw.line(pts, fill=(*colour, 255), width=2 if scale < 1 else 1)
            seen = True
        for x, y, *_ in _points(geom):
            if wx0 <= x <= wx1 and wy0 <= y <= wy1:
                vx, vy = (x - wx0) / scale, (y - wy0) / scale
                draw.ellipse((vx - radius, vy - radius, vx + radius, vy + radius), outline=(*colour, 255), width=2)
                seen = True
        n += seen
    return n


def _draw_marker(draw: ImageDraw.ImageDraw, marker: Marker, window: Window, scale: float) -> None:
    yellow = (255, 230, 0, 255)
    if marker.box is not None:
        x0, y0, x1, y1 = marker.box
        draw.rectangle(
            ((x0 - window.x) / scale, (y0 - window.y) / scale, (x1 - window.x) / scale, (y1 - window.y) / scale),
            outline=yellow, width=3,
        )
        return
    vx, vy = (marker.x - window.x) / scale, (marker.y - window.y) / scale
    draw.line(((vx - 12, vy), (vx + 12, vy)), fill=yellow, width=3)
    draw.line(((vx, vy - 12), (vx, vy + 12)), fill=yellow, width=3)
    draw.ellipse((vx - 5, vy - 5, vx + 5, vy + 5), outline=(0, 0, 0, 255), width=2)


def compose(
    base: np.ndarray,
    window: Window,
    scale: float,
    layers: list[Layer],
    marker: Marker | None = None,
    alpha: float = 0.5,
) -> tuple[np.ndarray, dict[str, int]]:
    """Draw the enabled ``layers`` (and the user's marker) over the view ``base``.

    Returns the pixels, the objects drawn per call id (features only, so the count matches the layer's) and the
    call ids whose overlay image was blended in."""
    canvas = Image.fromarray(np.ascontiguousarray(base[..., :3])).convert("RGB")
    drawn: dict[str, int] = {}
    painted: list[str] = []
    for layer in layers:
        if layer.overlay_path is not None and layer.overlay_path.is_file():
            if _paste_overlay(canvas, layer, window, scale, alpha):
                painted.append(layer.call_id)
    ink = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(ink)
    budget = MAX_FEATURES_DRAWN
    for layer in layers:
        n = _draw_features(draw, layer, window, scale, budget)
        budget -= n
        if n:
            drawn[layer.call_id] = drawn.get(layer.call_id, 0) + n
    if marker is not None:
        _draw_marker(draw, marker, window, scale)
    canvas = Image.alpha_composite(canvas.convert("RGBA"), ink).convert("RGB")
    return np.asarray(canvas), drawn, painted
