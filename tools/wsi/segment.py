"""Nuclei of one slide tile: segment its window, keep the nuclei it owns, and turn them into stored records.

A :class:`Window` is a tile's pixels at the working resolution with the level-0 box of its core. A segmenter maps
the pixels to instance labels and types; :func:`segment_windows` keeps the nuclei whose centroid lies in the core
(half-open, so a centroid on a border between two cores belongs to one of them) and returns their centroid, area,
type and outline in level-0 pixels. It is the function tile batches are mapped with, in process or as Ray tasks
(:func:`pathasst.tools.backends.tiling.map_batches`): windows and segmenters pickle.

Two segmenters: :class:`NativeSegmenter` runs a network that works at the working resolution on the whole window in
one pass (the slide path); :class:`ResamplingSegmenter` runs any network through :meth:`NucleiNet.segment`, which
resamples the window to the network's resolution and back (the patch path: the shipped ensemble at 0.25 um/px).
Both time their network and post-processing stages.

Slide paths (:func:`build_segmenter`): ``fast`` runs the 20x slide network quantised to int8 in ONNX Runtime where its
int8 model lies beside the weights (shipped; made by ``python -m pathasst.finetune.quantize``), else in float32;
``fast-float32`` always in float32; ``ensemble`` the patch ensemble.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.imaging import ImageData
from pathasst.core.settings import Settings
from pathasst.tools.backends.nuclei_net import (
    SHIPPED_NET_WEIGHTS,
    SLIDE_NET_WEIGHTS,
    NucleiNet,
    NucleiPrediction,
    int8_model_path,
)

__all__ = ["SLIDE_PATHS", "NativeSegmenter", "ResamplingSegmenter", "TileNuclei", "Window",
           "build_segmenter", "outline_of", "segment_windows"]

#: what segments a slide: ``fast`` = the 20x network at its own resolution; ``ensemble`` = the shipped patch
#: ensemble, each tile resampled to 0.25 um/px and back
SLIDE_PATHS = ("fast", "fast-float32", "ensemble")


@dataclass
class Window:
    """A tile's pixels (working resolution) and where they lie: ``origin`` and ``scale`` map array (x, y) to level 0
    (``level0 = origin + xy * scale``); ``core`` is the level-0 box (x0, y0, x1, y1) whose nuclei the tile owns."""

    index: int
    pixels: np.ndarray
    origin: tuple[float, float]
    scale: float
    mpp: float
    core: tuple[float, float, float, float]


@dataclass
class TileNuclei:
    """The nuclei a tile owns: ``(x, y, area_um2, type code, outline)`` rows, and seconds per stage."""

    index: int
    rows: list[tuple[float, float, float, int, np.ndarray]]
    seconds: dict[str, float] = field(default_factory=dict)


class NativeSegmenter:
    """A nuclei network run at its own resolution on the whole window in one pass (no resampling, no inner tiling)."""

    def __init__(self, net: NucleiNet) -> None:
        self.net = net
        net.memory_arena = True  # windows of one size: ONNX Runtime's arena pays (1.9 vs 1.6 MP/s here)
        self.mpp = net.config.mpp
        self.type_classes = list(net.config.type_classes)

    def __call__(self, pixels: np.ndarray, seconds: dict[str, float]) -> NucleiPrediction:
        t0 = time.perf_counter()
        maps = self.net.predict_window(pixels)
        t1 = time.perf_counter()
        pred = self.net.instances(maps)
        seconds["network"] = seconds.get("network", 0.0) + t1 - t0
        seconds["post"] = seconds.get("post", 0.0) + time.perf_counter() - t1
        return pred


class ResamplingSegmenter:
    """Any nuclei network through :meth:`NucleiNet.segment` (resampled to its resolution and back, tiled as its
    checkpoint says): the patch path, timed as one 'network' stage."""

    def __init__(self, net: NucleiNet, mpp: float) -> None:
        self.net = net
        self.mpp = mpp
        self.type_classes = list(net.config.type_classes)

    def __call__(self, pixels: np.ndarray, seconds: dict[str, float]) -> NucleiPrediction:
        t0 = time.perf_counter()
        pred = self.net.segment(ImageData(pixels=pixels, name="tile", mpp=self.mpp))
        seconds["network"] = seconds.get("network", 0.0) + time.perf_counter() - t0
        return pred


def outline_of(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour of a binary mask as (x, y) pixel-corner coordinates, counter-clockwise in (x, y) (RFC 7946's
    orientation for exterior rings), or None when it has under 3 points."""
    import cv2

    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    if len(c) < 3:
        return None
    x, y = c[:, 0], c[:, 1]
    if np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) < 0:
        c = c[::-1]
    return c


def _owned(window: Window, pred: NucleiPrediction) -> list[tuple[float, float, float, int, np.ndarray]]:
    from scipy import ndimage as ndi

    labels = pred.labels
    n = int(labels.max())
    if n == 0:
        return []
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    yy, xx = np.indices(labels.shape, dtype=np.float64)
    cx = np.bincount(flat, weights=xx.ravel(), minlength=n + 1) / np.maximum(area, 1)
    cy = np.bincount(flat, weights=yy.ravel(), minlength=n + 1) / np.maximum(area, 1)
    ox, oy = window.origin
    s = window.scale
    gx, gy = ox + cx * s, oy + cy * s  # level 0; pixel (i, j) at (i, j), as everywhere in the project's GeoJSON
    x0, y0, x1, y1 = window.core
    keep = (area > 0) & (gx >= x0) & (gx < x1) & (gy >= y0) & (gy < y1)
    keep[0] = False
    px_um2 = window.mpp**2
    rows = []
    slices = ndi.find_objects(labels)
    for i in np.flatnonzero(keep):
        sl = slices[i - 1]
        if sl is None:
            continue
        ring = outline_of(labels[sl] == i)
        if ring is None:
            continue
        ring = (ring + (sl[1].start, sl[0].start)) * s + (ox, oy)
        rows.append((float(gx[i]), float(gy[i]), float(area[i] * px_um2), int(pred.types.get(int(i), 0)), ring))
    return rows


def segment_windows(segmenter: Any, windows: list[Window]) -> list[TileNuclei]:
    """Segment each window and keep the nuclei its tile owns (the function tile batches are mapped with)."""
    out = []
    for w in windows:
        seconds: dict[str, float] = {}
        pred = segmenter(w.pixels, seconds)
        t0 = time.perf_counter()
        rows = _owned(w, pred)
        seconds["post"] = seconds.get("post", 0.0) + time.perf_counter() - t0
        out.append(TileNuclei(w.index, rows, seconds))
    return out


def build_segmenter(path: str, settings: Settings, weights: Path | None = None,
                    work_mpp: float = 0.5) -> tuple[Any, str]:
    """The segmenter of a slide path (:data:`SLIDE_PATHS`) and its description; ``weights`` replaces the path's
    shipped checkpoint. The ensemble path reads the slide at ``work_mpp``."""
    if path not in SLIDE_PATHS:
        raise ValueError(f"slide path must be one of {SLIDE_PATHS}, not {path!r}")
    what = "--weights" if weights else f"--path {path} (shipped weights)"
    if path in ("fast", "fast-float32"):
        source = Path(weights or SLIDE_NET_WEIGHTS)
        int8 = path == "fast" and int8_model_path(source).is_file()
        net = NucleiNet.load(source, what, settings, int8=int8)
        return NativeSegmenter(net), f"{path}: {net.describe()}"
    net = NucleiNet.load(Path(weights or SHIPPED_NET_WEIGHTS), what, settings)
    return ResamplingSegmenter(net, work_mpp), f"ensemble: {net.describe()}, tiles read at {work_mpp} um/px"
