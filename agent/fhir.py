"""A case's report as a FHIR R4 ``DiagnosticReport`` (``report.fhir.json``), for import into a LIS or EHR.

One self-contained resource: the report, with its results as *contained* resources. Each figure a tool measured
(the report's ``measurements``, plus per-class fractions and probabilities) is an ``Observation`` whose ``device``
is a contained ``Device`` naming the tool, its version and its weights' sha256, and whose ``derivedFrom`` is a
contained ``Media`` naming the analysed image. A tool call that failed, was refused or had no weights gives an
``Observation`` with status ``cancelled``, a ``dataAbsentReason`` and a ``note``, never a value.

The report is an AI draft that nobody has signed off, so its status is ``preliminary``. Codes are standard ones
only: the report is LOINC 60567-5 "Comprehensive pathology report panel" (a whole-report panel; 22637-3 is the
narrative *final diagnosis* section, which a draft of tool measurements is not) in the HL7 v2-0074 section ``PAT``.
No standard code is claimed for a tool's output: an Observation's ``code`` has ``text`` only. The subject is a
reference by identifier to the case id; no patient data is invented. The Markdown report is ``presentedForm``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import math
from dataclasses import dataclass
from typing import Any, Literal

from pathasst.planning.report import PERCENT_FIELDS, Report
from pathasst.tools.base import ToolCallRecord

__all__ = [
    "CASE_SYSTEM",
    "FHIR_FILE",
    "OUTPUT_SYSTEM",
    "UNITLESS",
    "UNITS",
    "Unit",
    "diagnostic_report",
]

FHIR_FILE = "report.fhir.json"
#: identifier system of PathAsst case ids (DiagnosticReport.identifier and the subject's identifier)
CASE_SYSTEM = "urn:pathasst:case"
#: identifier system of one tool output: ``CALL_ID/FIELD`` (or ``CALL_ID`` for a call that gave no value)
OUTPUT_SYSTEM = "urn:pathasst:tool-output"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"

ReportStatus = Literal["preliminary"]
ObservationStatus = Literal["preliminary", "cancelled"]
AbsentReason = Literal["error", "not-performed", "unknown", "not-a-number", "positive-infinity", "negative-infinity"]


@dataclass(frozen=True)
class Unit:
    """The unit of a numeric tool output: a UCUM code, or (no UCUM unit exists, e.g. pixels) display text only."""

    text: str
    ucum: str | None = None


_COUNT, _PCT, _FRACTION = Unit("{count}", "{count}"), Unit("%", "%"), Unit("1", "1")
_MM2, _PER_MM2, _UM2, _UM = Unit("mm2", "mm2"), Unit("/mm2", "/mm2"), Unit("um2", "um2"), Unit("um", "um")

#: unit of every numeric output field of the registered tools, by field name (dict fields: of each value)
UNITS: dict[str, Unit] = {
    **dict.fromkeys(
        ("positive_cells", "negative_cells", "total_cells", "weak_cells", "moderate_cells", "strong_cells", "count",
         "cell_counts", "type_counts", "n_tiles", "library_images", "n_atypical", "tile_counts", "n_lesion_regions"),
        _COUNT,
    ),
    **dict.fromkeys(PERCENT_FIELDS, _PCT),
    **dict.fromkeys(
        ("tissue_fraction", "pen_fraction", "nuclear_area_fraction", "tumor_stroma_ratio", "probability",
         "top_probability", "area_fractions", "class_probabilities", "probabilities", "mean_eccentricity",
         "mean_solidity", "out_of_domain_fraction", "lesion_fraction", "dab_outside_nuclei"),
        _FRACTION,
    ),
    **dict.fromkeys(("density_per_mm2", "count_per_mm2"), _PER_MM2),
    **dict.fromkeys(("tissue_area_mm2", "area_mm2", "analysed_area_mm2", "tumor_area_mm2", "lesion_area_mm2"), _MM2),
    **dict.fromkeys(("mean_area_um2", "area_um2", "area_um2_p10", "area_um2_p50", "area_um2_p90"), _UM2),
    **dict.fromkeys(("perimeter_um", "equivalent_diameter_um"), _UM),
    **dict.fromkeys(("mean_area_px", "area_px"), Unit("px2")),
    "perimeter_px": Unit("px"),
    "mpp": Unit("um/px"),
    "per_10_hpf": Unit("/10 HPF"),
}
#: numeric output fields that are scores without a unit (written as a Quantity with a value only)
UNITLESS: frozenset[str] = frozenset(
    {"h_score", "allred", "blur_score", "blur_threshold", "mean_tissue_od", "hematoxylin_od", "eosin_od",
     "boundary_contrast", "sam_score"}
)


def _instant(created_at: str) -> str:
    """``created_at`` as a FHIR instant (seconds and a time zone; a naive time is taken as UTC)."""
    t = _dt.datetime.fromisoformat(created_at)
    return (t if t.tzinfo else t.replace(tzinfo=_dt.UTC)).isoformat(timespec="seconds")


def _case_ref(case_id: str) -> dict[str, Any]:
    return {"identifier": {"system": CASE_SYSTEM, "value": case_id}, "display": f"PathAsst case {case_id}"}


def _quantity(name: str, value: float) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    unit = UNITS.get(name)
    if unit is not None:
        q["unit"] = unit.text
        if unit.ucum:
            q.update(system=UCUM, code=unit.ucum)
    return q


def _absent(reason: AbsentReason) -> dict[str, Any]:
    return {"coding": [{"system": DATA_ABSENT, "code": reason}]}


def _value(name: str, value: Any) -> dict[str, Any]:
    """``value[x]`` of one output, or a ``dataAbsentReason`` for NaN, an infinity or an empty string."""
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            reason = "not-a-number" if math.isnan(value) else "positive-infinity" if value > 0 else "negative-infinity"
            return {"dataAbsentReason": _absent(reason)}
        return {"valueQuantity": _quantity(name, value)}
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return {"valueString": text} if text else {"dataAbsentReason": _absent("unknown")}  # FHIR strings are non-empty


def _numeric_dicts(output: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """Output fields that map a class name to a number (area fractions, probabilities, counts per class)."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return [(k, v) for k, v in output.items() if isinstance(v, dict) and v and all(map(number, v.values()))]


class _Builder:
    """Collects the contained resources; ids are sequential (``dev-1``, ``img-1``, ``obs-1``), so output is stable."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.when = _instant(report.created_at)
        self.devices: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}
        self.media: dict[str, dict[str, Any]] = {}
        self.observations: list[dict[str, Any]] = []

    def device(self, rec: ToolCallRecord) -> dict[str, Any] | None:
        """Reference to the Device of the call's tool (None for a tool that is not registered: no version)."""
        model = rec.model or {}
        version = model.get("version") or rec.tool_version
        if version is None:
            return None
        sha = model.get("weights_sha256") or model.get("shipped_weights_sha256")
        key = (rec.tool, version, sha)
        if key not in self.devices:
            versions = [{"type": {"text": "tool version"}, "value": str(version)}]
            if sha:
                versions.append({"type": {"text": "weights sha256"}, "value": sha})
            if self.report.versions.get("pathasst"):
                versions.append({"type": {"text": "pathasst"}, "value": str(self.report.versions["pathasst"])})
            self.devices[key] = {
                "resourceType": "Device",
                "id": f"dev-{len(self.devices) + 1}",
                "deviceName": [{"name": rec.tool, "type": "model-name"}],
                "type": {"text": "PathAsst pathology image-analysis tool"},
                "version": versions,
            }
        return {"reference": f"#{self.devices[key]['id']}", "display": rec.tool}

    def image(self, name: str) -> dict[str, Any]:
        if name not in self.media:
            self.media[name] = {
                "resourceType": "Media",
                "id": f"img-{len(self.media) + 1}",
                "status": "completed",
                "type": {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
                "content": {"title": name},
            }
        return {"reference": f"#{self.media[name]['id']}", "display": name}

    def observation(
        self, rec: ToolCallRecord, ident: str, text: str, status: ObservationStatus, body: dict[str, Any]
    ) -> None:
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": f"obs-{len(self.observations) + 1}",
            "identifier": [{"system": OUTPUT_SYSTEM, "value": ident}],
            "status": status,
            "code": {"text": text},
            "subject": _case_ref(self.report.case_id),
            "effectiveDateTime": self.when,
            **body,
        }
        backend = (rec.model or {}).get("backend") or (rec.output or {}).get("backend")
        if backend and status != "cancelled":
            obs["method"] = {"text": f"{rec.tool} backend: {backend}"}
        if (dev := self.device(rec)) is not None:
            obs["device"] = dev
        if rec.image:
            obs["derivedFrom"] = [self.image(rec.image)]
        self.observations.append(obs)

    def call(self, rec: ToolCallRecord) -> None:
        if rec.status != "ok":
            if rec.status == "not_configured":
                reason: AbsentReason = "not-performed"
                note = f"{rec.tool} was not run: {(rec.output or {}).get('message') or 'not configured'}"
            else:
                reason = "error"
                what = "failed" if rec.status == "failed" else "was called wrongly"
                note = f"{rec.tool} {what}: {rec.error or 'no message'}"
            body = {"dataAbsentReason": _absent(reason), "note": [{"text": note}]}
            self.observation(rec, rec.id, f"{rec.tool} ({rec.status.replace('_', ' ')})", "cancelled", body)
            return
        for m in self.report.measurements:
            if m.source == rec.id:
                body = _value(m.name, m.value)
                self.observation(rec, f"{rec.id}/{m.name}", f"{rec.tool}: {m.name.replace('_', ' ')}",
                                 "preliminary", body)
        for name, values in _numeric_dicts(rec.output or {}):
            comps = [{"code": {"text": str(k)}, **_value(name, v)} for k, v in values.items()]
            self.observation(rec, f"{rec.id}/{name}", f"{rec.tool}: {name.replace('_', ' ')}", "preliminary",
                             {"component": comps})


def _narrative(report: Report) -> dict[str, Any]:
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml">'
        f"<p><b>PathAsst report, case {html.escape(report.case_id)}</b>: preliminary AI draft for review by a "
        "pathologist; not a diagnosis.</p>"
        f"<p>{html.escape(report.answer)}</p></div>"
    )
    return {"status": "generated", "div": div}


def diagnostic_report(report: Report, markdown: str) -> dict[str, Any]:
    """The FHIR R4 DiagnosticReport (JSON-ready dict) of ``report``; ``markdown`` is its rendered ``report.md``."""
    b = _Builder(report)
    for rec in report.trace:
        b.call(rec)
    md = markdown.encode("utf-8")
    status: ReportStatus = "preliminary"
    dr: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "text": _narrative(report),
        "contained": [*b.devices.values(), *b.media.values(), *b.observations],
        "identifier": [{"system": CASE_SYSTEM, "value": report.case_id}],
        "status": status,
        "category": [{"coding": [{"system": V2_0074, "code": "PAT",
                                  "display": "Pathology (gross & histopath, not surgical)"}]}],
        "code": {"coding": [{"system": LOINC, "code": "60567-5", "display": "Comprehensive pathology report panel"}],
                 "text": "PathAsst AI-assisted pathology report (draft)"},
        "subject": _case_ref(report.case_id),
        "effectiveDateTime": b.when,
        "issued": b.when,
        "result": [{"reference": f"#{o['id']}"} for o in b.observations],
        "conclusion": report.answer or None,
        "presentedForm": [{
            "contentType": "text/markdown",
            "language": "en",
            "data": base64.b64encode(md).decode("ascii"),
            "size": len(md),
            "hash": base64.b64encode(hashlib.sha1(md, usedforsecurity=False).digest()).decode("ascii"),
            "title": "report.md",
            "creation": b.when,
        }],
    }
    return {k: v for k, v in dr.items() if v not in (None, [])}  # FHIR has no empty elements
