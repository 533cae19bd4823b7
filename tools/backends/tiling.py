"""The one tiler of the deep backends: a tile grid with overlap, blended stitching of dense maps, box merging.

* :func:`tile_grid` covers an ``H x W`` image with ``tile x tile`` windows overlapping by at least ``overlap`` pixels;
  the last window of a row/column is flush with the image edge, so every window is full-size when the image is at
  least one tile large (a smaller image is one window of its own size).
* :class:`Stitcher` blends per-tile dense maps (probabilities, logits): each tile's values are weighted by a window
  that ramps linearly from ~0 to 1 over the overlap on the sides shared with another tile and stays 1 on the image's
  own edges; the result is the weighted mean, so a constant map stitches to exactly that constant.
* :func:`merge_boxes` merges detections of different tiles in **level-0 coordinates**: greedy, by score, a box
  absorbs the lower-scoring boxes of *other* tiles that overlap it (IoU above ``iou`` or intersection over the
  smaller box above ``ios``: a box cut by a tile border lies inside the full box of the neighbouring tile). The merged
  box is the best-scoring member that does not touch an inner tile border, or the union of the members when all
  of them do. Boxes of the same tile are never merged here (the detector's own NMS has ruled on them), so a tiled run
  equals a single pass wherever objects do not cross tile borders.
* :func:`detect_tiled` and :func:`dense_tiled` run a detector / dense predictor over the grid in batches. The batches
  go through the current *tile mapper* (:func:`use_tile_mapper`): in-process by default; the Ray executor installs
  one that sends them out as Ray tasks, so one large slide is spread over a cluster (results come back in order, so
  the stitched output is the same).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from pathasst.core.deadline import check_deadline
from pathasst.core.imaging import ImageData

__all__ = [
    "Detections",
    "MergedBox",
    "Stitcher",
    "Tile",
    "TiledDetections",
    "box_iou_ios",
    "blend_window",
    "dense_tiled",
    "detect_tiled",
    "map_batches",
    "merge_boxes",
    "tile_grid",
    "use_tile_mapper",
]

TileMapper = Callable[[Callable[[list[np.ndarray]], object], list[list[np.ndarray]]], Iterator[object]]
_TILE_MAPPER: contextvars.ContextVar[TileMapper | None] = contextvars.ContextVar("pathasst_tile_mapper", default=None)


@contextlib.contextmanager
def use_tile_mapper(mapper: TileMapper | None) -> Iterator[None]:
    """Within the block, the tilers map their predict function over tile batches with ``mapper(fn, batches)``
    (an iterator of results in batch order). None restores in-process mapping."""
    token = _TILE_MAPPER.set(mapper)
    try:
        yield
    finally:
        _TILE_MAPPER.reset(token)


def _map_batches(fn: Callable[[list[np.ndarray]], object], rgb: np.ndarray, chunks: list[list[Tile]]) -> Iterator:
    """Results of ``fn`` per tile batch, in order; the call's deadline is checked before each batch is taken."""
    mapper = _TILE_MAPPER.get()
    if mapper is None:
        results: Iterator = (fn([t.crop(rgb) for t in chunk]) for chunk in chunks)
    else:
        results = mapper(fn, [[np.ascontiguousarray(t.crop(rgb)) for t in chunk] for chunk in chunks])
    return _until_deadline(results)


def map_batches(fn: Callable[[list], object], batches: list[list]) -> Iterator:
    """``fn`` over ready-made ``batches`` (any picklable items, e.g. a slide run's tile windows) through the current
    tile mapper, results in batch order; in-process when none is installed. The deadline is checked per batch."""
    mapper = _TILE_MAPPER.get()
    return _until_deadline((fn(b) for b in batches) if mapper is None else mapper(fn, batches))


def _until_deadline(results: Iterator) -> Iterator:
    """``results`` with the deadline checked before each item is taken (a lazy map computes it on ``next``)."""
    results = iter(results)
    while True:
        check_deadline()
        try:
            item = next(results)
        except StopIteration:
            return
        yield item


@dataclass(frozen=True)
class Tile:
    """A window ``[x0, x1) x [y0, y1)`` of the image (array pixels) and which of its sides border another tile."""

    index: int
    x0: int
    y0: int
    x1: int
    y1: int
    inner_left: bool = False
    inner_top: bool = False
    inner_right: bool = False
    inner_bottom: bool = False

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def crop(self, arr: np.ndarray) -> np.ndarray:
        return arr[self.y0 : self.y1, self.x0 : self.x1]


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile, stride))
    if not starts or starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Windows of ``tile`` px overlapping by at least ``overlap`` px covering an image of ``shape`` = (H, W)."""
    h, w = int(shape[0]), int(shape[1])
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty image of shape {shape}")
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    tiles = []
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            tiles.append(
                Tile(
                    index=len(tiles),
                    x0=x,
                    y0=y,
                    x1=min(x + tile, w),
                    y1=min(y + tile, h),
                    inner_left=i > 0,
                    inner_top=j > 0,
                    inner_right=i < len(xs) - 1,
                    inner_bottom=j < len(ys) - 1,
                )
            )
    return tiles


def _ramp(n: int, ramp: int, start_inner: bool, end_inner: bool) -> np.ndarray:
    w = np.ones(n, dtype=np.float64)
    r = max(1, min(ramp, n // 2))
    up = (np.arange(r) + 0.5) / r  # strictly positive: every pixel keeps some weight
    if start_inner:
        w[:r] = np.minimum(w[:r], up)
    if end_inner:
        w[n - r :] = np.minimum(w[n - r :], up[::-1])
    return w


def blend_window(t: Tile, ramp: int) -> np.ndarray:
    """Blending weights ``(h, w)`` of tile ``t``: linear ramps of ``ramp`` px on its inner sides, 1 elsewhere."""
    wy = _ramp(t.height, ramp, t.inner_top, t.inner_bottom)
    wx = _ramp(t.width, ramp, t.inner_left, t.inner_right)
    return (wy[:, None] * wx[None, :]).astype(np.float32)


class Stitcher:
    """Accumulates per-tile ``(C, h, w)`` maps into one ``(C, H, W)`` map by window-weighted averaging.

    ``dtype`` is the accumulator's and the result's: float16 halves the memory of a large map (a 4096 px window of 14
    channels: 470 MB instead of 940 MB) for maps of bounded values (probabilities, HV maps; it holds up to 65,504) at
    about 1e-3 relative error."""

    def __init__(self, shape: tuple[int, int], channels: int, ramp: int, dtype: np.dtype | type = np.float32) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.ramp = int(ramp)
        self._acc = np.zeros((channels, *self.shape), dtype=dtype)
        self._wsum = np.zeros(self.shape, dtype=np.float32)

    def add(self, t: Tile, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32)
        if values.shape[1:] != (t.height, t.width) or values.shape[0] != self._acc.shape[0]:
            raise ValueError(f"tile {t.index} values have shape {values.shape}, expected ({self._acc.shape[0]}, {t.height}, {t.width})")
        w = blend_window(t, self.ramp)
        ys, xs = t.slices
        self._acc[:, ys, xs] += values * w[None]
        self._wsum[ys, xs] += w

    def result(self) -> np.ndarray:
        """The averaged map, normalised in place (no second ``(C, H, W)`` copy); the stitcher is spent afterwards."""
        if not np.all(self._wsum > 0):
            raise ValueError("some pixels were covered by no tile")
        acc, self._acc = self._acc, None
        for c in range(acc.shape[0]):  # channel by channel: no float32 temporary of the whole map
            np.divide(acc[c], self._wsum, out=acc[c], casting="unsafe")
        return acc


def dense_tiled(
    rgb: np.ndarray,
    predict: Callable[[list[np.ndarray]], Sequence[np.ndarray]],
    channels: int,
    tile: int,
    overlap: int,
    batch: int = 4,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Run ``predict`` (list of ``(h, w, 3)`` tiles -> list of ``(C, h, w)`` maps) over the grid; stitched ``(C, H, W)``
    of ``dtype`` (see :class:`Stitcher`)."""
    tiles = tile_grid(rgb.shape[:2], tile, overlap)
    st = Stitcher(rgb.shape[:2], channels, ramp=max(1, overlap), dtype=dtype)
    chunks = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
    for chunk, outs in zip(chunks, _map_batches(predict, rgb, chunks), strict=True):
        for t, out in zip(chunk, outs, strict=True):
            st.add(t, out)
    return st.result()


# ---- detections --------------------------------------------------------------------------------------------------
@dataclass
class Detections:
    """Boxes ``(N, 4)`` [x0, y0, x1, y1], scores ``(N,)``, classes ``(N,)`` and optional per-box masks.

    ``masks[i]`` is a boolean array covering ``boxes[i]`` rounded outwards (``mask_origins[i]`` = its top-left pixel
    in the same coordinates as the boxes' array frame).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    masks: list[np.ndarray] | None = None
    mask_origins: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class MergedBox:
    """A detection after cross-tile merging: box (level 0), score, class, and the indices it merged."""

    box: tuple[float, float, float, float]
    score: float
    cls: int
    members: tuple[int, ...]
    representative: int | None  # member whose box was kept (None: the box is the union of the members)


def box_iou_ios(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection-over-smaller-area between box ``a`` (4,) and boxes ``b`` (M, 4)."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a = max((a[2] - a[0]) * (a[3] - a[1]), 1e-9)
    area_b = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    return inter / (area_a + area_b - inter), inter / np.minimum(area_a, area_b)


def merge_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    tile_ids: np.ndarray,
    truncated: np.ndarray,
    iou: float = 0.5,
    ios: float = 0.8,
    class_aware: bool = True,
) -> list[MergedBox]:
    """Merge detections of different tiles (boxes in level-0 coordinates). See the module docstring."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    tile_ids = np.asarray(tile_ids, dtype=np.int64)
    truncated = np.asarray(truncated, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    taken = np.zeros(len(scores), dtype=bool)
    merged: list[MergedBox] = []
    for i in order:
        if taken[i]:
            continue
        taken[i] = True
        cand = np.flatnonzero(~taken & (tile_ids != tile_ids[i]))
        if class_aware:
            cand = cand[classes[cand] == classes[i]]
        members = [int(i)]
        if cand.size:
            ov_iou, ov_ios = box_iou_ios(boxes[i], boxes[cand])
            hit = cand[(ov_iou > iou) | (ov_ios > ios)]
            # one member per tile: a tile's other boxes are distinct objects by its own NMS
            seen = {int(tile_ids[i])}
            for j in hit[np.argsort(-scores[hit], kind="stable")]:
                if int(tile_ids[j]) not in seen:
                    seen.add(int(tile_ids[j]))
                    members.append(int(j))
                    taken[j] = True
        whole = [m for m in members if not truncated[m]]
        if whole:
            rep: int | None = max(whole, key=lambda m: scores[m])
            box = boxes[rep]
        else:
            rep = None if len(members) > 1 else members[0]
            sel = boxes[members]
            box = np.array([sel[:, 0].min(), sel[:, 1].min(), sel[:, 2].max(), sel[:, 3].max()])
        merged.append(
            MergedBox(
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                score=float(scores[i]),
                cls=int(classes[i]),
                members=tuple(members),
                representative=rep,
            )
        )
    return merged


def _touches_inner_edge(t: Tile, box: np.ndarray, tol: float) -> bool:
    """Whether a box (tile coordinates) reaches a side of ``t`` that borders another tile."""
    return bool(
        (t.inner_left and box[0] <= tol)
        or (t.inner_top and box[1] <= tol)
        or (t.inner_right and box[2] >= t.width - tol)
        or (t.inner_bottom and box[3] >= t.height - tol)
    )


@dataclass
class TiledDetections:
    """Merged detections: level-0 and array boxes, scores, classes, and per-object masks (array frame) if any."""

    boxes_level0: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: list[np.ndarray] | None
    mask_origins: list[tuple[int, int]] | None
    n_tiles: int


def detect_tiled(
    image: ImageData,
    detect: Callable[[list[np.ndarray]], Sequence[Detections]],
    tile: int,
    overlap: int,
    batch: int = 8,
    iou: float = 0.5,
    ios: float = 0.8,
    edge_tol: float = 2.0,
    class_aware: bool = True,
) -> TiledDetections:
    """Run ``detect`` over the tile grid of ``image.pixels`` and merge across tiles in level-0 coordinates.

    ``detect`` takes a list of ``(h, w, 3)`` uint8 tiles and returns one :class:`Detections` per tile, in tile pixel
    coordinates. Masks, when given, are merged with their boxes: a merged object keeps its representative's mask, or
    the union of its members' masks.
    """
    rgb = image.pixels
    tiles = tile_grid(rgb.shape[:2], tile, overlap)
    all_boxes, all_scores, all_classes, all_tiles, all_trunc = [], [], [], [], []
    all_masks: list[np.ndarray] = []
    all_origins: list[tuple[int, int]] = []
    has_masks = False
    chunks = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
    for chunk, outs in zip(chunks, _map_batches(detect, rgb, chunks), strict=True):
        for t, det in zip(chunk, outs, strict=True):
            if len(det) == 0:
                continue
            b = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4)
            b = np.clip(b, 0, [t.width, t.height, t.width, t.height])
            all_trunc += [_touches_inner_edge(t, bb, edge_tol) for bb in b]
            all_boxes.append(b + [t.x0, t.y0, t.x0, t.y0])
            all_scores.append(np.asarray(det.scores, dtype=np.float64))
            all_classes.append(np.asarray(det.classes, dtype=np.int64))
            all_tiles.append(np.full(len(b), t.index))
            if det.masks is not None and det.mask_origins is not None:
                has_masks = True
                all_masks += list(det.masks)
                all_origins += [(ox + t.x0, oy + t.y0) for ox, oy in det.mask_origins]
    if not all_boxes:
        empty = np.zeros((0, 4))
        return TiledDetections(empty, empty, np.zeros(0), np.zeros(0, np.int64), [] if has_masks else None,
                               [] if has_masks else None, len(tiles))
    boxes = np.concatenate(all_boxes)
    corners = image.to_level0(boxes.reshape(-1, 2)).reshape(-1, 4)
    merged = merge_boxes(
        corners, np.concatenate(all_scores), np.concatenate(all_classes), np.concatenate(all_tiles),
        np.asarray(all_trunc), iou=iou, ios=ios, class_aware=class_aware,
    )
    lvl0 = np.array([m.box for m in merged], dtype=np.float64).reshape(-1, 4)
    ox, oy = image.origin
    arr = (lvl0 - [ox, oy, ox, oy]) / image.scale
    masks: list[np.ndarray] | None = None
    origins: list[tuple[int, int]] | None = None
    if has_masks:
        masks, origins = [], []
        for m in merged:
            if m.representative is not None:
                masks.append(all_masks[m.representative])
                origins.append(all_origins[m.representative])
            else:
                mk, org = _union_masks([all_masks[k] for k in m.members], [all_origins[k] for k in m.members])
                masks.append(mk)
                origins.append(org)
    return TiledDetections(
        boxes_level0=lvl0,
        boxes=arr,
        scores=np.array([m.score for m in merged]),
        classes=np.array([m.cls for m in merged], dtype=np.int64),
        masks=masks,
        mask_origins=origins,
        n_tiles=len(tiles),
    )


def _union_masks(masks: list[np.ndarray], origins: list[tuple[int, int]]) -> tuple[np.ndarray, tuple[int, int]]:
    x0 = min(o[0] for o in origins)
    y0 = min(o[1] for o in origins)
    x1 = max(o[0] + m.shape[1] for m, o in zip(masks, origins))
    y1 = max(o[1] + m.shape[0] for m, o in zip(masks, origins))
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for m, (ox, oy) in zip(masks, origins):
        out[oy - y0 : oy - y0 + m.shape[0], ox - x0 : ox - x0 + m.shape[1]] |= m
    return out, (x0, y0)
