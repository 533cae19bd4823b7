"""A whole-slide nuclei run: tissue tiles streamed through a segmenter into an on-disk store, resumable.

    run = SlideNucleiRun(slide, out_dir, segmenter)
    summary = run.run(progress=callback)

The output folder holds ``nuclei.sqlite`` (:class:`~pathasst.tools.wsi.store.NucleiStore`), written tile by tile;
``nuclei.geojson`` (QuPath detections), ``density.png`` (heat map of nuclei per mm^2 of tissue over the thumbnail)
and ``summary.json`` (counts, density, type composition, hot spot, seconds per stage, throughput) are written at
the end. A run killed at any point is resumed by running it again with the same output folder: finished tiles are
read back, not recomputed. Tiles go through :func:`~pathasst.tools.backends.tiling.map_batches`, so under the Ray
executor's tile mapper they run as Ray tasks.

Memory stays bounded whatever the slide: the plan (a tissue mask of at most 2048 px and the tile list), one group
of windows in flight, and the density grid; nuclei go to disk as their tile finishes.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pathasst.core.files import atomic_write_text
from pathasst.core.readers import SlideReader
from pathasst.core.regions import Region
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.tiling import map_batches
from pathasst.tools.wsi.density import density_grid, hot_spot, render_heat_map
from pathasst.tools.wsi.plan import SlidePlan, SlideTile, plan_slide
from pathasst.tools.wsi.segment import TileNuclei, Window, segment_windows
from pathasst.tools.wsi.store import NucleiStore

__all__ = ["HOT_SPOT_UM", "SlideNucleiRun"]

#: side of the hot-spot window: about one high-power field (0.237 mm^2 ~ 487 um square)
HOT_SPOT_UM = 500.0

Progress = Callable[[int, int, int], None]  # (tiles done, tiles in all, nuclei so far)


class SlideNucleiRun:
    """One slide, one segmenter, one output folder (see the module docstring)."""

    def __init__(self, slide: Path, out_dir: Path, segmenter: Any, *, tile: int = 512, halo: int = 32,
                 mpp: float | None = None, assumed_mpp: float = 0.5, batch: int = 2, group: int = 8,
                 description: str = "", restart: bool = False, region: Region | None = None) -> None:
        self.slide, self.out_dir, self.segmenter = Path(slide), Path(out_dir), segmenter
        self.tile, self.halo, self.mpp, self.assumed_mpp = tile, halo, mpp, assumed_mpp
        self.batch, self.group = max(1, batch), max(1, group)
        self.description, self.restart, self.region = description, restart, region

    def _signature(self, plan: SlidePlan) -> dict[str, Any]:
        st = self.slide.stat()
        return {"slide": self.slide.name, "slide_bytes": st.st_size, **plan.signature(),
                "segmenter": self.description}

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        seconds = {"tissue_mask": 0.0, "read": 0.0, "read_wait": 0.0, "network": 0.0, "post": 0.0, "write": 0.0,
                   "export": 0.0}
        started = time.perf_counter()
        with SlideReader(self.slide, mpp=self.mpp) as reader, NucleiStore(self.out_dir / "nuclei.sqlite") as store:
            t0 = time.perf_counter()
            plan = plan_slide(reader, self.segmenter.mpp, self.tile, self.halo, assumed_mpp=self.assumed_mpp,
                              region=self.region)
            seconds["tissue_mask"] = time.perf_counter() - t0
            store.bind(self._signature(plan), ["Unknown", *self.segmenter.type_classes], restart=self.restart)
            store.set_meta("slide_path", str(self.slide))
            done = store.done_tiles()
            resumed = len(done)
            todo = [t for t in plan.tiles if t.index not in done]
            total, finished, processed_mp = len(plan.tiles), resumed, 0.0
            if progress:
                progress(finished, total, store.count())
            segment = functools.partial(segment_windows, self.segmenter)
            step = self.batch * self.group
            groups = [todo[g : g + step] for g in range(0, len(todo), step)]
            # the next group's windows are read in a thread while this group's are segmented (OpenSlide decodes
            # outside the GIL); one group ahead at most, so memory stays bounded
            with ThreadPoolExecutor(1, thread_name_prefix="slide-read") as pool:
                ahead = pool.submit(self._read_group, reader, plan, groups[0]) if groups else None
                for i, group in enumerate(groups):
                    t0 = time.perf_counter()
                    windows, read_s = ahead.result()
                    seconds["read"] += read_s
                    seconds["read_wait"] += time.perf_counter() - t0
                    if i + 1 < len(groups):
                        ahead = pool.submit(self._read_group, reader, plan, groups[i + 1])
                    batches = [windows[k : k + self.batch] for k in range(0, len(windows), self.batch)]
                    by_index = {t.index: t for t in group}
                    for results in map_batches(segment, batches):
                        for res in results:
                            t = by_index[res.index]
                            processed_mp += self._write(store, t, res, seconds, plan)
                            finished += 1
                            if progress:
                                progress(finished, total, store.count())
            wall = time.perf_counter() - started
            summary = self._finish(reader, plan, store, seconds, resumed, processed_mp, wall)
        return summary

    def _read_group(self, reader: SlideReader, plan: SlidePlan, group: list[SlideTile]) -> tuple[list[Window], float]:
        """The windows of ``group`` and the seconds reading them took."""
        t0 = time.perf_counter()
        return [self._window(reader, plan, t) for t in group], time.perf_counter() - t0

    def _window(self, reader: SlideReader, plan: SlidePlan, t: SlideTile) -> Window:
        img = reader.read_region(t.region(), plan.downsample, max_pixels=(4 * (self.tile + 2 * self.halo)) ** 2)
        img.mpp = plan.slide_mpp * img.scale
        # a slide coarser than the working resolution is read at level 0 and enlarged to it here
        img = working_image(img, plan.work_mpp)
        return Window(t.index, img.pixels, img.origin, img.scale, img.mpp, t.core)

    @staticmethod
    def _write(store: NucleiStore, t: SlideTile, res: TileNuclei, seconds: dict[str, float], plan: SlidePlan) -> float:
        for k in ("network", "post"):
            seconds[k] += res.seconds.get(k, 0.0)
        t0 = time.perf_counter()
        store.add_tile(t.index, t.col, t.row, t.core, res.rows, sum(res.seconds.values()))
        seconds["write"] += time.perf_counter() - t0
        x0, y0, x1, y1 = t.core
        return t.tissue_fraction * (x1 - x0) * (y1 - y0) / plan.downsample**2 / 1e6

    def _finish(self, reader: SlideReader, plan: SlidePlan, store: NucleiStore, seconds: dict[str, float],
                resumed: int, processed_mp: float, wall: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        n = store.export_geojson(self.out_dir / "nuclei.geojson")
        grid = density_grid(plan, store.iter_centroids())
        thumb, tds = reader.thumbnail(min(1024, max(plan.mask.shape)))  # the mask's thumbnail, not a new read
        tissue = plan.tissue_mm2
        render_heat_map(grid, thumb, tds, self.out_dir / "density.png",
                        f"{self.slide.name}: {n:,} nuclei, {n / tissue if tissue else 0:,.0f} per mm^2 of tissue")
        spot = hot_spot(grid, HOT_SPOT_UM)
        seconds["export"] = time.perf_counter() - t0
        composition = store.composition()
        summary: dict[str, Any] = {
            "slide": str(self.slide), "dimensions": list(plan.dimensions), "region": plan.region,
            "slide_mpp": plan.slide_mpp,
            "mpp_assumed": plan.mpp_assumed, "work_mpp": plan.work_mpp, "segmenter": self.description,
            "tiles": {"in_plan": len(plan.tiles), "resumed": resumed, "grid": list(plan.grid), "tile_px": plan.tile,
                      "halo_px": plan.halo},
            "tissue_mm2": round(tissue, 4), "tissue_megapixels": round(plan.tissue_megapixels, 3),
            "nuclei": n, "nuclei_per_mm2": round(n / tissue, 1) if tissue else None,
            "composition": composition,
            "composition_fraction": {k: round(v / n, 4) for k, v in composition.items()} if n else {},
            "hot_spot": None if spot is None else {"x": round(spot[0], 1), "y": round(spot[1], 1),
                                                   "size_um": HOT_SPOT_UM, "nuclei_per_mm2": round(spot[2], 1)},
            "seconds": {k: round(v, 3) for k, v in seconds.items()}, "wall_seconds": round(wall, 3),
            "processed_tissue_megapixels": round(processed_mp, 3),
            "tissue_megapixels_per_second": round(processed_mp / wall, 4) if processed_mp and wall > 0 else None,
            "files": {"store": "nuclei.sqlite", "geojson": "nuclei.geojson", "heat_map": "density.png"},
        }
        if plan.mpp_assumed:
            summary["warning"] = (f"the slide states no resolution; {plan.slide_mpp} um/px (20x) was assumed: "
                                  "areas, densities and the network's scale depend on it (pass --mpp)")
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=1))
        return summary
