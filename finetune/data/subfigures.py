"""Sub-figure (panel) detection in compound figures: the embedded deterministic splitter, box matching, and
``pathasst-train data split-figure``.

:func:`split_panels` needs no weights:

1. background: of the border's most common colour, white and black, the one that leaves the most empty rows and
   columns (all pixels within ``tol`` of it); on a black or grey background, white counts as background too (the
   white margin of a chart separates it from its neighbours);
2. recursive XY-cut: a region is cut at every run of background rows (or columns), alternating directions, down
   to regions no empty line crosses;
3. fragments too small to be panels (titles, tick labels, panel letters outside their panel, legends) join the
   nearest panel-sized region;
4. seams: a region with no gutter is cut where a straight edge crosses it whole (abutting panels): the two
   columns either side of it are uncorrelated (over the rows) while each is strongly correlated with its other
   neighbour, as within any one image (lines, frames, JPEG block edges and mostly blank columns are not seams);
5. connected components: a region whose foreground falls into several panel-sized components that no straight cut
   separates (non-guillotine layouts) is split into them.

Boxes are ``(x0, y0, x1, y1)`` (end exclusive) in reading order. :func:`match_boxes` scores predictions against
ground truth (unique matching at IoU > 0.5); :func:`split_figure` writes the panel crops and a JSON of boxes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.data.image_io import as_rgb

__all__ = ["Box", "SplitterParams", "box_iou", "match_boxes", "reading_order", "split_figure", "split_panels"]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SplitterParams:
    """Thresholds of :func:`split_panels` (fractions are of the figure's shorter side / area)."""

    tol: int = 14  # max |channel difference| to the background colour of a background pixel
    min_side: float = 0.08  # a panel's shorter side, at least this fraction of the figure's shorter side ...
    min_side_px: int = 24  # ... and at least this many pixels
    min_area: float = 0.012  # a panel's area, at least this fraction of the figure's area
    seam_score: float = 0.45  # a seam's correlation drop (see ``_seam``)
    seam_min_std: float = 6.0  # columns with a smaller grey-level spread are never seams
    seam_max_flat: float = 0.5  # ... nor columns with more than this fraction of white or black pixels


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match_boxes(pred: list[Box], gold: list[Box], iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Unique matching (Hungarian, on IoU) of ``pred`` to ``gold``: (pred index, gold index, IoU) for the pairs
    whose IoU is above ``iou``."""
    if not pred or not gold:
        return []
    from scipy.optimize import linear_sum_assignment

    m = np.array([[box_iou(p, g) for g in gold] for p in pred])
    rows, cols = linear_sum_assignment(-m)
    return [(int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols) if m[r, c] > iou]


def reading_order(boxes: list[Box]) -> list[Box]:
    """Boxes top-to-bottom in rows (a box joins a row when its centre lies within the row's first box), then
    left-to-right."""
    order = sorted(boxes, key=lambda b: (b[1], b[0]))
    rows: list[list[Box]] = []
    for b in order:
        cy = (b[1] + b[3]) / 2
        for row in rows:
            if row[0][1] <= cy <= row[0][3]:
                row.append(b)
                break
        else:
            rows.append([b])
    return [b for row in rows for b in sorted(row, key=lambda k: k[0])]


# --------------------------------------------------------------------------------------------- the splitter
def _background(rgb: np.ndarray, tol: int) -> tuple[np.ndarray, np.ndarray]:
    """(background colour, background mask): the candidate leaving the most empty rows + columns."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    q = border // 8
    keys, counts = np.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2], return_counts=True)
    mode = border[(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2]) == keys[np.argmax(counts)]].mean(0)
    best = None
    for cand in (mode, np.array([255, 255, 255]), np.array([0, 0, 0])):
        bgm = (np.abs(rgb.astype(np.int16) - cand.astype(np.int16)).max(-1) <= tol)
        empty = int(bgm.all(1).sum() + bgm.all(0).sum())
        if best is None or empty > best[0]:
            best = (empty, cand, bgm)
    colour, mask = best[1], best[2]  # type: ignore[index]
    if colour.min() < 255 - tol:  # on a dark or grey background, white (a chart's own margin) separates panels too
        mask = mask | (rgb.min(-1) >= 255 - tol)
    return colour, mask


def _runs(empty: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of non-empty lines."""
    d = np.diff(np.concatenate([[0], (~empty).astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]))


def _empty_lines(fg: np.ndarray, rgb: np.ndarray, axis: int, tol: int) -> np.ndarray:
    """Rows (``axis`` 1) or columns (``axis`` 0) that are all background. (Also taking lines of any one uniform
    colour as empty was tried: it cut charts with a grey plot area between their bars; it is not done.)"""
    return ~fg.any(axis)


def _xy_cut(fg: np.ndarray, rgb: np.ndarray, box: Box, tol: int, depth: int = 0) -> list[Box]:
    """Leaves of the recursive XY-cut of ``box`` (tight boxes of foreground)."""
    x0, y0, x1, y1 = box
    sub, px = fg[y0:y1, x0:x1], rgb[y0:y1, x0:x1]
    rows, cols = _runs(_empty_lines(sub, px, 1, tol)), _runs(_empty_lines(sub, px, 0, tol))
    if not rows or not cols:
        return []
    # tighten
    ty0, ty1, tx0, tx1 = y0 + rows[0][0], y0 + rows[-1][1], x0 + cols[0][0], x0 + cols[-1][1]
    if len(rows) == 1 and len(cols) == 1:
        return [(tx0, ty0, tx1, ty1)]
    if depth > 60:
        return [(tx0, ty0, tx1, ty1)]
    out: list[Box] = []
    # cut along the direction with more pieces first; the other direction is tried on each piece
    if len(rows) >= len(cols):
        for a, b in rows:
            out += _xy_cut(fg, rgb, (tx0, y0 + a, tx1, y0 + b), tol, depth + 1)
    else:
        for a, b in cols:
            out += _xy_cut(fg, rgb, (x0 + a, ty0, x0 + b, ty1), tol, depth + 1)
    return out


def _is_panel(b: Box, shape: tuple[int, int], p: SplitterParams) -> bool:
    h, w = shape
    side = min(b[2] - b[0], b[3] - b[1])
    return side >= max(p.min_side_px, p.min_side * min(h, w)) and (b[2] - b[0]) * (b[3] - b[1]) >= p.min_area * h * w


def _gap(a: Box, b: Box) -> float:
    dx = max(0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0, max(a[1], b[1]) - min(a[3], b[3]))
    return float(np.hypot(dx, dy))


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _merge_small(leaves: list[Box], shape: tuple[int, int], p: SplitterParams) -> list[Box]:
    big = [b for b in leaves if _is_panel(b, shape, p)]
    small = [b for b in leaves if not _is_panel(b, shape, p)]
    if not big:
        return [_bbox_all(leaves)] if leaves else []
    grown = list(big)
    for s in sorted(small, key=lambda s: min(_gap(s, b) for b in big)):
        k = int(np.argmin([_gap(s, b) for b in big]))
        grown[k] = _union(grown[k], s)
    return _resolve_overlaps(grown)


def _bbox_all(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _resolve_overlaps(boxes: list[Box]) -> list[Box]:
    """Boxes that grew into each other (a long title joined to one panel) are merged."""
    boxes = list(boxes)
    changed = True
    while changed:
        changed = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
                if inter > 0.2 * min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])):
                    boxes[i] = _union(a, b)
                    del boxes[j]
                    changed = True
                    break
            if changed:
                break
    return boxes


def _seam(rgb: np.ndarray, box: Box, axis: int, shape: tuple[int, int], p: SplitterParams) -> int | None:
    """Position of the strongest straight seam across ``box`` (``axis`` 1: a vertical seam, between columns), or
    None. Neighbouring columns of one image are strongly correlated (over the rows); the two columns either side
    of the edge between two abutting images are not. Score at x = min(corr(x-1, x), corr(x+1, x+2)) - corr(x, x+1)
    on grey levels, in each quarter of the rows (the second weakest counts: an inset is no seam); columns
    that are nearly constant (lines, frames) or mostly white or black (charts, text) are never seams."""
    x0, y0, x1, y1 = box
    sub = rgb[y0:y1, x0:x1]
    if axis == 0:
        sub = sub.transpose(1, 0, 2)
    n = sub.shape[1]
    minw = max(p.min_side_px, int(p.min_side * min(shape)))
    if n < 2 * minw + 2 or sub.shape[0] < 16:
        return None
    g = sub.astype(np.float32).mean(-1)
    flat = ((sub.min(-1) > 235) | (sub.max(-1) < 20)).mean(0)
    parts = []
    # the seam must cross the region whole: scored in each quarter of the rows (a JPEG-blurred edge may move by
    # one column), the second weakest quarter counts (a label box on the seam may spoil one)
    chunks = np.array_split(np.arange(g.shape[0]), 4 if g.shape[0] >= 64 else 1)
    for rows in chunks:
        z = g[rows] - g[rows].mean(0)
        sd = np.sqrt((z ** 2).mean(0))
        usable = (sd > p.seam_min_std) & (flat < p.seam_max_flat)
        z = z / np.maximum(sd, 1e-3)
        c = np.where(usable[:-1] & usable[1:], (z[:, :-1] * z[:, 1:]).mean(0), 0.0)  # c[x] = corr(col x, x+1)
        part = np.full(n - 1, -1.0)
        part[1:-1] = np.minimum(c[:-2], c[2:]) - c[1:-1]
        part[1:-1] = np.maximum(np.maximum(part[:-2], part[2:]), part[1:-1])
        parts.append(part)
    score = np.sort(np.stack(parts), axis=0)[min(1, len(parts) - 1)]
    lo, hi = minw - 1, n - minw - 1
    if hi <= lo:
        return None
    k = lo + int(np.argmax(score[lo:hi]))
    return k + 1 if score[k] >= p.seam_score else None  # the seam lies between column k and k + 1


def _split_seams(rgb: np.ndarray, box: Box, shape: tuple[int, int], p: SplitterParams, depth: int = 0) -> list[Box]:
    if depth > 8:
        return [box]
    x0, y0, x1, y1 = box
    cuts = []
    for axis in (1, 0):
        at = _seam(rgb, box, axis, shape, p)
        if at is not None:
            cuts.append((axis, at))
    if not cuts:
        return [box]
    axis, at = cuts[0]
    if axis == 1:
        parts = [(x0, y0, x0 + at, y1), (x0 + at, y0, x1, y1)]
    else:
        parts = [(x0, y0, x1, y0 + at), (x0, y0 + at, x1, y1)]
    return [b for part in parts for b in _split_seams(rgb, part, shape, p, depth + 1)]


def _components(fg: np.ndarray, box: Box, shape: tuple[int, int], p: SplitterParams) -> list[Box]:
    """Panel-sized connected components of the foreground in ``box`` (small ones join the nearest), or [box]."""
    from scipy import ndimage as ndi

    x0, y0, x1, y1 = box
    lab, n = ndi.label(fg[y0:y1, x0:x1], structure=np.ones((3, 3), bool))
    if n < 2:
        return [box]
    objs = ndi.find_objects(lab)
    comps = [(x0 + s[1].start, y0 + s[0].start, x0 + s[1].stop, y0 + s[0].stop) for s in objs if s is not None]
    comps = _resolve_overlaps(comps)  # an inset inside its panel, a lumen inside tissue: one component
    if sum(_is_panel(c, shape, p) for c in comps) < 2:
        return [box]
    merged = _merge_small(comps, shape, p)
    return merged if len(merged) >= 2 else [box]


def split_panels(image: np.ndarray | Path | str, params: SplitterParams | None = None) -> list[Box]:
    """Panel boxes of a figure (module docstring), in reading order; a figure of one panel gives one box."""
    p = params or SplitterParams()
    rgb = as_rgb(image)
    shape = rgb.shape[:2]
    _, bg = _background(rgb, p.tol)
    fg = ~bg
    if not fg.any():
        return []
    leaves = _xy_cut(fg, rgb, (0, 0, shape[1], shape[0]), p.tol)
    panels = _merge_small(leaves, shape, p)
    out: list[Box] = []
    for b in panels:
        for s in _split_seams(rgb, b, shape, p):
            out += _components(fg, s, shape, p)
    return reading_order(out)


# ----------------------------------------------------------------------------------------------- the command
def split_figure(image: Path, out_dir: Path, boxes: list[Box] | None = None, backend: str = "deterministic",
                 weights: Path | None = None, imgsz: int = 320) -> dict[str, Any]:
    """Split ``image`` into panels and write ``out_dir/STEM_pN.png`` crops and ``out_dir/STEM_panels.json``
    (``{"image", "size", "backend", "panels": [{"file", "box"}]}``). ``backend`` "yolo" needs ``weights``."""
    from PIL import Image

    rgb = as_rgb(Path(image))
    if boxes is None:
        if backend == "yolo":
            from pathasst.finetune.data.subfig_yolo import predict_yolo

            if weights is None:
                raise ValueError("the yolo backend needs --weights (a subfig-train best.pt)")
            boxes = predict_yolo(weights, [rgb], imgsz=imgsz)[0]
        elif backend == "deterministic":
            boxes = split_panels(rgb)
        else:
            raise ValueError(f"unknown backend {backend!r}; valid: deterministic, yolo")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(image).stem
    panels = []
    for i, b in enumerate(boxes, start=1):
        name = f"{stem}_p{i}.png"
        Image.fromarray(rgb[b[1] : b[3], b[0] : b[2]]).save(out_dir / name)
        panels.append({"file": name, "box": [int(v) for v in b]})
    doc = {"image": Path(image).name, "size": [rgb.shape[1], rgb.shape[0]], "backend": backend, "panels": panels}
    (out_dir / f"{stem}_panels.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return doc
