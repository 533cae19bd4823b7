"""The case graph with a scripted planner and small real tools: trace, budget, errors, reports, batches."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image
from pydantic import Field

from pathasst.agent.engine import Engine
from pathasst.agent.outputs import OutputLayout, write_case
from pathasst.agent.runner import run_batch
from pathasst.planning.base import PlanDecision, PlannedCall, PlannerContext, PlannerOutputError
from pathasst.planning.grounding import ungrounded_numbers
from pathasst.planning.report import render_markdown
from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult
from pathasst.tools.registry import ToolRegistry


class DarkIn(ToolInput):
    threshold: int = Field(100, ge=0, le=255, description="Grey level below which a pixel is dark.")


class DarkOut(ToolOutput):
    dark_fraction: float = Field(..., description="Fraction of dark pixels.")
    dark_pixels: int = Field(..., description="Number of dark pixels.")


class DarkTool(PathologyTool):
    name = "dark_pixels"
    description = "Counts dark pixels in the image; a test tool with a real, checkable output."
    input_model = DarkIn
    output_model = DarkOut
    headline_fields: ClassVar[tuple[str, ...]] = ("dark_pixels",)

    def analyze(self, image, args):
        dark = image.pixels.mean(axis=2) < args.threshold
        out = DarkOut(dark_fraction=round(float(dark.mean()), 4), dark_pixels=int(dark.sum()))
        ys, xs = np.nonzero(dark)
        feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(xs[0]), float(ys[0])]},
                  "properties": {"objectType": "detection", "classification": {"name": "Dark"}}}] if len(xs) else []
        overlay = image.pixels.copy()
        overlay[dark] = (255, 0, 0)
        return ToolResult(output=out, mask=dark, overlay=overlay, features=feats)


class CrashTool(PathologyTool):
    name = "crashy"
    description = "Always crashes with a RuntimeError; used to prove one failing tool does not stop a case."

    def analyze(self, image, args):
        raise RuntimeError("simulated backend crash")


class Scripted:
    """A planner that calls the given tools on every image in round 0, then finishes."""

    name = "scripted"

    def __init__(self, tools, always=False, fail=False):
        self.tools, self.always, self.fail = tools, always, fail

    def plan(self, ctx: PlannerContext) -> PlanDecision:
        if self.fail:
            raise PlannerOutputError("no JSON object found in planner output 'blah'")
        if ctx.step > 0 and not self.always:
            return PlanDecision.finish("done")
        return PlanDecision(
            action="call_tools",
            calls=[PlannedCall(tool=t, arguments={"image": im}) for t in self.tools for im in ctx.images],
        )

    def phrase(self, ctx, draft):
        return None


def _case(root: Path, cid: str, n_images=1, yaml="stain: H&E\nmpp: 0.5\n") -> Path:
    d = root / cid
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(cid))
    for i in range(n_images):
        arr = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.png")
    (d / "case.yaml").write_text(yaml)
    return d


@pytest.fixture()
def registry(settings):
    reg = ToolRegistry(settings)
    reg.register(DarkTool)
    reg.register(CrashTool)
    return reg


def test_graph_runs_tools_and_grounds_the_report(tmp_path, settings, registry):
    d = _case(tmp_path / "cases", "c1", n_images=2)
    events = []
    eng = Engine(settings, planner=Scripted(["dark_pixels"]), registry=registry)
    report, artifacts = eng.run(case_dir=d, cases_root=tmp_path / "cases", on_event=lambda e, p: events.append(e))
    assert [r.tool for r in report.trace] == ["dark_pixels", "dark_pixels"]
    assert all(r.status == "ok" and r.duration_s > 0 and r.tool_version == "0.1.0" for r in report.trace)
    truth = int((np.asarray(Image.open(d / "img0.png")).mean(axis=2) < 100).sum())
    assert report.trace[0].output["dark_pixels"] == truth
    assert {f.sources[0] for f in report.findings} == {r.id for r in report.trace}
    assert f"dark pixels {truth}" in report.answer
    md = render_markdown(report)
    assert ungrounded_numbers(md, report.allowed_numbers()) == []
    assert events[0] == "case_loaded" and events.count("tool_end") == 2
    assert set(artifacts) == {r.id for r in report.trace}
    assert [d["action"] for d in report.decisions] == ["call_tools", "finish"]
    assert report.timings["act"] > 0 and report.timings["total"] >= report.timings["act"]


def test_report_files(tmp_path, settings, registry):
    d = _case(tmp_path / "cases", "c1", n_images=2)
    eng = Engine(settings, planner=Scripted(["dark_pixels"]), registry=registry)
    report, artifacts = eng.run(case_dir=d)
    folder = write_case(tmp_path / "out", report, artifacts)
    data = json.loads((folder / "report.json").read_text())
    assert data["case_id"] == "c1" and len(data["trace"]) == 2
    assert sorted(data["files"]["overlays"]) == ["overlays/img0__dark_pixels.png", "overlays/img1__dark_pixels.png"]
    ov = np.asarray(Image.open(folder / "overlays/img0__dark_pixels.png"))
    assert ov.shape == (64, 80, 3)
    gj = json.loads((folder / "annotations.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2
    assert {f["properties"]["image"] for f in gj["features"]} == {"img0.png", "img1.png"}
    assert (folder / "annotations" / "img0.geojson").is_file()
    md = (folder / "report.md").read_text()
    assert report.trace[0].id in md
    with pytest.raises(FileExistsError):
        write_case(tmp_path / "out", report, artifacts)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


def test_the_output_layout_names_what_the_runner_wrote(tmp_path, settings, registry):
    """One layout object: the files run_batch and write_case produce are where OutputLayout (read by the review app)
    says, failed cases included."""
    cases = tmp_path / "cases"
    _case(cases, "c1", n_images=2)
    (cases / "empty").mkdir()
    out = tmp_path / "out"
    run_batch(cases, out, engine=Engine(settings, planner=Scripted(["dark_pixels"]), registry=registry))
    layout = OutputLayout(out)
    assert layout.is_done("c1") and not layout.is_done("empty")
    report = json.loads(layout.report_json("c1").read_text())
    assert sorted(report["files"]["overlays"]) == sorted(
        OutputLayout.overlay_name(rec["image"], rec["tool"]) for rec in report["trace"])
    assert all((layout.case_dir("c1") / name).is_file() for name in report["files"]["overlays"])
    assert layout.report_md("c1").is_file() and layout.annotations("c1").is_file()
    assert layout.failure_reason("c1") is None and "no usable images" in layout.failure_reason("empty")
    rows = {r["case_id"]: r for r in csv.DictReader(layout.summary_csv.open())}
    assert rows["c1"]["report"] == "c1/report.md" and rows["empty"]["status"] == "failed"
    layout.failure_record("empty").write_text("{not json")
    assert layout.failure_reason("empty") == "last run failed (unreadable failure record)"


def test_failing_and_unknown_tools_are_recorded(tmp_path, settings, registry):
    d = _case(tmp_path / "cases", "c1")
    eng = Engine(settings, planner=Scripted(["crashy", "dark_pixels", "mitosis_detektor"]), registry=registry)
    report, _ = eng.run(case_dir=d)
    status = {r.tool: r.status for r in report.trace}
    assert status == {"crashy": "failed", "dark_pixels": "ok", "mitosis_detektor": "bad_call"}
    crash = next(r for r in report.trace if r.tool == "crashy")
    assert "simulated backend crash" in crash.error and crash.summary.startswith("ERROR crashy failed")
    unknown = next(r for r in report.trace if r.tool == "mitosis_detektor")
    assert "valid tools: crashy, dark_pixels" in unknown.error
    assert "Crashy failed" in report.answer
    assert ungrounded_numbers(render_markdown(report), report.allowed_numbers()) == []


def test_bad_arguments_give_a_bad_call(tmp_path, settings, registry):
    class BadArgs(Scripted):
        def plan(self, ctx):
            if ctx.step:
                return PlanDecision.finish()
            return PlanDecision(action="call_tools", calls=[
                PlannedCall(tool="dark_pixels", arguments={"image": "img0.png", "threshold": 999}),
                PlannedCall(tool="dark_pixels", arguments={"image": "nope.png"}),
            ])

    report, _ = Engine(settings, planner=BadArgs([]), registry=registry).run(case_dir=_case(tmp_path, "c"))
    assert [r.status for r in report.trace] == ["bad_call", "bad_call"]
    assert "threshold" in report.trace[0].error
    assert "unknown image 'nope.png'; this case has: img0.png" in report.trace[1].error


def test_step_budget(tmp_path, settings, registry):
    s = settings.model_copy(update={"step_budget": 3})
    report, _ = Engine(s, planner=Scripted(["dark_pixels"], always=True), registry=registry).run(
        case_dir=_case(tmp_path, "c")
    )
    assert len(report.trace) == 3
    assert any("step budget" in n for n in report.notes)


def test_malformed_planner_output_is_reported_not_raised(tmp_path, settings, registry):
    report, _ = Engine(settings, planner=Scripted([], fail=True), registry=registry).run(case_dir=_case(tmp_path, "c"))
    assert report.trace == []
    assert any("output rejected" in n and "no JSON object" in n for n in report.notes)
    assert "No pathology tool" in report.answer


def test_checkpointer_keeps_the_state(tmp_path, settings, registry):
    eng = Engine(settings, planner=Scripted(["dark_pixels"]), registry=registry)
    eng.run(case_dir=_case(tmp_path, "c"), thread_id="t1")
    snap = eng.graph.get_state({"configurable": {"thread_id": "t1"}})
    assert snap.values["report"]["case_id"] == "c" and len(snap.values["records"]) == 1


def test_batch_isolation_summary_and_resume(tmp_path, settings, registry):
    cases = tmp_path / "cases"
    _case(cases, "a")
    _case(cases, "b")
    (cases / "empty").mkdir()
    _case(cases, "badyaml", yaml="stain: [oops\n")
    out = tmp_path / "out"
    eng = Engine(settings, planner=Scripted(["dark_pixels"]), registry=registry)
    res = run_batch(cases, out, eng)
    assert res.counts == {"ok": 2, "failed": 2}
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"a", "b", "empty", "badyaml"}
    assert rows["a"]["status"] == "ok" and rows["a"]["tools"] == "dark_pixels"
    assert rows["empty"]["status"] == "failed" and "EmptyCaseError" in rows["empty"]["reason"]
    assert rows["badyaml"]["status"] == "failed" and "not valid YAML" in rows["badyaml"]["reason"]
    first = (out / "a" / "report.json").read_text()
    # rerun: finished cases are skipped, failed ones retried (and fixed ones succeed)
    (cases / "badyaml" / "case.yaml").write_text("stain: H&E\n")
    res2 = run_batch(cases, out, eng)
    assert {o.case_id: o.status for o in res2.outcomes} == {"a": "skipped", "b": "skipped", "badyaml": "ok",
                                                             "empty": "failed"}
    assert (out / "a" / "report.json").read_text() == first
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["badyaml"]["status"] == "ok" and rows["empty"]["status"] == "failed"


def test_a_cases_root_confines_every_way_into_the_graph(tmp_path, settings, registry):
    """With a cases root (batch runs, the review app, the served graph), a single image or a prepared case outside
    it is refused like a case folder outside it; without one (``pathasst ask``) any readable image is allowed."""
    from pathasst.core.cases import PathEscapeError, load_case

    inside = _case(tmp_path / "cases", "c1")
    outside = _case(tmp_path / "elsewhere", "c2")
    eng = Engine(settings, planner=Scripted(["dark_pixels"]), registry=registry)
    root = tmp_path / "cases"
    with pytest.raises(PathEscapeError, match="outside the cases root"):
        eng.run(image_path=outside / "img0.png", cases_root=root)
    with pytest.raises(PathEscapeError, match="outside the cases root"):
        eng.run(case=load_case(outside, tmp_path / "elsewhere", settings), cases_root=root)
    (root / "c1" / "link.png").symlink_to(outside / "img0.png")
    with pytest.raises(PathEscapeError, match="outside the cases root"):
        eng.run(image_path=root / "c1" / "link.png", cases_root=root)
    report, _ = eng.run(image_path=inside / "img0.png", cases_root=root)
    assert [r.status for r in report.trace] == ["ok"]
    report, _ = eng.run(image_path=outside / "img0.png")
    assert [r.status for r in report.trace] == ["ok"]
