"""A batch killed with SIGKILL half way, then rerun: every case ends with exactly one complete report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def _cases(root: Path, n: int) -> list[str]:
    from skimage import data

    ihc = np.asarray(data.immunohistochemistry())
    ids = []
    for i in range(n):
        d = root / f"case{i:02d}"
        d.mkdir(parents=True)
        y, x = (i * 37) % 256, (i * 53) % 256
        Image.fromarray(ihc[y : y + 256, x : x + 256]).save(d / "ki67.png")
        (d / "case.yaml").write_text("stain: Ki-67\nmpp: 0.5\n")
        ids.append(d.name)
    return ids


def _run(cases: Path, out: Path) -> subprocess.Popen:
    from pathasst.tools.backends.nuclei_net import SLIDE_NET_WEIGHTS

    # the batch is under test, not the tools: one small nuclei network instead of the patch ensemble keeps it quick
    env = {**os.environ, "PATHASST_PLANNER": "rules", "HF_HUB_OFFLINE": "1", "PATHASST_NUCLEI_WEIGHTS": str(SLIDE_NET_WEIGHTS)}
    return subprocess.Popen(
        [sys.executable, "-m", "pathasst.cli.main", "run", str(cases), "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def test_sigkill_mid_batch_then_rerun(tmp_path):
    ids = _cases(tmp_path / "cases", 8)
    out = tmp_path / "out"
    proc = _run(tmp_path / "cases", out)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [c for c in ids if (out / c / "report.json").is_file()]
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch finished before it could be killed; make the cases slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [c for c in ids if (out / c / "report.json").is_file()]
    assert 2 <= len(finished) < len(ids)
    for c in ids:  # nothing half-written is visible under a case name
        assert (out / c).exists() == (out / c / "report.json").is_file()
    before = {c: (out / c / "report.json").read_text() for c in finished}

    proc = _run(tmp_path / "cases", out)
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, log
    for c in ids:
        rep = json.loads((out / c / "report.json").read_text())  # complete, valid JSON
        assert rep["case_id"] == c and rep["status"] == "complete" and rep["trace"]
        assert (out / c / "report.md").is_file() and (out / c / "annotations.geojson").is_file()
    for c, text in before.items():  # finished cases were skipped, not redone
        assert (out / c / "report.json").read_text() == text
    assert not [p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["case_id"] for r in rows] == ids and all(r["status"] == "ok" for r in rows)
    assert log.count("skipped") >= len(before)
