"""The four tools with new embedded backends show up in a case run like any other: planned from the question, quoted
in the report with their call ids, drawn as overlays, exported to GeoJSON and FHIR."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pathasst.agent.engine import Engine
from pathasst.agent.runner import run_batch
from pathasst.planning.grounding import ungrounded_numbers
from pathasst.planning.report import Report

pytestmark = pytest.mark.data


def test_a_case_run_reports_tissue_lesion_and_mitoses_with_call_ids(settings: Any, shared_data: Path, tmp_path: Path) -> None:
    from pathasst.tools.datasets import ebhi_items

    item = next(it for it in ebhi_items(shared_data / "ebhi_seg", ("held_out",)) if it.label == "Low-grade IN")
    case = tmp_path / "cases" / "colon_biopsy"
    case.mkdir(parents=True)
    shutil.copy(item.image, case / "biopsy.jpg")
    (case / "case.yaml").write_text(
        "stain: H&E\norgan: colon\nquestion: Which tissue type is this? How much tumour area is there? "
        "Count the mitotic figures.\n")
    result = run_batch(tmp_path / "cases", tmp_path / "out", Engine(settings, planner="rules"))
    assert result.counts == {"ok": 1}, result
    out = tmp_path / "out" / "colon_biopsy"
    report = json.loads((out / "report.json").read_text())
    trace = {r["tool"]: r for r in report["trace"]}
    assert {"tissue_classification", "tumor_segmentation", "mitosis_detection"} <= set(trace)
    for name in ("tissue_classification", "tumor_segmentation", "mitosis_detection"):
        assert trace[name]["status"] == "ok", trace[name]
        assert trace[name]["model"]["shipped_weights_sha256"]
    md = (out / "report.md").read_text()
    tissue = trace["tissue_classification"]
    assert f"top label {tissue['output']['top_label']}" in md and f"[{tissue['id']}]" in md
    lesion = trace["tumor_segmentation"]
    assert "lesion fraction" in md and f"[{lesion['id']}]" in md
    # a low-grade dysplasia biopsy: the detector, trained with mitosis-free colorectal fields, finds no figure (the
    # first detector, AMi-Br only, proposed an implausible number here and the count was withheld)
    mit = trace["mitosis_detection"]
    assert mit["output"]["count"] == 0 and mit["output"]["in_domain"] is True and mit["output"]["figures"] == []
    assert f"[{mit['id']}]" in md and "implausible" not in md
    assert ungrounded_numbers(md, Report.model_validate(report).allowed_numbers()) == []
    overlays = {p.name for p in (out / "overlays").iterdir()}
    assert any("tissue_classification" in n for n in overlays) and any("tumor_segmentation" in n for n in overlays)
    geo = json.loads((out / "annotations.geojson").read_text())
    names = {f["properties"]["classification"]["name"] for f in geo["features"]}
    assert tissue["output"]["top_label"] in names or names & {"Normal", "Polyp", "Low-grade IN", "High-grade IN",
                                                              "Adenocarcinoma", "Serrated adenoma"}
    fhir = json.loads((out / "report.fhir.json").read_text())
    devices = [r for r in fhir["contained"] if r["resourceType"] == "Device"]
    assert any(d["deviceName"][0]["name"] == "tissue_classification" and
               any(v["type"]["text"] == "weights sha256" for v in d["version"]) for d in devices)
