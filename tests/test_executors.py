"""Batch executors: local worker processes and Ray (a real local Ray instance) against the in-process run.

The example cases (``pathasst demo``'s: a Ki-67 patch, a pyramidal slide through OpenSlide, a QC case, a case with
broken files, an empty case) run three ways; every case must have the same status, the same report (apart from
timings and random call ids) and the same GeoJSON. Workers killed mid-batch lose nothing: their cases fail with the
reason (processes) or are retried (Ray), and a rerun finishes the batch. A large image's tile batches go out as Ray
tasks and stitch to the same map as in-process tiling.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pathasst.agent.engine import Engine
from pathasst.agent.executors import CaseJob, ExecutorError, ProcessExecutor, RayExecutor, RayTileMapper, make_executor
from pathasst.agent.runner import run_batch
from pathasst.tools.backends.nuclei_net import SLIDE_NET_WEIGHTS

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost",
    "NO_PROXY": "127.0.0.1,localhost",
}


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance on this machine's 2 cores (workers inherit the offline environment)."""
    old = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def batch_settings(settings: Any) -> Any:
    # executors are under test, not the tools: a 1 M-pixel analysis budget and one small nuclei network (not the
    # patch ensemble) keep the Ki-67 cases quick
    return settings.model_copy(update={
        "planner": "rules", "torch_threads": 1, "max_region_pixels": 1_048_576, "nuclei_weights": SLIDE_NET_WEIGHTS,
    })


_CALL_ID = re.compile(r"call_[0-9a-f]{10}")
_VOLATILE = {"timings", "duration_s", "created_at"}


def _strip(obj: Any, volatile: set[str]) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v, volatile) for k, v in obj.items() if k not in volatile}
    if isinstance(obj, list):
        return [_strip(v, volatile) for v in obj]
    return obj


def _normalised(path: Path) -> Any:
    """A case file with call ids renumbered in order of appearance, timings and GeoJSON feature UUIDs removed."""
    ids: dict[str, str] = {}
    text = _CALL_ID.sub(lambda m: ids.setdefault(m.group(0), f"call_{len(ids)}"), path.read_text(encoding="utf-8"))
    data = json.loads(text)
    if data.get("type") == "FeatureCollection":
        data["features"] = [{k: v for k, v in f.items() if k != "id"} for f in data["features"]]
    return _strip(data, _VOLATILE)


def _summary(out: Path) -> dict[str, tuple[str, str]]:
    import csv

    with open(out / "summary.csv", encoding="utf-8") as f:
        return {r["case_id"]: (r["status"], r["reason"]) for r in csv.DictReader(f)}


def _assert_same_outputs(a: Path, b: Path) -> None:
    sa, sb = _summary(a), _summary(b)
    assert sa == sb
    ok = [cid for cid, (status, _) in sa.items() if status == "ok"]
    assert len(ok) == 4, sa  # the empty case fails, the other four succeed
    for cid in ok:
        assert _normalised(a / cid / "report.json") == _normalised(b / cid / "report.json"), cid
        assert _normalised(a / cid / "annotations.geojson") == _normalised(b / cid / "annotations.geojson"), cid
        assert sorted(p.name for p in (a / cid).rglob("*")) == sorted(p.name for p in (b / cid).rglob("*"))


def test_process_and_ray_executors_match_the_local_run(
    demo_cases: Path, batch_settings: Any, tmp_path: Path, ray_local: None
) -> None:
    local = run_batch(demo_cases, tmp_path / "local", Engine(batch_settings))
    assert local.counts == {"ok": 4, "failed": 1}
    assert _summary(tmp_path / "local")["empty_case"][0] == "failed"

    procs = ProcessExecutor(batch_settings, planner="rules", workers=2)
    try:
        res = run_batch(demo_cases, tmp_path / "procs", executor=procs)
    finally:
        procs.close()
    assert res.counts == {"ok": 4, "failed": 1}
    _assert_same_outputs(tmp_path / "local", tmp_path / "procs")

    rex = RayExecutor(batch_settings, planner="rules")
    assert rex.workers == 2  # 2 CPUs, 1 CPU per case task
    res = run_batch(demo_cases, tmp_path / "ray", executor=rex)
    rex.close()  # joined an existing instance: leaves it running
    assert ray.is_initialized()
    assert res.counts == {"ok": 4, "failed": 1}
    _assert_same_outputs(tmp_path / "local", tmp_path / "ray")

    # resumable: a rerun skips finished cases and retries only the failed one; a lost case folder is redone
    import shutil

    shutil.rmtree(tmp_path / "ray" / "ki67_patch")
    again = run_batch(demo_cases, tmp_path / "ray", executor=RayExecutor(batch_settings, planner="rules"))
    assert sorted((o.case_id, o.status) for o in again.outcomes) == [
        ("broken_inputs", "skipped"), ("empty_case", "failed"), ("ki67_patch", "ok"), ("ki67_slide", "skipped"),
        ("qc_blurred", "skipped"),
    ]
    _assert_same_outputs(tmp_path / "local", tmp_path / "ray")


def test_cli_runs_on_ray_and_refuses_unknown_executors(
    demo_cases: Path, tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pathasst.cli.main import app

    monkeypatch.setenv("PATHASST_CHROMA_PATH", str(tmp_path / "chroma"))
    monkeypatch.setenv("PATHASST_TORCH_THREADS", "1")
    monkeypatch.setenv("PATHASST_MAX_REGION_PIXELS", "1048576")  # as batch_settings: the executor is under test
    monkeypatch.setenv("PATHASST_NUCLEI_WEIGHTS", str(SLIDE_NET_WEIGHTS))
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(demo_cases), "--out", str(tmp_path / "out"), "--executor", "ray",
                              "--planner", "rules"])
    assert res.exit_code == 0, res.output
    assert "on Ray (2 case slots)" in res.output and "4 ok, 1 failed, 0 skipped" in res.output
    assert (tmp_path / "out" / "ki67_slide" / "report.json").is_file()
    res = runner.invoke(app, ["run", str(demo_cases), "--out", str(tmp_path / "o2"), "--executor", "spark"])
    assert res.exit_code == 2 and "unknown executor 'spark'; valid executors: local, ray" in res.output
    with pytest.raises(ExecutorError, match="workers must be >= 1"):
        make_executor("local", None, workers=0)


def _kill_workers(pattern: str) -> int:
    import psutil

    killed = 0
    for proc in psutil.Process(os.getpid()).children(recursive=True) if pattern == "pool" else psutil.process_iter():
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if pattern == "pool" and "spawn_main" in cmd or pattern != "pool" and pattern in cmd:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
    return killed


def test_a_killed_worker_process_fails_its_case_and_a_rerun_completes(
    demo_cases: Path, batch_settings: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    procs = ProcessExecutor(batch_settings, planner="rules", workers=2)
    killed: list[int] = []

    def kill_after_first(outcome: Any) -> None:
        if not killed:
            killed.append(_kill_workers("pool"))

    try:
        res = run_batch(demo_cases, out, executor=procs, progress=kill_after_first)
    finally:
        procs.close()
    assert killed and killed[0] >= 1
    died = [o for o in res.outcomes if "worker process died" in o.reason]
    assert died, [(o.case_id, o.status, o.reason) for o in res.outcomes]
    assert len(res.outcomes) == 5  # every case has an outcome: nothing lost
    # every finished case folder is complete, and the rerun finishes the rest identically to a clean run
    for o in res.outcomes:
        if o.status == "ok":
            assert (out / o.case_id / "report.json").is_file()
    procs = ProcessExecutor(batch_settings, planner="rules", workers=2)
    try:
        again = run_batch(demo_cases, out, executor=procs)
    finally:
        procs.close()
    assert again.counts.get("ok", 0) == len(died) - sum(1 for o in died if o.case_id == "empty_case")
    assert {cid: s for cid, (s, _) in _summary(out).items()} == {
        "broken_inputs": "ok", "empty_case": "failed", "ki67_patch": "ok", "ki67_slide": "ok", "qc_blurred": "ok"
    }


def test_a_killed_ray_worker_is_retried(demo_cases: Path, batch_settings: Any, tmp_path: Path, ray_local: None) -> None:
    killed: list[int] = []

    def kill_after_first(outcome: Any) -> None:
        if not killed:
            killed.append(_kill_workers("ray::_ray_case"))

    rex = RayExecutor(batch_settings.model_copy(update={"ray_max_retries": 2}), planner="rules")
    res = run_batch(demo_cases, tmp_path / "out", executor=rex, progress=kill_after_first)
    assert res.counts == {"ok": 4, "failed": 1}, [(o.case_id, o.reason) for o in res.outcomes]
    assert _summary(tmp_path / "out")["empty_case"][1].startswith("EmptyCaseError")


def test_large_image_tiles_run_as_ray_tasks_and_stitch_identically(
    batch_settings: Any, tmp_path: Path, ray_local: None
) -> None:
    """tumor_segmentation with a U-Net state dict saved here, on a 640 x 640 case image: 49 tiles in 13 batches."""
    import torch
    from PIL import Image

    from pathasst.tools.backends.unet import build_unet

    torch.manual_seed(0)
    model = build_unet(3, base_channels=8, depth=2, norm="batch").eval()
    weights = tmp_path / "unet.pt"
    config = {"classes": ["background", "tumor", "stroma"], "input_mpp": 1.0, "base_channels": 8, "depth": 2,
              "tile_size": 112, "overlap": 24}
    torch.save({"state_dict": model.state_dict(), "config": config}, weights)
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal([200, 120, 170], 30, (640, 640, 3)), 0, 255).astype(np.uint8)
    case = tmp_path / "cases" / "big"
    case.mkdir(parents=True)
    Image.fromarray(img).save(case / "he.png")
    (case / "case.yaml").write_text("stain: H&E\nmpp: 1.0\n")
    s = batch_settings.model_copy(update={"tumor_seg_weights": weights, "ray_tile_min_batches": 2})
    job = CaseJob(case_dir=case, question="What is the tumour-stroma ratio?", cases_root=tmp_path / "cases")

    (local,) = list(make_executor("local", s, planner="rules").map([job]))
    (remote,) = list(RayExecutor(s, planner="rules").map([job]))
    assert local.status == remote.status == "ok", (local.reason, remote.reason)
    n_tasks = int(remote.worker.rsplit("tile_tasks=", 1)[1])
    assert n_tasks == 13  # ceil(49 tiles / batch 4)
    (lrec,) = [r for r in local.report.trace if r.tool == "tumor_segmentation"]
    (rrec,) = [r for r in remote.report.trace if r.tool == "tumor_segmentation"]
    assert lrec.status == rrec.status == "ok"
    lo, ro = lrec.output, rrec.output
    assert set(lo["area_fractions"]) == set(ro["area_fractions"])
    for k, v in lo["area_fractions"].items():
        assert ro["area_fractions"][k] == pytest.approx(v, abs=1e-3)
    assert np.abs(local.artifacts[lrec.id].overlay.astype(int) - remote.artifacts[rrec.id].overlay.astype(int)).max() <= 2


def test_slide_run_tiles_go_to_ray_tasks_and_give_the_same_nuclei(tmp_path: Path, ray_local: None,
                                                                 shared_data: Path) -> None:
    """`pathasst slide nuclei`'s tile batches through the Ray executor's tile mapper, unchanged: the shipped 20x
    network on a 1024 px CMU-1 region in 256 px tiles (15 of its 16 hold tissue: 8 batches of at most 2)."""
    from pathasst.core.regions import Region
    from pathasst.core.settings import Settings
    from pathasst.tools.backends.tiling import use_tile_mapper
    from pathasst.tools.wsi.run import SlideNucleiRun
    from pathasst.tools.wsi.segment import build_segmenter
    from pathasst.tools.wsi.store import NucleiStore

    slide = shared_data / "slides" / "cmu-1-small-region.svs"
    segmenter, _ = build_segmenter("fast", Settings(_env_file=None))
    region = Region(x=600, y=1000, width=1024, height=1024)
    local = SlideNucleiRun(slide, tmp_path / "local", segmenter, tile=256, region=region, group=4).run()
    mapper = RayTileMapper(num_cpus=1.0, min_batches=2)
    with use_tile_mapper(mapper):
        remote = SlideNucleiRun(slide, tmp_path / "ray", segmenter, tile=256, region=region, group=4).run()
    assert local["tiles"]["in_plan"] == 15 and mapper.tasks == 8  # one task per batch: 4 + 4 in two groups of 8, 7
    assert remote["nuclei"] == pytest.approx(local["nuclei"], abs=2) and local["nuclei"] > 100
    with NucleiStore(tmp_path / "local" / "nuclei.sqlite") as a, NucleiStore(tmp_path / "ray" / "nuclei.sqlite") as b:
        pa, pb = a.centroids(), b.centroids()
    d = np.sqrt(((pa[:, None, :2] - pb[None, :, :2]) ** 2).sum(-1)).min(1)
    assert (d < 1.0).mean() > 0.99
