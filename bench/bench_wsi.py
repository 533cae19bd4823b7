"""Whole-slide nuclei throughput: the old path (the shipped patch ensemble, every tile resampled to 0.25 um/px) vs
the new path (the 20x slide network at its own resolution), in one run, on the two slides of ``../shared/data/slides``
and a 2048 x 2048 region of CMU-1.

Per slide and path (each in a fresh process, so that its peak RSS is its own): megapixels of tissue per second (at
the working 0.5 um/px), seconds per stage (tissue mask, read, network, post-processing, write, export), peak RSS,
nuclei found; and, between the paths, how far their nuclei agree (centroids matched one to one within 4 um: the
F1 of the fast path's nuclei against the ensemble's, and the count ratio). ``--tool`` also times the nuclei tool
itself on the 2048 px region (the path a question about a region takes: guard and GeoJSON included).
``--large N`` adds a synthetic N x N tiled TIFF made of CMU-1 tissue (new path only): peak RSS on a large slide.

Run: ``.venv/bin/python bench/bench_wsi.py [--tool] [--large 12288] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED, rss_mib  # noqa: E402


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _run(slide: str, out: str, path: str, region: list[int] | None, queue: Any) -> None:
    """Child process: one slide run; puts (summary, centroids, peak RSS MiB)."""
    from pathasst.core.regions import Region
    from pathasst.core.settings import Settings
    from pathasst.tools.wsi.run import SlideNucleiRun
    from pathasst.tools.wsi.segment import build_segmenter
    from pathasst.tools.wsi.store import NucleiStore

    segmenter, description = build_segmenter(path, Settings())
    box = Region(x=region[0], y=region[1], width=region[2], height=region[3]) if region else None
    summary = SlideNucleiRun(Path(slide), Path(out), segmenter, description=description, region=box).run()
    with NucleiStore(Path(out) / "nuclei.sqlite") as store:
        xy = store.centroids()[:, :2]
    queue.put((summary, xy, rss_mib()))


def run_in_child(slide: Path, out: Path, path: str, region: list[int] | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(str(slide), str(out), path, region, q))
    t0 = time.perf_counter()
    p.start()
    summary, xy, rss = q.get()
    p.join()
    return {"summary": summary, "xy": xy, "peak_rss_mib": round(rss, 1), "process_seconds": time.perf_counter() - t0}


def agreement(a: np.ndarray, b: np.ndarray, tol_px: float) -> dict[str, float]:
    """One-to-one matching of two centroid sets within ``tol_px`` (greedy by distance): F1 of ``b`` against ``a``."""
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return {"f1": 0.0, "matched": 0}
    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), tol_px, output_type="ndarray")
    pairs = pairs[np.argsort(pairs["v"])]
    used_a, used_b, n = set(), set(), 0
    for i, j, _ in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            n += 1
    return {"f1": round(2 * n / (len(a) + len(b)), 4), "matched": n}


def _row(r: dict[str, Any]) -> dict[str, Any]:
    s = r["summary"]
    return {"nuclei": s["nuclei"], "tissue_mp": s["processed_tissue_megapixels"],
            "tissue_mp_per_s": s["tissue_megapixels_per_second"], "wall_s": s["wall_seconds"],
            "stages_s": s["seconds"], "peak_rss_mib": r["peak_rss_mib"], "nuclei_per_mm2": s["nuclei_per_mm2"]}


def synthetic_slide(size: int, path: Path) -> Path:
    """A ``size`` x ``size`` pyramidal tiled TIFF at 0.499 um/px (levels 1, 1/4, 1/16, as scanners write them) made
    of CMU-1 tissue (its most tissue-rich 2048 px window, mirrored), written tile by tile so that the bench itself
    stays small."""
    import tifffile
    from PIL import Image

    from pathasst.core.readers import SlideReader

    with SlideReader(SHARED / "slides" / "cmu-1-small-region.svs") as s:
        win = s.best_window(2048, 2048)
        src = s.read_region(win, 1.0, 2048 * 2048).pixels
    block = np.concatenate([np.concatenate([src, src[:, ::-1]], 1), np.concatenate([src[::-1], src[::-1, ::-1]], 1)], 0)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level, ds in enumerate((1, 4, 16)):
            b = block if ds == 1 else np.asarray(Image.fromarray(block).reduce(ds))
            n, period = -(-size // ds), b.shape[0]

            def tiles(b: np.ndarray = b, n: int = n, period: int = period):
                for y in range(0, n, 256):  # the period (4096 / ds) is a multiple of the tile: no tile wraps
                    for x in range(0, n, 256):
                        yield b[y % period : y % period + 256, x % period : x % period + 256]

            res = 1e4 / (0.499 * ds)
            tif.write(tiles(), shape=(n, n, 3), dtype=np.uint8, tile=(256, 256), photometric="rgb",
                      compression="zlib", resolution=(res, res), resolutionunit="CENTIMETER",
                      subfiletype=0 if level == 0 else 1)
    return path


def tool_on_region(region: list[int]) -> dict[str, Any]:
    """The nuclei tool (old default) on the region: seconds and nuclei."""
    from pathasst.core.imaging import ImageData
    from pathasst.core.readers import SlideReader
    from pathasst.core.regions import Region
    from pathasst.core.settings import Settings
    from pathasst.tools.registry import default_registry

    with SlideReader(SHARED / "slides" / "cmu-1-small-region.svs") as s:
        img = s.read_region(Region(x=region[0], y=region[1], width=region[2], height=region[3]), 1.0, 2048 * 2048)
    tool = default_registry(Settings(_env_file=None)).get("nuclei_segmentation")
    image = ImageData(pixels=img.pixels, name="region", mpp=img.mpp)
    args = tool.input_model.model_validate({"image": "region.png"})
    small = ImageData(pixels=img.pixels[:256, :256], name="warm-up", mpp=img.mpp)
    tool.analyze(small, args)  # loads the weights and exports the ONNX graph: not timed
    t0 = time.perf_counter()
    result = tool.analyze(image, args)
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 2), "nuclei": result.output.count,
            "region_mp_per_s": round(img.pixels.shape[0] * img.pixels.shape[1] / dt / 1e6, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", default=["ensemble", "fast-float32", "fast"],
                        help="slide paths to run on each slide (fast = the 20x network in int8)")
    parser.add_argument("--tool", action="store_true", help="also time the nuclei tool on the 2048 px region")
    parser.add_argument("--large", type=int, default=0, help="also a synthetic N x N slide (new path only)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    opts = parser.parse_args()
    from pathasst.core.readers import SlideReader

    slides = SHARED / "slides"
    with SlideReader(slides / "cmu-1-small-region.svs") as s:
        w = s.best_window(2048, 2048)
    region = [w.x, w.y, w.width, w.height]
    targets = [("tcga-cr-7395-01a-01-ts1.svs (whole)", slides / "tcga-cr-7395-01a-01-ts1.svs", None),
               ("cmu-1-small-region.svs (whole)", slides / "cmu-1-small-region.svs", None),
               ("cmu-1-small-region.svs 2048 px region", slides / "cmu-1-small-region.svs", region)]
    report: dict[str, Any] = {"cpu": _cpu(), "cores": mp.cpu_count(), "targets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, slide, box in targets:
            runs = {p: run_in_child(slide, Path(tmp) / f"{slide.stem}-{p}-{bool(box)}", p, box) for p in opts.paths}
            entry = {p: _row(r) for p, r in runs.items()}
            if {"ensemble", "fast"} <= set(runs):
                e, f = runs["ensemble"], runs["fast"]
                tol = 4.0 / 0.5  # 4 um at the working resolution's level 0 (these slides are 20x)
                entry["agreement_fast_vs_ensemble"] = {**agreement(e["xy"], f["xy"], tol),
                                                       "count_ratio": round(len(f["xy"]) / max(len(e["xy"]), 1), 4)}
                if e["summary"]["wall_seconds"] and f["summary"]["wall_seconds"]:
                    entry["speedup_fast_vs_ensemble"] = round(e["summary"]["wall_seconds"] /
                                                              f["summary"]["wall_seconds"], 2)
            if {"fast-float32", "fast"} <= set(runs):  # int8 vs float32 of the same network
                a, b = runs["fast-float32"], runs["fast"]
                entry["agreement_int8_vs_float32"] = {**agreement(a["xy"], b["xy"], 4.0 / 0.5),
                                                      "count_ratio": round(len(b["xy"]) / max(len(a["xy"]), 1), 4)}
                entry["speedup_int8_vs_float32"] = round(a["summary"]["wall_seconds"] / b["summary"]["wall_seconds"], 2)
            report["targets"][name] = entry
            print(json.dumps({name: entry}, indent=1), flush=True)
        if opts.tool:
            report["tool_on_region"] = tool_on_region(region)
            print(json.dumps({"tool_on_region": report["tool_on_region"]}), flush=True)
        if opts.large:
            big = synthetic_slide(opts.large, Path(tmp) / f"synthetic-{opts.large}.tif")
            r = run_in_child(big, Path(tmp) / "large-fast", "fast")
            report["targets"][f"synthetic {opts.large} px CMU-1 tissue (whole)"] = {"fast": _row(r)}
            print(json.dumps({"large": _row(r)}, indent=1), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({"cpu": report["cpu"], "cores": report["cores"]}))


if __name__ == "__main__":
    main()
