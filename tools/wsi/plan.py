"""Which parts of a whole slide a slide run reads: a tissue mask at low resolution, then a grid of tiles at the
working resolution, each with a halo.

The tiles' *cores* partition the slide plane at the working resolution (``tile x tile`` pixels, the last row and
column shorter); a tile is read with ``halo`` more pixels on every side, and a nucleus belongs to the tile whose core
holds its centroid. A nucleus narrower than the halo is therefore segmented whole in the tile that owns it, and
found once, however the grid cuts it (:mod:`pathasst.tools.wsi.segment`). Tiles whose core holds no tissue in the
mask are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pathasst.core.imaging import tissue_mask
from pathasst.core.readers import SlideReader
from pathasst.core.regions import Region

__all__ = ["SlidePlan", "SlideTile", "plan_slide"]

#: the longest side of the thumbnail the tissue mask is computed on, at most
MASK_SIZE = 2048
#: the finest resolution the tissue mask is computed at (um per mask pixel): a small slide's mask costs half its
#: level 0 at most (CMU-1's small region: 0.526 mm^2 of tissue against 0.516 at 0.25 um/px, 2.0 gave 0.543)
MASK_UM_PER_PX = 1.0


@dataclass(frozen=True)
class SlideTile:
    """One tile: its grid position, its core and its read window, both in level-0 pixels (x0, y0, x1, y1)."""

    index: int
    col: int
    row: int
    core: tuple[float, float, float, float]
    window: tuple[int, int, int, int]
    tissue_fraction: float

    def region(self) -> Region:
        x0, y0, x1, y1 = self.window
        return Region(x=x0, y=y0, width=x1 - x0, height=y1 - y0)


@dataclass
class SlidePlan:
    """The tiles of a slide run and what they are measured against (tissue mask, resolutions)."""

    dimensions: tuple[int, int]
    slide_mpp: float
    mpp_assumed: bool
    work_mpp: float
    tile: int
    halo: int
    mask: np.ndarray
    mask_downsample: float
    tiles: list[SlideTile]
    grid: tuple[int, int]
    region: tuple[int, int, int, int] | None = None

    @property
    def downsample(self) -> float:
        """Level-0 pixels per working pixel."""
        return self.work_mpp / self.slide_mpp

    @property
    def tissue_mm2(self) -> float:
        return float(self.mask.sum()) * (self.mask_downsample * self.slide_mpp) ** 2 / 1e6

    @property
    def tissue_megapixels(self) -> float:
        """Tissue area in working pixels (millions): the denominator of the throughput figures."""
        return self.tissue_mm2 * 1e6 / self.work_mpp**2 / 1e6

    def signature(self) -> dict[str, object]:
        """What a resumed run must share with the run it resumes."""
        return {"dimensions": list(self.dimensions), "slide_mpp": self.slide_mpp, "work_mpp": self.work_mpp,
                "tile": self.tile, "halo": self.halo, "tiles": len(self.tiles),
                "region": list(self.region) if self.region else None}


def plan_slide(reader: SlideReader, work_mpp: float, tile: int = 512, halo: int = 32, min_tissue: float = 0.01,
               assumed_mpp: float = 0.5, region: Region | None = None) -> SlidePlan:
    """The tile plan of ``reader``'s slide at ``work_mpp`` um/px; a slide without an mpp is taken to be at
    ``assumed_mpp`` (``mpp_assumed`` says so). Tiles whose core holds less than ``min_tissue`` tissue are left out.
    ``region`` (level 0) limits the plan to that rectangle: the cores tile it, and the mask outside it is cleared
    (so tissue areas and densities are the region's)."""
    if tile < 64 or halo < 0 or halo >= tile:
        raise ValueError(f"tile must be >= 64 px and 0 <= halo < tile (got tile {tile}, halo {halo})")
    slide_mpp = reader.mpp or assumed_mpp
    W, H = reader.dimensions
    thumb, mds = reader.thumbnail(min(MASK_SIZE, max(256, math.ceil(max(W, H) * slide_mpp / MASK_UM_PER_PX))))
    mask = tissue_mask(thumb)
    rx0, ry0, rx1, ry1 = 0, 0, W, H
    if region is not None:
        rx0, ry0 = max(0, region.x), max(0, region.y)
        rx1, ry1 = min(W, region.x + region.width), min(H, region.y + region.height)
        if rx1 <= rx0 or ry1 <= ry0:
            raise ValueError(f"region {region.model_dump()} lies outside the slide ({W}x{H})")
        keep = np.zeros_like(mask)
        keep[int(ry0 / mds) : math.ceil(ry1 / mds), int(rx0 / mds) : math.ceil(rx1 / mds)] = True
        mask &= keep
    ds = work_mpp / slide_mpp
    step = tile * ds  # level-0 pixels per tile core
    cols, rows = math.ceil((rx1 - rx0) / step), math.ceil((ry1 - ry0) / step)
    tiles: list[SlideTile] = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = rx0 + c * step, ry0 + r * step
            x1, y1 = min(rx1, x0 + step), min(ry1, y0 + step)
            m = mask[int(y0 / mds) : max(int(y0 / mds) + 1, math.ceil(y1 / mds)),
                     int(x0 / mds) : max(int(x0 / mds) + 1, math.ceil(x1 / mds))]
            frac = float(m.mean()) if m.size else 0.0
            if frac < min_tissue or not m.any():
                continue
            h = halo * ds
            window = (max(0, math.floor(x0 - h)), max(0, math.floor(y0 - h)), min(W, math.ceil(x1 + h)),
                      min(H, math.ceil(y1 + h)))
            tiles.append(SlideTile(len(tiles), c, r, (x0, y0, x1, y1), window, round(frac, 4)))
    box = (rx0, ry0, rx1 - rx0, ry1 - ry0) if region is not None else None
    return SlidePlan((W, H), slide_mpp, reader.mpp is None, work_mpp, tile, halo, mask, mds, tiles, (cols, rows), box)
