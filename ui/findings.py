"""A case in the review app is a set of findings: every question adds to it, nothing a later question does drops it.

Each analysis adds a *turn* (question, answer, who asked, its own report with the tool-call trace) and its
findings; the drawable output of each call (overlay PNG, GeoJSON features) is saved beside the ledger, in
``OUT/CASE/findings/``. The reviewer keeps or drops each finding. The case's outputs (``report.json``,
``report.md``, ``annotations.geojson``, the FHIR report, hence the AI draft and every export) are rebuilt from all
kept findings of all turns by :func:`merged_report`. A case written by ``pathasst run`` opens as a ledger of one
turn (:func:`from_batch_report`), so the batch format stays the review app's input.

No Streamlit here.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from pathasst.agent.outputs import OutputLayout
from pathasst.core.cases import ensure_inside
from pathasst.core.files import atomic_write_text
from pathasst.planning.report import Exchange, Finding, Report

__all__ = [
    "answer_without",
    "CaseFindings",
    "CallArtifacts",
    "FINDINGS_DIR",
    "FINDINGS_FILE",
    "LedgerFinding",
    "Turn",
    "from_batch_report",
    "load_findings",
    "merged_artifacts",
    "merged_report",
    "save_findings",
]

FINDINGS_FILE = "findings.json"
FINDINGS_DIR = "findings"


class LedgerFinding(BaseModel):
    """One finding of one turn, and whether the reviewer keeps it in the report."""

    id: str = Field(default_factory=lambda: "f_" + uuid.uuid4().hex[:10])
    text: str
    kind: str
    sources: list[str] = Field(default_factory=list)
    kept: bool = True
    changed_by: str | None = Field(None, description="Who last kept or dropped it (None: as the assistant made it).")
    changed_at: str | None = None


class Turn(BaseModel):
    """One question and what answered it."""

    id: str = Field(default_factory=lambda: "turn_" + uuid.uuid4().hex[:8])
    number: int = Field(..., ge=1)
    question: str
    answer: str
    asked_by: str = ""
    at: str = ""
    source: str = Field("review app", description="'review app' or 'batch run' (a report from `pathasst run`).")
    report: dict[str, Any] = Field(..., description="The turn's own report.json (trace, measurements, decisions...).")
    findings: list[LedgerFinding] = Field(default_factory=list)


class CaseFindings(BaseModel):
    case_id: str
    turns: list[Turn] = Field(default_factory=list)

    def finding(self, finding_id: str) -> tuple[Turn, LedgerFinding]:
        for t in self.turns:
            for f in t.findings:
                if f.id == finding_id:
                    return t, f
        raise KeyError(f"case {self.case_id} has no finding {finding_id!r}")

    @property
    def kept_calls(self) -> set[str]:
        return {s for t in self.turns for f in t.findings if f.kept for s in f.sources}

    @property
    def dropped(self) -> list[tuple[Turn, LedgerFinding]]:
        return [(t, f) for t in self.turns for f in t.findings if not f.kept]

    def add_turn(self, report: Report, asked_by: str, at: str, source: str = "review app") -> Turn:
        turn = Turn(
            number=len(self.turns) + 1,
            question=report.question,
            answer=report.answer,
            asked_by=asked_by,
            at=at,
            source=source,
            report=report.model_dump(mode="json"),
            findings=[LedgerFinding(text=f.text, kind=f.kind, sources=list(f.sources)) for f in report.findings],
        )
        self.turns.append(turn)
        return turn


@dataclass
class CallArtifacts:
    """What ``write_case`` needs of a call's result: its overlay and its features."""

    overlay: np.ndarray | None = None
    features: list[dict[str, Any]] = field(default_factory=list)


# ---- files --------------------------------------------------------------------------------------------------
_CALL_ID = re.compile(r"^call_[A-Za-z0-9_-]{1,40}$")


def _dir(out_dir: Path, case_id: str) -> Path:
    return OutputLayout(Path(out_dir)).case_dir(case_id) / FINDINGS_DIR


def _artifact(folder: Path, call_id: str, suffix: str) -> Path:
    """``folder/CALL_ID.suffix``; a call id that is not one (a path, dots) is refused, so no path leaves ``folder``."""
    if not _CALL_ID.match(call_id):
        raise ValueError(f"not a tool-call id: {call_id!r}")
    return folder / f"{call_id}{suffix}"


def load_findings(out_dir: Path, case_id: str) -> CaseFindings | None:
    path = OutputLayout(Path(out_dir)).case_dir(case_id) / FINDINGS_FILE
    try:
        return CaseFindings.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def save_findings(out_dir: Path, ledger: CaseFindings) -> None:
    atomic_write_text(
        OutputLayout(Path(out_dir)).case_dir(ledger.case_id) / FINDINGS_FILE, ledger.model_dump_json(indent=1)
    )


def save_artifacts(out_dir: Path, case_id: str, artifacts: dict[str, Any]) -> None:
    """Keep each call's overlay and features in ``OUT/CASE/findings/`` (files are written once, never changed)."""
    folder = _dir(out_dir, case_id)
    folder.mkdir(parents=True, exist_ok=True)
    for call_id, res in artifacts.items():
        overlay = getattr(res, "overlay", None)
        if overlay is not None:
            target = _artifact(folder, call_id, ".png")
            tmp = target.with_name(f".{target.name}.tmp")
            Image.fromarray(np.ascontiguousarray(overlay)).save(tmp, format="PNG")
            tmp.replace(target)
        features = getattr(res, "features", None) or []
        if features:
            atomic_write_text(
                _artifact(folder, call_id, ".geojson"), json.dumps({"type": "FeatureCollection", "features": features})
            )


def _load_artifacts(out_dir: Path, case_id: str, call_id: str) -> CallArtifacts:
    folder = _dir(out_dir, case_id)
    png, geo = _artifact(folder, call_id, ".png"), _artifact(folder, call_id, ".geojson")
    overlay = np.asarray(Image.open(png)) if png.is_file() else None
    features = json.loads(geo.read_text(encoding="utf-8"))["features"] if geo.is_file() else []
    return CallArtifacts(overlay=overlay, features=features)


def from_batch_report(out_dir: Path, case_id: str, report: dict[str, Any]) -> CaseFindings:
    """The ledger of a case written by ``pathasst run`` (one turn), its overlays and features saved beside it."""
    layout = OutputLayout(Path(out_dir))
    rep = Report.model_validate({k: v for k, v in report.items() if k != "files"})
    ledger = CaseFindings(case_id=case_id)
    ledger.add_turn(rep, asked_by="", at=rep.created_at, source="batch run")
    files = report.get("files") or {}
    overlay_of = dict(files.get("overlay_of") or {})
    if not overlay_of:  # reports older than ``overlay_of``: the last call of a tool on an image wrote the file
        for rec in rep.trace:
            if rec.status == "ok":
                overlay_of[rec.id] = OutputLayout.overlay_name(rec.image or "image", rec.tool)
        for rec in rep.trace:
            if overlay_of.get(rec.id) not in (files.get("overlays") or []):
                overlay_of.pop(rec.id, None)
        last = {name: cid for cid, name in overlay_of.items()}
        overlay_of = {cid: name for name, cid in last.items()}
    features: dict[str, list[dict[str, Any]]] = {}
    try:
        doc = json.loads(layout.annotations(case_id).read_text(encoding="utf-8"))
        for f in doc.get("features", []):
            features.setdefault((f.get("properties") or {}).get("call_id", ""), []).append(f)
    except FileNotFoundError:
        pass
    artifacts = {}
    for rec in rep.trace:
        if not _CALL_ID.match(rec.id):
            continue
        # report.json names the overlay: it must lie in the case folder
        path = ensure_inside(layout.case_dir(case_id) / overlay_of[rec.id], layout.case_dir(case_id)) \
            if rec.id in overlay_of else None
        overlay = np.asarray(Image.open(path)) if path is not None and path.is_file() else None
        if overlay is not None or features.get(rec.id):
            artifacts[rec.id] = CallArtifacts(overlay=overlay, features=features.get(rec.id, []))
    save_artifacts(out_dir, case_id, artifacts)
    return ledger


# ---- the case's report ----------------------------------------------------------------------------------------
_REF = re.compile(r"\[(call_[A-Za-z0-9_-]+)\]")
_AFTER_REF = re.compile(r"(?<=\]\.)\s+")


def answer_without(answer: str, dropped: set[str]) -> str:
    """``answer`` less its sentences that cite only dropped calls (a sentence without a citation, such as a
    warning, goes with the cited sentence before it)."""
    if not dropped or not _REF.search(answer):
        return answer
    parts: list[str] = []
    for seg in _AFTER_REF.split(answer):
        if parts and not _REF.search(seg):
            parts[-1] += " " + seg
        else:
            parts.append(seg)
    kept = [p for p in parts if not set(_REF.findall(p)) <= dropped]
    return " ".join(kept) if kept else "(The reviewer dropped every finding of this answer.)"


def merged_report(ledger: CaseFindings) -> Report:
    """One report of every kept finding of every turn: its calls, measurements, similar cases and exchanges.

    A dropped finding leaves the findings, the trace and the overlays, and is named in the notes (the full record
    stays in ``findings.json``).
    """
    if not ledger.turns:
        raise ValueError(f"case {ledger.case_id} has no analysis yet")
    kept = ledger.kept_calls
    dropped_calls = {s for _, f in ledger.dropped for s in f.sources} - kept
    reports = [Report.model_validate({k: v for k, v in t.report.items() if k != "files"}) for t in ledger.turns]
    last = reports[-1]
    findings = [
        Finding(text=f.text, kind=f.kind, sources=f.sources, question=t.number)  # type: ignore[arg-type]
        for t in ledger.turns for f in t.findings if f.kept
    ]
    similar: dict[str, dict[str, Any]] = {}
    for r in reports:
        for s in r.similar_cases:
            key = str(s.get("case_id"))
            if key not in similar or float(s.get("distance") or 0) < float(similar[key].get("distance") or 0):
                similar[key] = s
    notes: list[str] = []
    for r in reports:
        notes += [n for n in r.notes if n not in notes]
    for t, f in ledger.dropped:
        notes.append(f"Q{t.number} finding dropped by {f.changed_by or 'the reviewer'}: {f.text}")
    timings: dict[str, float] = {}
    for r in reports:
        for k, v in r.timings.items():
            timings[k] = timings.get(k, 0.0) + float(v)
    return Report(
        case_id=ledger.case_id,
        question=last.question,
        answer=last.answer,
        answer_source=last.answer_source,
        planner=", ".join(dict.fromkeys(r.planner for r in reports)),
        stain=last.stain,
        organ=last.organ,
        images=last.images,
        findings=findings,
        measurements=[m for r in reports for m in r.measurements if m.source in kept],
        trace=[rec for r in reports for rec in r.trace if rec.id in kept],
        decisions=[d for r in reports for d in r.decisions],
        similar_cases=sorted(similar.values(), key=lambda s: float(s.get("distance") or 0)),
        exchanges=[
            Exchange(number=t.number, question=t.question, answer=answer_without(t.answer, dropped_calls),
                     asked_by=t.asked_by, at=t.at)
            for t in ledger.turns
        ],
        problems=last.problems,
        notes=notes,
        versions=last.versions,
        timings=timings,
    )


def merged_artifacts(out_dir: Path, ledger: CaseFindings) -> dict[str, CallArtifacts]:
    """The saved overlay and features of every kept call."""
    return {cid: _load_artifacts(out_dir, ledger.case_id, cid) for cid in ledger.kept_calls if _CALL_ID.match(cid)}
