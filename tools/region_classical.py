"""The embedded classical backend of ``region_segmentation``: seeded segmentation on optical density (stain-agnostic
brightfield), from a point (:func:`segment_point`: a star-shaped outline found by dynamic programming along rays) or
a box (:func:`segment_box`: two colour clusters, the one filling the box centre). See the tool's module docstring."""

from __future__ import annotations

import numpy as np

from pathasst.core.imaging import fill_holes

__all__ = ["MIN_CONTRAST_OD", "optical_density", "segment_box", "segment_point"]


_N_RAYS = 96


_STEP = 2  # pixels averaged on each side of a candidate boundary


_MIN_RADIUS = 3


_SIGMA = 1.0


_NEAR_BIAS = 0.5  # share of the typical edge strength subtracted at max_radius (tuned on CoNSeP)


MIN_CONTRAST_OD = 0.01  # mean optical-density step across the outline below which nothing was found


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Smoothed optical density ``-log10(I / 255)`` per channel (what stains add linearly)."""
    from skimage.filters import gaussian

    smooth = gaussian(rgb.astype(np.float32) / 255.0, sigma=_SIGMA, channel_axis=-1, preserve_range=True)
    return -np.log10(np.clip(smooth, 1.0 / 255.0, 1.0))


def _dp_closed_path(score: np.ndarray, max_step: int = 1) -> np.ndarray:
    """Radius index per ray maximising ``score[ray, r]`` with |r[i+1] - r[i]| <= max_step, closed around.

    Closure is approximated by running over the rays three times and keeping the middle pass.
    """
    n_rays, n_r = score.shape
    tiled = np.concatenate([score, score, score], axis=0)
    acc = tiled[0].copy()
    back = np.zeros(tiled.shape, dtype=np.int64)
    idx = np.arange(n_r)
    for i in range(1, len(tiled)):
        best = np.full(n_r, -np.inf)
        arg = idx.copy()
        for s in range(-max_step, max_step + 1):
            src = np.clip(idx + s, 0, n_r - 1)
            cand = np.where((idx + s >= 0) & (idx + s < n_r), acc[src], -np.inf)
            better = cand > best
            best[better] = cand[better]
            arg[better] = src[better]
        acc = best + tiled[i]
        back[i] = arg
    path = np.zeros(len(tiled), dtype=np.int64)
    path[-1] = int(np.argmax(acc))
    for i in range(len(tiled) - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path[n_rays : 2 * n_rays]


def segment_point(rgb: np.ndarray, x: int, y: int, max_radius: int) -> tuple[np.ndarray, float, bool]:
    """Segment the compact object around array pixel ``(x, y)``.

    Returns ``(mask, boundary_contrast, reached_limit)``: the boolean mask (same H x W as ``rgb``), the mean
    optical-density step across the outline, and whether the outline touched ``max_radius`` or the image edge.
    """
    from scipy import ndimage as ndi
    from skimage.draw import polygon

    h, w = rgb.shape[:2]
    margin = max_radius + _STEP + 4
    wy0, wy1, wx0, wx1 = max(0, y - margin), min(h, y + margin + 1), max(0, x - margin), min(w, x + margin + 1)
    od = optical_density(rgb[wy0:wy1, wx0:wx1])
    cy, cx = y - wy0, x - wx0
    wh, ww = od.shape[:2]

    theta = np.linspace(0.0, 2.0 * np.pi, _N_RAYS, endpoint=False)
    radii = np.arange(0, max_radius + _STEP + 1, dtype=np.float64)
    ys = cy + np.sin(theta)[:, None] * radii[None, :]
    xs = cx + np.cos(theta)[:, None] * radii[None, :]
    inside = (ys >= 0) & (ys <= wh - 1) & (xs >= 0) & (xs <= ww - 1)
    profile = np.stack(
        [ndi.map_coordinates(od[..., c], [ys, xs], order=1, mode="nearest") for c in range(3)], axis=-1
    )  # rays x radii x 3
    # the direction in OD space in which the surroundings differ from the object at the point
    centre = profile[:, : _MIN_RADIUS + 1].reshape(-1, 3).mean(axis=0)
    ring = profile[:, max_radius // 2 : max_radius + 1][inside[:, max_radius // 2 : max_radius + 1]]
    direction = (ring.mean(axis=0) if len(ring) else centre) - centre
    direction /= np.linalg.norm(direction) + 1e-12

    n_r = max_radius + 1
    score = np.full((_N_RAYS, n_r), -1e3)
    for r in range(_MIN_RADIUS, n_r):
        step = profile[:, r : r + _STEP].mean(axis=1) - profile[:, max(0, r - _STEP) : r].mean(axis=1)
        score[:, r] = step @ direction
    score[~inside[:, :n_r]] = -1e3
    # a mild preference for the nearest boundary: subtract a share of the typical edge strength, growing with radius
    best_per_ray = score[:, _MIN_RADIUS:].max(axis=1)
    typical = float(np.median(best_per_ray[best_per_ray > -1e2])) if np.any(best_per_ray > -1e2) else 0.0
    penalty = _NEAR_BIAS * max(typical, 0.0) * np.arange(n_r) / max_radius
    path = _dp_closed_path(score - penalty[None, :], max_step=1)
    on_path = score[np.arange(_N_RAYS), path]
    valid = on_path > -1e2
    contrast = float(np.mean(on_path[valid])) if valid.any() else 0.0
    reached = bool(np.any(path >= max_radius) or np.any(~inside[np.arange(_N_RAYS), np.minimum(path + 1, n_r - 1)]))

    mask = np.zeros((h, w), dtype=bool)
    rr, cc = polygon(wy0 + cy + np.sin(theta) * path, wx0 + cx + np.cos(theta) * path, (h, w))
    mask[rr, cc] = True
    mask[y, x] = True
    return mask, max(contrast, 0.0), reached


def segment_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float, bool]:
    """Segment the object filling the centre of array box ``(x0, y0, x1, y1)`` (end-exclusive).

    Returns ``(mask, boundary_contrast, reached_limit)`` as :func:`segment_point` does; ``reached_limit`` is True
    when the object touches the box edge.
    """
    from scipy import ndimage as ndi
    from scipy.cluster.vq import kmeans2, vq

    x0, y0, x1, y1 = box
    h, w = rgb.shape[:2]
    pad = _STEP + 2  # context around the box, for the contrast across the object's edge
    cy0, cy1, cx0, cx1 = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
    od_ctx = optical_density(rgb[cy0:cy1, cx0:cx1])
    inbox = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
    od = od_ctx[inbox]
    bh, bw = od.shape[:2]
    flat = od.reshape(-1, 3).astype(np.float64)
    rng = np.random.default_rng(0)
    sample = flat if len(flat) <= 50_000 else flat[rng.choice(len(flat), 50_000, replace=False)]
    centroids, _ = kmeans2(sample, 2, seed=rng, minit="++")
    labels = vq(flat, centroids)[0].reshape(bh, bw)

    rim_w = max(1, int(round(0.05 * min(bh, bw))))
    rim = np.ones((bh, bw), dtype=bool)
    rim[rim_w:-rim_w, rim_w:-rim_w] = False
    core = np.zeros((bh, bw), dtype=bool)
    core[bh // 4 : bh - bh // 4, bw // 4 : bw - bw // 4] = True
    gain = [float((labels[core] == c).mean() - (labels[rim] == c).mean()) for c in (0, 1)]
    fg = labels == int(np.argmax(gain))
    fg = fill_holes(ndi.binary_opening(fg, structure=np.ones((3, 3), dtype=bool)))
    comps, n = ndi.label(fg)
    mask = np.zeros((h, w), dtype=bool)
    if n == 0:
        return mask, 0.0, False
    overlap = ndi.sum(core, comps, index=np.arange(1, n + 1))
    obj = comps == 1 + int(np.argmax(overlap))
    mask[y0:y1, x0:x1] = obj
    obj_ctx = np.zeros(od_ctx.shape[:2], dtype=bool)
    obj_ctx[inbox] = obj
    inner = ndi.binary_erosion(obj_ctx, iterations=_STEP)
    outer = ndi.binary_dilation(obj_ctx, iterations=_STEP) & ~obj_ctx
    contrast = 0.0
    if inner.any() and outer.any():
        contrast = float(np.linalg.norm(od_ctx[inner].mean(axis=0) - od_ctx[outer].mean(axis=0)))
    reached = bool(obj[0].any() or obj[-1].any() or obj[:, 0].any() or obj[:, -1].any())
    return mask, contrast, reached
