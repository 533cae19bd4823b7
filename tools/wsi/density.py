"""Slide-level figures of a nuclei run: nuclei per mm^2 of tissue on a grid, and its heat map over the thumbnail.

The grid's cells are ``cell_um`` wide; a cell's density is its nuclei (by centroid) over the tissue area the mask
gives it, and cells with under ``min_tissue`` tissue are left blank (a cell at the tissue's edge would otherwise show
a few nuclei over a sliver of tissue as a hot spot). :func:`hot_spot` finds the densest window of a given size,
the machinery of a Ki-67 hot-spot search.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathasst.tools.backends.render import colormap, heatmap_overlay
from pathasst.tools.wsi.plan import SlidePlan

__all__ = ["DensityGrid", "density_grid", "hot_spot", "render_heat_map"]


@dataclass
class DensityGrid:
    """Nuclei counts and tissue area per cell; ``density`` in nuclei per mm^2 (NaN where there is too little tissue)."""

    counts: np.ndarray
    tissue_mm2: np.ndarray
    cell_px: float  # level-0 pixels per cell side
    cell_um: float
    density: np.ndarray


def density_grid(plan: SlidePlan, centroids: Iterable[np.ndarray], cell_um: float = 100.0,
                 min_tissue: float = 0.25) -> DensityGrid:
    """Count ``centroids`` (chunks of level-0 ``(n, >=2)`` arrays) on a grid of ``cell_um`` cells."""
    W, H = plan.dimensions
    cell_px = cell_um / plan.slide_mpp
    gw, gh = max(1, int(np.ceil(W / cell_px))), max(1, int(np.ceil(H / cell_px)))
    counts = np.zeros((gh, gw), np.int64)
    for chunk in centroids:
        if len(chunk) == 0:
            continue
        cx = np.clip((chunk[:, 0] / cell_px).astype(np.int64), 0, gw - 1)
        cy = np.clip((chunk[:, 1] / cell_px).astype(np.int64), 0, gh - 1)
        np.add.at(counts, (cy, cx), 1)
    ys, xs = np.nonzero(plan.mask)
    mds = plan.mask_downsample
    tissue_px = np.zeros((gh, gw), np.float64)
    np.add.at(tissue_px, (np.clip(((ys + 0.5) * mds / cell_px).astype(np.int64), 0, gh - 1),
                          np.clip(((xs + 0.5) * mds / cell_px).astype(np.int64), 0, gw - 1)), 1.0)
    tissue_mm2 = tissue_px * (mds * plan.slide_mpp) ** 2 / 1e6
    cell_mm2 = (cell_um / 1000.0) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(tissue_mm2 >= min_tissue * cell_mm2, counts / tissue_mm2, np.nan)
    return DensityGrid(counts, tissue_mm2, cell_px, cell_um, density)


def hot_spot(grid: DensityGrid, size_um: float) -> tuple[float, float, float] | None:
    """The level-0 centre (x, y) and density of the ``size_um`` square window (whole cells) with the most nuclei per
    mm^2 of tissue, counting only windows at least half covered by tissue; None when there is none."""
    k = max(1, int(round(size_um / grid.cell_um)))
    gh, gw = grid.counts.shape
    if k > gh or k > gw:
        k = min(gh, gw)

    def box_sums(a: np.ndarray) -> np.ndarray:
        c = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]

    n, t = box_sums(grid.counts.astype(np.float64)), box_sums(grid.tissue_mm2)
    ok = t >= 0.5 * (k * grid.cell_um / 1000.0) ** 2
    if not ok.any():
        return None
    dens = np.where(ok, n / np.where(t > 0, t, 1), -1.0)
    iy, ix = np.unravel_index(int(np.argmax(dens)), dens.shape)
    return ((ix + k / 2) * grid.cell_px, (iy + k / 2) * grid.cell_px, float(dens[iy, ix]))


def render_heat_map(grid: DensityGrid, thumbnail: np.ndarray, thumb_downsample: float, path: Path,
                    title: str) -> None:
    """The density grid over the slide thumbnail (cells with too little tissue left clear), with a title, a colour
    bar in nuclei per mm^2 and a scale bar, as PNG. Drawn with Pillow on the project's heat-map scale
    (:func:`~pathasst.tools.backends.render.colormap`)."""
    from PIL import Image, ImageDraw, ImageFont

    thumb = np.asarray(thumbnail, dtype=np.uint8)[..., :3]
    h, w = thumb.shape[:2]
    gh, gw = grid.density.shape
    # the grid cell under each thumbnail pixel
    iy = np.minimum((np.arange(h) * thumb_downsample / grid.cell_px).astype(np.int64), gh - 1)
    ix = np.minimum((np.arange(w) * thumb_downsample / grid.cell_px).astype(np.int64), gw - 1)
    dens = grid.density[np.ix_(iy, ix)]
    finite = np.isfinite(dens)
    top = float(np.nanmax(grid.density)) if np.isfinite(grid.density).any() else 0.0
    top = top if top > 0 else 1.0
    body = heatmap_overlay(thumb, np.where(finite, dens / top, 0.0), alpha=0.55, mask=finite)

    font = ImageFont.load_default()
    pad, title_h, bar_w, label_w = 8, 22, 14, 70
    canvas = Image.new("RGB", (w + 2 * pad + bar_w + label_w, h + title_h + 2 * pad + 12), "white")
    canvas.paste(Image.fromarray(body), (pad, title_h + pad))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), title, fill=(0, 0, 0), font=font)
    # scale bar on the image, bottom left
    um_per_px = thumb_downsample * grid.cell_um / grid.cell_px
    bar_um = _nice_length(0.2 * w * um_per_px)
    x0, y0 = pad + int(0.04 * w), title_h + pad + int(0.96 * h)
    draw.rectangle((x0, y0 - 3, x0 + int(round(bar_um / um_per_px)), y0), fill=(0, 0, 0))
    draw.text((x0, y0 - 16), f"{bar_um / 1000:g} mm" if bar_um >= 1000 else f"{bar_um:g} um", fill=(0, 0, 0),
              font=font)
    # colour bar: top of the image = the densest cell
    bx, by = w + 2 * pad, title_h + pad
    ramp = colormap(np.linspace(1.0, 0.0, h))[:, None, :].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(np.ascontiguousarray(ramp)), (bx, by))
    for frac in (1.0, 0.5, 0.0):
        y = by + int(round((1 - frac) * (h - 1)))
        draw.line((bx + bar_w, y, bx + bar_w + 3, y), fill=(0, 0, 0))
        draw.text((bx + bar_w + 5, max(by, min(y - 5, by + h - 11))), f"{frac * top:,.0f}", fill=(0, 0, 0),
                  font=font)
    draw.text((bx, by + h + 1), f"/mm^2 ({grid.cell_um:g} um)", fill=(0, 0, 0), font=font)
    canvas.save(path)


def _nice_length(um: float) -> float:
    for v in (50, 100, 200, 500, 1000, 2000, 5000, 10000):
        if v >= um * 0.6:
            return float(v)
    return 20000.0
