"""Batch throughput: cases per minute with 1 and 2 local workers and with Ray on this machine; Ray's overheads.

The cases are ``pathasst demo``'s example cases (Ki-67 patch, pyramidal slide through OpenSlide, QC case, broken
files, empty case) copied ``--copies`` times, run with the ``rules`` planner. Each executor's wall time includes its
start-up (worker processes importing torch, Ray workers), because a user waits for it too; the per-case figures
show the steady state. Also: the round trip of an empty Ray task, and a U-Net over a large image with its tile
batches in-process vs as Ray tile tasks.

    python bench/bench_scale.py [--copies 2] [--skip-ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
}


def _cases(root: Path, copies: int) -> int:
    from pathasst.agent.demo import build_demo_cases

    src = root / "src"
    names = build_demo_cases(src)
    for k in range(copies):
        for name in names:
            shutil.copytree(src / name, root / "cases" / f"{name}_{k}")
    return len(names) * copies


def _run(label: str, cases: Path, out: Path, executor, n: int, baseline: float | None) -> float:
    from pathasst.agent.runner import run_batch

    t0 = time.perf_counter()
    res = run_batch(cases, out, executor=executor)
    wall = time.perf_counter() - t0
    per_case = [o.seconds for o in res.outcomes if o.status == "ok"]
    rate = n / wall * 60
    ratio = f"{rate / baseline:.2f}x" if baseline else "1.00x"
    print(f"{label:<28} {wall:7.1f} s  {rate:6.1f} cases/min  ({ratio} local-1)  counts={res.counts}  "
          f"median case {statistics.median(per_case):.2f} s")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    from pathasst.agent.executors import InlineExecutor, ProcessExecutor, RayExecutor
    from pathasst.agent.engine import Engine
    from pathasst.core.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        n = _cases(tmp, args.copies)
        cases = tmp / "cases"
        s = Settings(_env_file=None, planner="rules", chroma_path=tmp / "chroma", cases_root=cases)
        print(f"{n} cases ({args.copies} copies of the 5 example cases), {os.cpu_count()} cores, planner rules")
        base = _run("local, 1 worker (inline)", cases, tmp / "o1", InlineExecutor(Engine(s)), n, None)
        procs = ProcessExecutor(s, planner="rules", workers=2)
        try:
            _run("local, 2 worker processes", cases, tmp / "o2", procs, n, base)
        finally:
            procs.close()
        if args.skip_ray:
            return
        os.environ.update(RAY_ENV)
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        print(f"ray.init (local instance): {time.perf_counter() - t0:.1f} s")
        try:
            _run("ray, 1 CPU per case", cases, tmp / "o3", RayExecutor(s, planner="rules"), n, base)
            _run("ray, again (workers warm)", cases, tmp / "o4", RayExecutor(s, planner="rules"), n, base)

            @ray.remote(num_cpus=1)
            def nop(x: int) -> int:
                return x

            ray.get([nop.remote(i) for i in range(20)])
            t0 = time.perf_counter()
            ray.get([nop.remote(i) for i in range(500)])
            batch_ms = (time.perf_counter() - t0) / 500 * 1e3
            t0 = time.perf_counter()
            for i in range(100):
                ray.get(nop.remote(i))
            serial_ms = (time.perf_counter() - t0) / 100 * 1e3
            print(f"ray empty task: {serial_ms:.2f} ms round trip one at a time, {batch_ms:.2f} ms each in a batch of 500")
            _tiles(s, tmp)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tiles(s, tmp: Path) -> None:
    """A U-Net (random weights, 8 base channels, depth 3) over a 2048 x 2048 image: tile batches in-process vs Ray."""
    import numpy as np
    import torch

    from pathasst.agent.executors import RayTileMapper
    from pathasst.tools.backends.tiling import dense_tiled, use_tile_mapper
    from pathasst.tools.backends.unet import build_unet

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_unet(3, base_channels=8, depth=3, norm="batch").eval()

    def predict(batch):
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            return list(torch.softmax(model(x), 1).numpy())

    rgb = np.random.default_rng(0).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    a = dense_tiled(rgb, predict, 3, tile=256, overlap=32, batch=4)
    inline = time.perf_counter() - t0
    mapper = RayTileMapper(num_cpus=1, min_batches=1)
    with use_tile_mapper(mapper):
        t0 = time.perf_counter()
        b = dense_tiled(rgb, predict, 3, tile=256, overlap=32, batch=4)
        remote = time.perf_counter() - t0
    mp = 2048 * 2048 / 1e6
    print(f"U-Net over 2048x2048 (81 tiles of 256 px): in-process {inline:.1f} s ({mp / inline:.2f} MP/s, 1 thread); "
          f"as {mapper.tasks} Ray tile tasks {remote:.1f} s ({mp / remote:.2f} MP/s, ratio {inline / remote:.2f}x); "
          f"max |difference| {np.abs(a - b).max():.1e}")


if __name__ == "__main__":
    main()
