"""A case in the review app is a set of findings (issue #28, item 1): every question adds its findings, the AI
draft, overlays and every export hold all kept ones, the reviewer drops or keeps each, sign-off names dropped ones,
and a case from ``pathasst run`` opens as findings. Driven through the facade with the rules planner and real tools."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pathasst.ui.facade import Facade, ReviewLockedError

CASE = "qc_blurred"  # its tools (QC, region measure) take well under a second each


@pytest.fixture()
def fac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_cases: Path) -> Facade:
    from pathasst.core.settings import Settings
    from pathasst.ui.config import UISettings

    for key in list(os.environ):
        if key.startswith("PATHASST_") and key != "PATHASST_SHARED_DATA":
            monkeypatch.delenv(key, raising=False)
    shutil.copytree(demo_cases, tmp_path / "cases")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATHASST_CASES_ROOT", str(tmp_path / "cases"))
    monkeypatch.setenv("PATHASST_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("PATHASST_PLANNER", "rules")
    monkeypatch.setenv("PATHASST_CHROMA_PATH", str(tmp_path / "chroma"))
    return Facade(Settings(_env_file=None), UISettings(_env_file=None))


def _questions(n: int) -> list[str]:
    """``n`` different questions: image quality, and region measures at different points and boxes."""
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append("Is the image quality adequate?")
        elif i % 3 == 1:
            out.append(f"Measure the area I marked: point {40 + 30 * i}, {60 + 20 * i}.")
        else:
            out.append(f"Measure the area I marked: box ({10 * i}, {10 * i}, {10 * i + 80}, {10 * i + 60}).")
    return out


def _case_files(fac: Facade, case_id: str) -> tuple[dict, str, dict, dict]:
    d = fac.layout.case_dir(case_id)
    return (
        json.loads((d / "report.json").read_text()),
        fac.review(case_id).ai_draft.markdown,
        json.loads((d / "annotations.geojson").read_text()),
        json.loads((d / "report.fhir.json").read_text()),
    )


def test_no_finding_is_lost_across_ten_questions(fac):
    seen: list[str] = []  # call ids of every finding so far
    regions: set[str] = set()
    for number, q in enumerate(_questions(10), start=1):
        turn = fac.analyse(CASE, q, "Dr Lopez")
        assert turn.number == number and turn.calls, q
        seen += [c["id"] for c in turn.calls]
        regions |= {c["id"] for c in turn.calls if c["tool"] == "region_segmentation" and c["status"] == "ok"}
        report, draft, geo, fhir = _case_files(fac, CASE)
        assert [r["id"] for r in report["trace"]] == seen  # every call of every question, in order
        assert all(cid in draft for cid in seen)
        assert [e["number"] for e in report["exchanges"]] == list(range(1, number + 1))
        assert f"**Q{number}.** {q}" in draft
        fhir_ids = {i["value"].split("/")[0] for r in fhir.get("contained", []) for i in r.get("identifier", [])}
        assert set(seen) <= fhir_ids
    drawn = {f["properties"]["call_id"] for f in geo["features"]}
    assert len(regions) >= 6 and regions <= drawn  # every region outline of every question is in the QuPath export
    # one overlay file per call, even for the same tool on the same image
    overlays = report["files"]["overlay_of"]
    assert len(set(overlays.values())) == len(overlays) == sum(1 for r in report["trace"] if r["id"] in overlays)
    assert all((fac.layout.case_dir(CASE) / p).is_file() for p in overlays.values())
    layers = fac.layers(CASE)
    assert {lyr.question for lyr in layers} == set(range(1, 11))
    assert len(fac.chat(CASE)) == 10


def test_a_dropped_finding_leaves_draft_overlays_and_exports_and_sign_off_names_it(fac):
    first = fac.analyse(CASE, "Measure the area I marked: point 100, 80.", "Dr Lopez")
    fac.analyse(CASE, "Is the image quality adequate?", "Dr Lopez")
    ledger = fac.findings(CASE)
    dropped = ledger.turns[0].findings[0]
    call = first.calls[0]["id"]
    assert dropped.sources == [call]

    fac.set_finding_kept(CASE, dropped.id, False, "Dr Lopez")
    report, draft, geo, fhir = _case_files(fac, CASE)
    assert call not in [r["id"] for r in report["trace"]] and f"[{call}]" not in draft.split("## Notes")[0]
    assert "Q1 finding dropped by Dr Lopez: region_segmentation" in draft  # ... but the report says so
    assert not [f for f in geo["features"] if f["properties"]["call_id"] == call]
    assert call not in [lyr.call_id for lyr in fac.layers(CASE)]
    assert call not in json.dumps(fhir)
    history = fac.review(CASE).history
    assert history[-1]["event"] == "finding_dropped" and history[-1]["question"] == 1
    doc = json.loads(fac.export(CASE, "json").data)
    kept = [f["kept"] for t in doc["findings"]["turns"] for f in t["findings"]]
    assert kept[0] is False and all(kept[1:]) and len(kept) == len(ledger.turns[0].findings) + len(ledger.turns[1].findings)

    state = fac.sign_off(CASE, "Dr Lopez")
    assert state.sign_off.dropped_findings == [f"Q1: {dropped.text}"]
    with pytest.raises(ReviewLockedError, match="signed off"):
        fac.set_finding_kept(CASE, dropped.id, True, "Dr Lopez")
    fac.reopen(CASE, "Dr Lopez", "keep the region after all")
    fac.set_finding_kept(CASE, dropped.id, True, "Dr Lopez")
    report, draft, geo, _ = _case_files(fac, CASE)
    assert call in [r["id"] for r in report["trace"]] and f"[{call}] (Q1)" in draft
    assert [f for f in geo["features"] if f["properties"]["call_id"] == call]
    with pytest.raises(KeyError, match="no finding"):
        fac.set_finding_kept(CASE, "f_missing", False, "Dr Lopez")


def test_signed_pdf_and_every_export_hold_the_first_finding(fac):
    from pypdf import PdfReader

    turns = [fac.analyse(CASE, q, "Dr Lopez") for q in _questions(3)]
    fac.sign_off(CASE, "Dr Lopez")
    first = turns[0].calls[0]["id"]
    data = fac.export(CASE, "pdf").data
    pdf = PdfReader(io.BytesIO(data))
    text = " ".join(p.extract_text() for p in pdf.pages)
    assert first in text and "Signed off by Dr Lopez" in text
    # one review state, one PDF: dated by the sign-off, not by the export's clock
    signed_at = fac.review(CASE).sign_off.at
    assert pdf.metadata.creation_date.isoformat().startswith(signed_at.replace("+00:00", ""))
    time.sleep(1.1)
    assert fac.export(CASE, "pdf").data == data
    assert "Is the image quality adequate?" in text and "mm²" in text  # latin-1 characters kept, not "mm^2"
    assert sum(len(p.images) for p in pdf.pages) == 1  # the image with its overlays
    assert first in fac.export(CASE, "md").data.decode()
    fhir = json.loads(fac.export(CASE, "fhir").data)
    assert fhir["resourceType"] == "DiagnosticReport" and first in json.dumps(fhir)
    geo_calls = {f["properties"]["call_id"] for f in json.loads(fac.export(CASE, "geojson").data)["features"]}
    region = [t.calls[0]["id"] for t in turns if t.calls[0]["tool"] == "region_segmentation"]
    assert region and set(region) <= geo_calls


def test_a_batch_run_case_opens_as_findings_and_keeps_them_after_a_new_question(fac):
    from pathasst.agent.engine import Engine
    from pathasst.agent.outputs import write_case

    report, artifacts = Engine(fac.settings, planner="rules").run(
        case_dir=fac.cases_root / CASE, cases_root=fac.cases_root
    )
    write_case(fac.out_dir, report, artifacts)
    # a report written before ``overlay_of`` existed still opens with its overlays
    path = fac.layout.report_json(CASE)
    doc = json.loads(path.read_text())
    del doc["files"]["overlay_of"]
    path.write_text(json.dumps(doc))
    batch_calls = [r.id for r in report.trace]
    ledger = fac.findings(CASE)
    assert [(t.number, t.source) for t in ledger.turns] == [(1, "batch run")]
    assert [s for f in ledger.turns[0].findings for s in f.sources] == batch_calls
    saved = {p.stem for p in (fac.layout.case_dir(CASE) / "findings").glob("*.png")}
    assert saved == {r.id for r in report.trace if r.status == "ok" and artifacts[r.id].overlay is not None}

    fac.analyse(CASE, "Measure the area I marked: point 50, 50.", "Dr Lopez")
    new, draft, _, _ = _case_files(fac, CASE)
    assert [r["id"] for r in new["trace"]][: len(batch_calls)] == batch_calls
    assert all(cid in draft for cid in batch_calls)
    assert {lyr.question for lyr in fac.layers(CASE)} == {1, 2}


def test_a_crash_while_rewriting_the_case_loses_no_finding(fac, monkeypatch):
    """The ledger is written before the case folder; a crash in between leaves the old folder whole, and the next
    question's rewrite brings every finding back."""
    import pathasst.ui.facade as facade_module

    fac.analyse(CASE, "Is the image quality adequate?", "Dr Lopez")
    before = fac.layout.report_json(CASE).read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    real = facade_module.write_case
    monkeypatch.setattr(facade_module, "write_case", crash)
    with pytest.raises(OSError, match="disk full"):
        fac.analyse(CASE, "Measure the area I marked: point 60, 60.", "Dr Lopez")
    assert fac.layout.report_json(CASE).read_text() == before  # the old outputs are whole
    assert len(fac.findings(CASE).turns) == 2  # the new finding is in the ledger
    monkeypatch.setattr(facade_module, "write_case", real)
    fac.analyse(CASE, "Measure the area I marked: box (10, 10, 90, 70).", "Dr Lopez")
    report = json.loads(fac.layout.report_json(CASE).read_text())
    assert [e["number"] for e in report["exchanges"]] == [1, 2, 3]
    assert [r["tool"] for r in report["trace"]] == ["tissue_qc"] * 2 + ["region_segmentation"] * 4  # two images


def test_a_tampered_batch_report_cannot_reach_files_outside_the_case(fac, tmp_path):
    from pathasst.agent.engine import Engine
    from pathasst.agent.outputs import write_case
    from pathasst.core.cases import CaseError

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not for you")
    report, artifacts = Engine(fac.settings, planner="rules").run(case_dir=fac.cases_root / CASE, cases_root=fac.cases_root)
    write_case(fac.out_dir, report, artifacts)
    path = fac.layout.report_json(CASE)
    doc = json.loads(path.read_text())
    call = doc["trace"][0]["id"]
    doc["files"]["overlay_of"] = {call: "../../secret.png"}
    path.write_text(json.dumps(doc))
    with pytest.raises(CaseError, match="outside"):
        fac.findings(CASE)
    doc["files"]["overlay_of"] = {}
    doc["trace"][0]["id"] = "call_../../../secret"  # a call id is never a path
    path.write_text(json.dumps(doc))
    ledger = fac.findings(CASE)
    assert not list((fac.layout.case_dir(CASE) / "findings").glob("*secret*"))
    assert ledger.turns[0].report["trace"][0]["id"] == "call_../../../secret"


def test_the_same_submission_twice_in_a_row_is_answered_once(fac):
    """Two page runs racing with one chat submission must not record it twice; asking again later does."""
    first = fac.analyse(CASE, "Is the image quality adequate?", "Dr Lopez")
    again = fac.analyse(CASE, "Is the image quality adequate?", "Dr Lopez")
    assert again.calls == first.calls and len(fac.chat(CASE)) == 1 and len(fac.findings(CASE).turns) == 1
    fac.analyse(CASE, "Is the image quality adequate?", "Dr Other")  # another reviewer asks it too
    assert len(fac.chat(CASE)) == 2
    fac.REPEAT_WINDOW_S = 0.0  # later on, the same question is a new question
    fac.analyse(CASE, "Is the image quality adequate?", "Dr Other")
    assert len(fac.chat(CASE)) == 3
