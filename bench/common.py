"""Helpers for benchmarks: timing, peak memory, a 2048x2048 H&E region from real data when present."""

from __future__ import annotations

import resource
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

__all__ = ["SHARED", "he_region", "measure", "rss_mib"]


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB: ``VmHWM`` of /proc/self/status where there is one.
    (``ru_maxrss`` survives exec on Linux: a child started by multiprocessing's spawn would report its parent's peak
    at fork time when that is larger than its own.)"""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], Any], repeat: int = 3) -> dict[str, float]:
    """Best-of-``repeat`` wall time and the peak traced Python/numpy allocation of one run."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"best_s": min(times), "median_s": float(np.median(times)), "peak_traced_mib": peak / 2**20}


def he_region(size: int = 2048) -> tuple[np.ndarray, float, str]:
    """A ``size`` x ``size`` RGB H&E region (CMU-1 small region, 20x, 0.499 mpp, level 0, most tissue) and its mpp."""
    slide = SHARED / "slides" / "cmu-1-small-region.svs"
    if slide.is_file():
        from pathasst.core.readers import SlideReader

        with SlideReader(slide) as s:
            win = s.best_window(size, size)
            img = s.read_region(win, 1.0, size * size)
        return img.pixels, float(s.mpp), f"{slide.name} level 0 window at ({win.x}, {win.y})"
    from skimage import data

    ihc = np.asarray(data.immunohistochemistry())
    reps = -(-size // ihc.shape[0])
    return np.tile(ihc, (reps, reps, 1))[:size, :size], 0.5, "tiled skimage IHC image (shared data absent)"
