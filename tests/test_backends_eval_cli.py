"""``pathasst tools eval TOOL DATA_DIR``: JSON metrics on the shared ground truth, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pathasst.cli.main import app


@pytest.fixture()
def runner(settings: Any, monkeypatch: pytest.MonkeyPatch) -> CliRunner:  # settings: clears PATHASST_* variables
    monkeypatch.setenv("PATHASST_OUTPUT_DIR", str(settings.output_dir))
    return CliRunner()


def _json(text: str) -> dict[str, Any]:
    return json.loads(text[text.index("{") :])


@pytest.mark.data
def test_nuclei_eval_prints_metrics_json(runner: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["tools", "eval", "nuclei_segmentation", str(shared_data / "consep_train"), "--limit", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = _json(res.stdout)
    assert data == json.loads(out.read_text())
    # the shipped nuclei network is the embedded default: reported as a deep backend with its checksum
    assert data["tool"] == "nuclei_segmentation" and data["layout"] == "consep_train" and data["backend"] == "deep"
    assert data["model"]["shipped_weights"].endswith("nuclei_net.pt")
    m = data["metrics"]
    assert m["n_tiles"] == 1 and "per_tile" not in m
    for key in ("f1", "precision", "recall", "pq", "aji", "dice", "aji_aggregate", "pq_aggregate"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["pq"] == pytest.approx(m["dq"] * m["sq"], abs=1e-9)
    assert data["model"]["version"] == data["version"] and data["model"]["weights_sha256"] is None


@pytest.mark.data
def test_nuclei_eval_held_out_scores_only_held_out_sources(runner: CliRunner, shared_data: Path) -> None:
    args = ["tools", "eval", "nuclei_segmentation", str(shared_data / "consep_train"), "--held-out", "--limit", "2",
            "--per-item"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = _json(res.stdout)["metrics"]["per_tile"]
    assert len(rows) == 2
    names = [r.get("name") or r.get("tile") for r in rows]
    assert all(int(n.split("_")[1]) in {16, 18, 20, 22, 24, 26} for n in names), names
    res = runner.invoke(app, ["tools", "eval", "ihc_quantification", str(shared_data / "deepliif_ki67"), "--held-out"])
    assert res.exit_code == 2 and "--held-out does not apply to ihc_quantification" in res.output


@pytest.mark.data
def test_ihc_eval_reports_index_error_and_cell_f1(runner: CliRunner, shared_data: Path) -> None:
    res = runner.invoke(app, ["tools", "eval", "ihc_quantification", str(shared_data / "deepliif_ki67"), "--per-item"])
    assert res.exit_code == 0, res.output
    m = _json(res.stdout)["metrics"]
    assert m["n_images"] == 4 and len(m["per_image"]) == 4
    assert m["protocol"].startswith("leave-one-image-out") and m["shipped_threshold"] in m["threshold_grid"]
    assert all(r["loo_threshold"] in m["threshold_grid"] for r in m["per_image"])
    assert len(m["sweep"]) == 4 * 5 and m["sweep_max_abs_error"] == max(r["abs_error"] for r in m["sweep"])
    assert m["mean_detection_f1"] > 0.78 and m["max_abs_error"] < 3  # measured 0.82 and 1.15 (issue 24: <= 3)
    assert 0 <= m["mean_abs_error"] <= 100
    for key in ("mean_detection_f1", "mean_positive_f1", "mean_negative_f1"):
        assert 0.0 <= m[key] <= 1.0


@pytest.mark.parametrize(
    "tool,make,message",
    [
        ("tissue_qc", lambda p: p.mkdir(), "no ground-truth evaluation for 'tissue_qc'"),
        ("no_such_tool", lambda p: p.mkdir(), "unknown tool 'no_such_tool'"),
        ("nuclei_segmentation", lambda p: p.mkdir(), "not in the consep_train layout"),
        ("ihc_quantification", lambda p: p.mkdir(), "not in the deepliif_ki67 layout"),
        ("nuclei_segmentation", lambda p: None, "data folder not found"),
    ],
    ids=["not-evaluable", "unknown", "nuclei-layout", "ihc-layout", "missing"],
)
def test_eval_errors_exit_2_with_a_message(runner: CliRunner, tmp_path: Path, tool: str, make: Any, message: str) -> None:
    folder = tmp_path / "data"
    make(folder)
    res = runner.invoke(app, ["tools", "eval", tool, str(folder)])
    assert res.exit_code == 2 and message in res.output, res.output
