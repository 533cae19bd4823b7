"""The command line, run as a user runs it: ask, tools list/predict/eval, eval planner, run on real images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathasst.planning.grounding import ungrounded_numbers
from pathasst.planning.report import Report
from pathasst.tools.evaluate import DEEPLIIF_MPP, ihc_ground_truth

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATHASST_PLANNER": "rules", "PATHASST_SIMILAR_K": "0",
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "pathasst.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_tools_list_json():
    p = cli("tools", "list", "--json")
    assert p.returncode == 0, p.stderr
    names = {t["name"] for t in json.loads(p.stdout)}
    assert names == {"nuclei_segmentation", "ihc_quantification", "mitosis_detection", "tissue_classification",
                     "tumor_segmentation", "slide_classification", "region_segmentation", "tissue_qc", "similar_cases"}


def test_tools_predict_ihc_on_deepliif(tmp_path, shared_data):
    src = tmp_path / "in"
    src.mkdir()
    for f in (shared_data / "deepliif_ki67").glob("*_ihc.png"):
        shutil.copy(f, src / f.name)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    p = cli("tools", "predict", "ihc_quantification", str(src), "--out", str(out), "--mpp", str(DEEPLIIF_MPP))
    assert p.returncode == 0, p.stderr
    assert "4 images done, 1 failed" in p.stderr and "broken.png" in p.stderr
    for stem in ("22_2_ihc", "34_3_ihc"):
        data = json.loads((out / f"{stem}.json").read_text())
        assert {"positive_cells", "negative_cells", "positivity_index", "cells"} <= set(data)
        assert data["positive_cells"] + data["negative_cells"] == len(data["cells"])
        assert {"x", "y", "positive"} <= set(data["cells"][0])
        labels = np.asarray(Image.open(out / f"{stem}.png"))
        assert labels.dtype == np.uint16 and labels.shape == (512, 512)
        assert len(np.unique(labels)) - 1 == len(data["cells"])
        gt = np.asarray(Image.open(shared_data / "deepliif_ki67" / f"{stem.replace('_ihc', '')}_groundtruth.png"))
        _, positive = ihc_ground_truth(gt)
        truth = 100.0 * positive.sum() / len(positive)
        assert abs(data["positivity_index"] - truth) <= 8.0, (stem, data["positivity_index"], truth)  # measured 0.5, 6.7


def test_tools_predict_nuclei_writes_16bit_labels(tmp_path, shared_data):
    src = tmp_path / "in"
    src.mkdir()
    names = sorted((shared_data / "consep_train" / "images").iterdir())[:2]
    for f in names:
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    p = cli("tools", "predict", "nuclei_segmentation", str(src), "--out", str(out), "--mpp", "0.25")
    assert p.returncode == 0, p.stderr
    for f in names:
        labels = np.asarray(Image.open(out / f"{f.stem}.png"))
        data = json.loads((out / f"{f.stem}.json").read_text())
        assert labels.dtype == np.uint16 and data["count"] == len(np.unique(labels)) - 1 > 0


def test_tools_predict_unknown_tool_lists_valid_names(tmp_path):
    p = cli("tools", "predict", "nuclei_segmentatoin", str(tmp_path), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "valid tools:" in p.stderr and "nuclei_segmentation" in p.stderr


def test_ask_on_a_real_ihc_image(tmp_path, shared_data):
    img = shared_data / "deepliif_ki67" / "22_2_ihc.png"
    p = cli("ask", str(img), "What is the Ki-67 index?", "--stain", "Ki-67", "--mpp", "0.5", "--json",
            "--out", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    rep = Report.model_validate_json(p.stdout)
    assert [r.tool for r in rep.trace] == ["ihc_quantification"] and rep.trace[0].status == "ok"
    idx = rep.trace[0].output["positivity_index"]
    assert f"positivity index {idx:g}%" in rep.answer or f"positivity index {idx}%" in rep.answer  # a percentage
    md = (tmp_path / "o" / "22_2_ihc" / "report.md").read_text()
    assert f"positivity index {idx:g}%;" in md or f"positivity index {idx}%;" in md  # findings too
    assert ungrounded_numbers(md, rep.allowed_numbers()) == []


def test_ask_unsupported_file_is_a_clear_error(tmp_path):
    f = tmp_path / "notes.docx"
    f.write_bytes(b"x")
    p = cli("ask", str(f), "anything")
    assert p.returncode == 2 and "unsupported file type '.docx'" in p.stderr


def test_run_real_cases_every_report_is_grounded(tmp_path, shared_data):
    """Real H&E, IHC and whole-slide cases through the rules planner; every number in every report.md is sourced."""
    cases = tmp_path / "cases"
    he = cases / "he_tile"
    he.mkdir(parents=True)
    shutil.copy(sorted((shared_data / "consep_train" / "images").iterdir())[5], he / "tile.png")
    (he / "case.yaml").write_text("stain: H&E\nmpp: 0.25\nquestion: Count the nuclei and check the quality.\n")
    ki = cases / "ki67"
    ki.mkdir()
    shutil.copy(shared_data / "deepliif_ki67" / "34_3_ihc.png", ki / "ki67.png")
    (ki / "case.yaml").write_text("stain: Ki-67\nmpp: 0.5\n")
    wsi = cases / "slide"
    wsi.mkdir()
    shutil.copy(shared_data / "slides" / "cmu-1-small-region.svs", wsi / "cmu.svs")
    (wsi / "case.yaml").write_text("stain: H&E\nquestion: Is the tissue quality adequate?\n")
    out = tmp_path / "out"
    p = cli("run", str(cases), "--out", str(out))
    assert p.returncode == 0, p.stderr
    tools = {}
    for cid in ("he_tile", "ki67", "slide"):
        rep = Report.model_validate_json((out / cid / "report.json").read_text())
        md = (out / cid / "report.md").read_text()
        assert ungrounded_numbers(md, rep.allowed_numbers()) == [], cid
        assert all(r.status == "ok" for r in rep.trace), [(r.tool, r.error) for r in rep.trace]
        tools[cid] = sorted(r.tool for r in rep.trace)
        assert list((out / cid / "overlays").glob("*.png"))
        gj = json.loads((out / cid / "annotations.geojson").read_text())
        assert gj["type"] == "FeatureCollection" and gj["features"]
    assert tools == {"he_tile": ["nuclei_segmentation", "tissue_qc"], "ki67": ["ihc_quantification"],
                     "slide": ["tissue_qc"]}


def test_eval_planner_cli():
    p = cli("eval", "planner", str(REPO / "planning" / "data" / "planner_holdout.jsonl"), "--planner", "rules")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["n"] == 40 and res["accuracy"] >= 0.85 and 0.9 <= res["valid_argument_rate"] <= 1.0
