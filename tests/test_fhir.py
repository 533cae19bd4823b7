"""``report.fhir.json``: the FHIR R4 DiagnosticReport written beside ``report.json``, checked against real runs.

The example cases (``pathasst demo``'s Ki-67 patch, QC pair and broken-inputs case), a U-Net tumour map with a
weights file saved here, a tool without weights and a crashing tool run through the real graph and ``write_case``.
Each FHIR file is checked by hand against the R4 rules a validator applies (cardinalities, value sets used,
references resolve to contained resources, invariants dom-2/3/4/5, obs-6, qty-3, att-1), by ``fhir.resources``
(R4B models, structurally identical to R4 for DiagnosticReport, Observation, Device and Media) when installed, and
value by value against ``report.json``'s tool outputs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tool_helpers import EXPECTED_TOOLS, loadable_tools

from pathasst.agent.engine import Engine
from pathasst.agent.fhir import CASE_SYSTEM, FHIR_FILE, OUTPUT_SYSTEM, UNITLESS, UNITS, diagnostic_report
from pathasst.agent.outputs import case_is_done, write_case
from pathasst.planning.base import PlanDecision, PlannedCall, PlannerContext
from pathasst.planning.report import Measurement, Report, render_markdown
from pathasst.tools.base import PathologyTool, ToolCallRecord
from pathasst.tools.registry import default_registry

ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
INSTANT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
UCUM = "http://unitsofmeasure.org"
#: R4 value sets (required bindings) of the coded elements written
DR_STATUS = {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled",
             "entered-in-error", "unknown"}
OBS_STATUS = {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
DEVICE_NAME_TYPE = {"udi-label-name", "user-friendly-name", "patient-reported-name", "manufacturer-name", "model-name",
                    "other"}
MEDIA_STATUS = {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error",
                "unknown"}
#: Reference target types R4 allows for the references written
TARGETS = {("DiagnosticReport", "result"): {"Observation"}, ("Observation", "device"): {"Device", "DeviceMetric"},
           ("Observation", "derivedFrom"): {"DocumentReference", "ImagingStudy", "Media", "QuestionnaireResponse",
                                            "Observation", "MolecularSequence"}}
VALUE_X = ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueRange",
           "valueRatio", "valueSampledData", "valueTime", "valueDateTime", "valuePeriod")


class CrashTool(PathologyTool):
    name = "crashy"
    description = "Always crashes with a RuntimeError; proves a failed call gives a note and no value."

    def analyze(self, image, args):
        raise RuntimeError("simulated backend crash")


class Scripted:
    """Calls the given tools on every image once, then finishes."""

    name = "scripted"

    def __init__(self, tools: list[str]) -> None:
        self.tools = tools

    def plan(self, ctx: PlannerContext) -> PlanDecision:
        if ctx.step > 0:
            return PlanDecision.finish("done")
        return PlanDecision(action="call_tools", calls=[PlannedCall(tool=t, arguments={"image": im})
                                                        for t in self.tools for im in ctx.images])

    def phrase(self, ctx: PlannerContext, draft: str) -> None:
        return None


def _unet_weights(path: Path) -> Path:
    import torch

    from pathasst.tools.backends.unet import build_unet

    torch.manual_seed(0)
    model = build_unet(3, base_channels=8, depth=2, norm="batch").eval()
    config = {"classes": ["background", "tumor", "stroma"], "input_mpp": 1.0, "base_channels": 8, "depth": 2,
              "tile_size": 112, "overlap": 24}
    torch.save({"state_dict": model.state_dict(), "config": config}, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Case folders written by ``write_case`` from real graph runs, by scenario name."""
    from pathasst.agent.demo import build_demo_cases
    from pathasst.core.settings import Settings

    root = tmp_path_factory.mktemp("fhir")
    cases, out = root / "cases", root / "out"
    build_demo_cases(cases)
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("PATHASST_") and key != "PATHASST_SHARED_DATA":
                mp.delenv(key)
        settings = Settings(_env_file=None, output_dir=out, chroma_path=root / "chroma", torch_threads=1,
                            cache_dir=Path(os.environ.get("PATHASST_TEST_CACHE", Path.home() / ".cache" / "pathasst")))
        with_unet = settings.model_copy(update={"tumor_seg_weights": _unet_weights(root / "unet.pt")})
        crash_registry = default_registry(settings)
        crash_registry.register(CrashTool)
        scenarios = [
            ("ki67", Engine(settings, planner="rules"), "ki67_patch", None),
            ("nuclei", Engine(settings, planner="rules"), "ki67_patch", "Segment the nuclei: how large are they?"),
            ("qc", Engine(settings, planner="rules"), "qc_blurred", None),
            ("broken", Engine(settings, planner="rules"), "broken_inputs", None),
            # every sub-model has an embedded default now; a missing case library is what stays unconfigured
            ("no_weights", Engine(settings, planner="rules"), "ki67_patch", "Find similar past cases."),
            ("unet", Engine(with_unet, planner="rules"), "ki67_patch", "What is the tumour-stroma ratio?"),
            ("crash", Engine(settings, planner=Scripted(["crashy", "ihc_quantification", "mitosis_detektor"]),
                             registry=crash_registry), "ki67_patch", "What is the Ki-67 index?"),
        ]
        written = {}
        for name, engine, case, question in scenarios:
            report, artifacts = engine.run(case_dir=cases / case, question=question)
            written[name] = write_case(out / name, report, artifacts)
    return written


def _load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (json.loads((folder / FHIR_FILE).read_text(encoding="utf-8")),
            json.loads((folder / "report.json").read_text(encoding="utf-8")))


def _contained(fhir: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in fhir.get("contained", [])}


def _observations(fhir: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = _contained(fhir)
    return [by_id[ref["reference"][1:]] for ref in fhir.get("result", [])]


def _walk(obj: Any, path: str = "") -> typing.Iterator[tuple[str, Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, f"{path}[]")


def _assert_r4_structure(fhir: dict[str, Any]) -> None:
    """What an R4 validator checks that a JSON schema does not: bindings, references, invariants."""
    for path, v in _walk(fhir):
        assert v not in ("", [], {}, None), f"empty element at {path}"  # FHIR JSON has no empty or null elements
        assert not (isinstance(v, float) and not np.isfinite(v)), path
    assert fhir["resourceType"] == "DiagnosticReport" and fhir["status"] in DR_STATUS
    assert fhir["code"]["coding"] and INSTANT.match(fhir["issued"]) and INSTANT.match(fhir["effectiveDateTime"])
    contained = _contained(fhir)
    assert len(contained) == len(fhir.get("contained", [])), "contained ids must be unique"
    referenced: set[str] = set()
    for res in fhir.get("contained", []):
        assert ID.match(res["id"]), res["id"]
        assert "contained" not in res, "dom-2: no nested contained resources"
        assert "meta" not in res and "text" not in res, "dom-1/dom-4/dom-5: contained: no narrative, no meta"
        if res["resourceType"] == "Observation":
            assert res["status"] in OBS_STATUS and res["code"].get("text")
            values = [k for k in VALUE_X if k in res]
            assert len(values) <= 1, "value[x] is 0..1"
            assert not (values and "dataAbsentReason" in res), "obs-6: dataAbsentReason only without a value"
            for comp in res.get("component", []):
                assert comp["code"]["text"] and sum(k in comp for k in (*VALUE_X, "dataAbsentReason")) == 1
        elif res["resourceType"] == "Device":
            assert all(n["type"] in DEVICE_NAME_TYPE and n["name"] for n in res["deviceName"])
            assert all(v["value"] for v in res.get("version", []))
        elif res["resourceType"] == "Media":
            assert res["status"] in MEDIA_STATUS and res["content"]
        else:
            pytest.fail(f"unexpected contained {res['resourceType']}")
        for path, v in _walk(res):
            if isinstance(v, dict) and "system" in v and "value" in v and isinstance(v["value"], (int, float)):
                assert "code" not in v or v["system"] == UCUM, f"qty-3 at {path}"
        for field, targets in ((f, t) for (owner, f), t in TARGETS.items() if owner == res["resourceType"]):
            refs = res.get(field) or []
            for ref in refs if isinstance(refs, list) else [refs]:
                target = contained[ref["reference"].removeprefix("#")]  # resolves inside this resource
                assert ref["reference"].startswith("#") and target["resourceType"] in targets
                referenced.add(target["id"])
    for ref in fhir.get("result", []):
        assert contained[ref["reference"].removeprefix("#")]["resourceType"] in TARGETS["DiagnosticReport", "result"]
        referenced.add(ref["reference"][1:])
    assert referenced == set(contained), "dom-3: every contained resource is referenced"
    for form in fhir["presentedForm"]:
        assert form["contentType"], "att-1: data needs a contentType"


def _r4b_validate(fhir: dict[str, Any]) -> None:
    mod = pytest.importorskip("fhir.resources.R4B.diagnosticreport")
    dr = mod.DiagnosticReport.model_validate(fhir)
    assert [type(c).__name__ for c in dr.contained or []] == [c["resourceType"] for c in fhir.get("contained", [])]
    assert [r.reference for r in dr.result or []] == [r["reference"] for r in fhir.get("result", [])]


SCENARIOS = ["ki67", "nuclei", "qc", "broken", "no_weights", "unet", "crash"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_fhir_report_matches_report_json(runs: dict[str, Path], name: str) -> None:
    folder = runs[name]
    fhir, rep = _load(folder)
    assert rep["files"]["fhir"] == FHIR_FILE
    _assert_r4_structure(fhir)
    assert fhir["status"] == "preliminary"
    assert fhir["category"] == [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "PAT",
                                             "display": "Pathology (gross & histopath, not surgical)"}]}]
    assert fhir["code"]["coding"] == [{"system": "http://loinc.org", "code": "60567-5",
                                       "display": "Comprehensive pathology report panel"}]
    assert fhir["identifier"] == [{"system": CASE_SYSTEM, "value": rep["case_id"]}]
    assert fhir["subject"]["identifier"] == {"system": CASE_SYSTEM, "value": rep["case_id"]}
    assert set(fhir["subject"]) == {"identifier", "display"}  # no patient data, no invented resource
    assert fhir["conclusion"] == rep["answer"]
    assert fhir["issued"] == fhir["effectiveDateTime"] == rep["created_at"]
    (form,) = fhir["presentedForm"]
    md = (folder / "report.md").read_bytes()
    assert form["contentType"] == "text/markdown" and base64.b64decode(form["data"]) == md
    assert form["size"] == len(md) and base64.b64decode(form["hash"]) == hashlib.sha1(md).digest()

    contained = _contained(fhir)
    obs = _observations(fhir)
    by_ident = {o["identifier"][0]["value"]: o for o in obs}
    assert len(by_ident) == len(obs) and all(o["identifier"][0]["system"] == OUTPUT_SYSTEM for o in obs)
    expected: set[str] = set()
    for rec in rep["trace"]:
        device = None
        if rec.get("tool_version"):
            matches = [o for k, o in by_ident.items() if k.split("/")[0] == rec["id"]]
            assert matches, rec["id"]
            device = contained[matches[0]["device"]["reference"][1:]]
            assert device["deviceName"] == [{"name": rec["tool"], "type": "model-name"}]
            versions = {v["type"]["text"]: v["value"] for v in device["version"]}
            assert versions["tool version"] == rec["tool_version"] == (rec["model"] or {}).get("version",
                                                                                             rec["tool_version"])
            model = rec["model"] or {}
            assert versions.get("weights sha256") == (model.get("weights_sha256") or model.get("shipped_weights_sha256"))
        if rec["status"] != "ok":
            o = by_ident[rec["id"]]
            expected.add(rec["id"])
            assert o["status"] == "cancelled" and not any(k in o for k in (*VALUE_X, "component"))
            reason = "not-performed" if rec["status"] == "not_configured" else "error"
            assert o["dataAbsentReason"]["coding"][0]["code"] == reason
            assert (rec["error"] or rec["output"]["message"]) in o["note"][0]["text"]
            assert ("device" in o) == (device is not None)
            continue
        for m in (m for m in rep["measurements"] if m["source"] == rec["id"]):
            o = by_ident[f"{rec['id']}/{m['name']}"]
            expected.add(f"{rec['id']}/{m['name']}")
            value = rec["output"][m["name"]]  # the tool's output as report.json records it
            assert o["status"] == "preliminary" and o["derivedFrom"][0]["display"] == rec["image"]
            assert contained[o["derivedFrom"][0]["reference"][1:]]["content"]["title"] == rec["image"]
            if isinstance(value, bool):
                assert o["valueBoolean"] is value
            elif isinstance(value, (int, float)):
                assert o["valueQuantity"]["value"] == value
                unit = UNITS.get(m["name"])
                if unit is not None and unit.ucum:
                    assert {k: o["valueQuantity"][k] for k in ("unit", "system", "code")} == {
                        "unit": unit.text, "system": UCUM, "code": unit.ucum}
            else:
                assert o["valueString"] == (", ".join(value) if isinstance(value, list) else value)
        for field, values in rec["output"].items():
            if isinstance(values, dict) and values:
                o = by_ident[f"{rec['id']}/{field}"]
                expected.add(f"{rec['id']}/{field}")
                assert {c["code"]["text"]: c["valueQuantity"]["value"] for c in o["component"]} == values
    assert set(by_ident) == expected  # one Observation per output, nothing else


@pytest.mark.parametrize("name", SCENARIOS)
def test_fhir_resources_parses_every_report(runs: dict[str, Path], name: str) -> None:
    _r4b_validate(_load(runs[name])[0])


def test_headline_values_and_units(runs: dict[str, Path]) -> None:
    """The Ki-67 index, cell counts, densities, nuclear areas and the QC flags, as a LIS would read them."""
    fhir, rep = _load(runs["ki67"])
    (ihc,) = rep["trace"]
    assert ihc["tool"] == "ihc_quantification" and ihc["status"] == "ok"
    by_field = {o["identifier"][0]["value"].split("/")[1]: o for o in _observations(fhir)}
    # the demo's DAB sample is membranous: the Ki-67 index is withheld with a warning, never sent as a number
    assert ihc["output"]["positivity_index"] is None and "positivity_index" not in by_field
    assert by_field["in_domain"]["valueBoolean"] is False and "membranous" in by_field["warnings"]["valueString"]
    assert by_field["dab_outside_nuclei"]["valueQuantity"]["value"] == ihc["output"]["dab_outside_nuclei"]
    assert by_field["positive_cells"]["valueQuantity"]["code"] == "{count}"
    assert by_field["positive_cells"]["valueQuantity"]["value"] == ihc["output"]["positive_cells"] > 0
    assert by_field["density_per_mm2"]["valueQuantity"]["unit"] == "/mm2"
    assert by_field["mode"]["valueString"] == "ki67" and by_field["mpp_assumed"]["valueBoolean"] is False
    assert by_field["positive_cells"]["code"] == {"text": "ihc_quantification: positive cells"}  # no invented code

    fhir, rep = _load(runs["nuclei"])
    (nuc,) = rep["trace"]
    assert nuc["tool"] == "nuclei_segmentation"
    by_field = {o["identifier"][0]["value"].split("/")[1]: o for o in _observations(fhir)}
    assert by_field["count"]["valueQuantity"] == {"value": nuc["output"]["count"], "unit": "{count}", "system": UCUM,
                                                  "code": "{count}"}
    assert by_field["mean_area_um2"]["valueQuantity"]["code"] == "um2"
    assert by_field["mean_area_px"]["valueQuantity"] == {"value": nuc["output"]["mean_area_px"], "unit": "px2"}

    fhir, rep = _load(runs["qc"])
    blurry = {o["derivedFrom"][0]["display"]: o["valueBoolean"] for o in _observations(fhir)
              if o["code"]["text"] == "tissue_qc: blurry"}
    assert blurry == {"blurred.png": True, "sharp.png": False}
    devices = [r for r in fhir["contained"] if r["resourceType"] == "Device"]
    assert len(devices) == 1  # one tool version, two calls: one Device


def test_weights_sha256_and_area_fractions(runs: dict[str, Path]) -> None:
    fhir, rep = _load(runs["unet"])
    (rec,) = rep["trace"]
    assert rec["tool"] == "tumor_segmentation" and rec["status"] == "ok"
    weights = Path(rec["model"]["weights"])
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    obs = _observations(fhir)
    (device,) = [r for r in fhir["contained"] if r["resourceType"] == "Device"]
    assert {v["type"]["text"]: v["value"] for v in device["version"]}["weights sha256"] == sha
    assert all(o["device"]["reference"] == f"#{device['id']}" for o in obs)
    (fractions,) = [o for o in obs if o["identifier"][0]["value"].endswith("/area_fractions")]
    assert {c["code"]["text"]: c["valueQuantity"]["value"] for c in fractions["component"]} == \
        rec["output"]["area_fractions"]
    assert {c["valueQuantity"]["code"] for c in fractions["component"]} == {"1"}

    fhir, rep = _load(runs["no_weights"])
    (o,) = _observations(fhir)
    assert o["status"] == "cancelled" and "pathasst library add" in o["note"][0]["text"]
    assert o["dataAbsentReason"]["coding"][0]["code"] == "not-performed"


def test_a_failed_call_gives_a_note_and_no_value(runs: dict[str, Path]) -> None:
    fhir, rep = _load(runs["crash"])
    status = {r["tool"]: (r["id"], r["status"]) for r in rep["trace"]}
    assert {t: s for t, (_, s) in status.items()} == {"crashy": "failed", "ihc_quantification": "ok",
                                                     "mitosis_detektor": "bad_call"}
    by_ident = {o["identifier"][0]["value"]: o for o in _observations(fhir)}
    crash = by_ident[status["crashy"][0]]
    assert "simulated backend crash" in crash["note"][0]["text"] and crash["device"]["display"] == "crashy"
    assert not [k for k in by_ident if k.startswith(status["crashy"][0] + "/")]  # no numeric Observation
    unknown = by_ident[status["mitosis_detektor"][0]]
    assert "device" not in unknown  # no Device is made up for a tool that does not exist
    assert "valid tools" in unknown["note"][0]["text"]
    assert any(k.startswith(status["ihc_quantification"][0] + "/") for k in by_ident)


def test_non_finite_and_empty_values_are_absent_not_invalid() -> None:
    rec = ToolCallRecord(id="call_0", tool="probe", arguments={"image": "a.png"}, status="ok", summary="", image="a.png",
                         output={"blur_score": float("nan"), "h_score": float("inf"), "label": ""}, tool_version="1")
    report = Report(case_id="c_1", question="q", answer="a", planner="p", trace=[rec], measurements=[
        Measurement(name=k, value=v, tool="probe", image="a.png", source="call_0") for k, v in rec.output.items()])
    fhir = diagnostic_report(report, render_markdown(report))
    json.dumps(fhir, allow_nan=False)
    _assert_r4_structure(fhir)
    reasons = [o["dataAbsentReason"]["coding"][0]["code"] for o in _observations(fhir)]
    assert reasons == ["not-a-number", "positive-infinity", "unknown"]


def _numeric(annotation: Any) -> bool:
    """int, float, an optional one, or a dict of them: the output fields that become Quantities."""
    if annotation in (int, float):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        return _numeric(args[1])
    if origin in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in args if a is not type(None))
    return False


@pytest.mark.parametrize("tool", EXPECTED_TOOLS)
def test_every_numeric_output_field_has_a_unit_decision(tool: str) -> None:
    """A new numeric output field must be given a unit (or declared unitless) before it reaches a FHIR file."""
    classes, _ = loadable_tools()
    fields = classes[tool].output_model.model_fields
    numeric = {k for k, f in fields.items() if _numeric(f.annotation)}
    assert numeric, tool
    missing = numeric - set(UNITS) - UNITLESS
    assert not missing, f"{tool}: no unit for {sorted(missing)}; add them to UNITS or UNITLESS in agent/fhir.py"
    assert not set(UNITS) & UNITLESS


def _boom(*args: Any, **kwargs: Any) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["report.json", "rename"])
def test_a_failure_after_the_fhir_file_leaves_no_case_folder(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """report.fhir.json exists only when report.json does: a failure after writing it leaves nothing behind."""
    from pathasst.agent import outputs

    rep = Report.model_validate(_load(runs["ki67"])[1])
    out = tmp_path / "out"
    seen: list[bool] = []
    if where == "report.json":

        def dump(obj: Any, f: Any, **kw: Any) -> None:
            seen.append((Path(f.name).parent / FHIR_FILE).is_file())
            _boom()

        monkeypatch.setattr(outputs.json, "dump", dump)
    else:

        def rename(src: Any, dst: Any) -> None:
            seen.append((Path(src) / FHIR_FILE).is_file() and (Path(src) / "report.json").is_file())
            _boom()

        monkeypatch.setattr(outputs.os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        write_case(out, rep, {})
    assert seen == [True]  # the FHIR file had been written when it failed
    assert list(out.iterdir()) == [] and not case_is_done(out, rep.case_id)
    monkeypatch.undo()
    folder = write_case(out, rep, {})
    assert sorted(p.name for p in out.iterdir()) == [rep.case_id]
    assert (folder / FHIR_FILE).is_file() and (folder / "report.json").is_file()
    assert json.loads((folder / FHIR_FILE).read_text())["conclusion"] == rep.answer
