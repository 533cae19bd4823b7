"""The report: a pydantic model built from the trace, and its renderers (Markdown, overlays, QuPath GeoJSON).

Every finding carries the id of the tool call it comes from; the Markdown shows those ids, and
:mod:`pathasst.planning.grounding` checks that every number in it appears in a source.
"""

from __future__ import annotations

import datetime as _dt
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import BaseModel, Field

from pathasst.core.cases import Case, CaseProblem
from pathasst.planning.grounding import fmt_number, source_numbers, ungrounded_numbers
from pathasst.tools.base import ToolCallRecord

__all__ = ["Exchange", "Finding", "Measurement", "Report", "build_report", "compose_answer", "render_markdown"]


class Measurement(BaseModel):
    name: str = Field(..., description="Output field, e.g. 'positivity_index'.")
    value: float | int | str | bool | list[str]
    tool: str
    image: str | None = None
    source: str = Field(..., description="Id of the tool call that produced it.")


class Finding(BaseModel):
    text: str
    kind: Literal["measurement", "not_configured", "tool_failure", "note", "similar_case"]
    sources: list[str] = Field(default_factory=list, description="Tool call ids (or case ids) behind the finding.")
    question: int | None = Field(None, description="Number of the question that produced it (reports of several).")


class Exchange(BaseModel):
    """One question and its answer, in a report built from several questions (the review app's case)."""

    number: int = Field(..., ge=1)
    question: str
    answer: str
    asked_by: str = ""
    at: str = ""


class Report(BaseModel):
    case_id: str
    question: str
    answer: str = Field(..., description="The answer text (templated, or planner-phrased if grounded).")
    answer_source: Literal["template", "planner"] = "template"
    planner: str
    stain: str | None = None
    organ: str | None = None
    images: list[str] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    measurements: list[Measurement] = Field(default_factory=list)
    trace: list[ToolCallRecord] = Field(default_factory=list)
    decisions: list[dict[str, Any]] = Field(default_factory=list, description="Planner decisions, in order.")
    similar_cases: list[dict[str, Any]] = Field(default_factory=list)
    exchanges: list[Exchange] = Field(
        default_factory=list, description="Every question and answer when the report gathers several (else empty)."
    )
    problems: list[CaseProblem] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    rejected_phrasing: dict[str, Any] | None = Field(None, description="A planner phrasing that failed grounding.")
    versions: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    status: Literal["complete"] = "complete"

    def allowed_numbers(self, case_inputs: Any = None) -> set[str]:
        """Numbers that the text may contain: tool outputs and arguments, the labels of output fields (``per 10
        HPF``), similar cases, and the case's inputs."""
        return source_numbers(
            [r.output for r in self.trace if r.output],
            [_label(k) for r in self.trace if r.output for k in r.output],
            [r.arguments for r in self.trace],
            [r.error for r in self.trace if r.error],
            self.similar_cases,
            self.notes,
            self.question,
            [e.model_dump() for e in self.exchanges],
            self.images,
            self.case_id,
            case_inputs,
        )


def _versions(trace: list[ToolCallRecord]) -> dict[str, Any]:
    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    tools = {}
    for r in trace:
        if r.model:
            tools[r.tool] = r.model
        elif r.tool_version:
            tools.setdefault(r.tool, {"tool": r.tool, "version": r.tool_version})
    return {
        "pathasst": v("pathasst"),
        "python": platform.python_version(),
        "packages": {p: v(p) for p in ("langgraph", "scikit-image", "numpy", "openslide-python", "llama-cpp-python")},
        "tools": tools,
    }


_SKIP_FIELDS = {"status", "message", "backend"}


def _scalars(output: dict[str, Any]) -> list[tuple[str, Any]]:
    """Fields shown in findings: numbers, strings, booleans and lists of strings (e.g. QC flags)."""
    out = []
    for k, v in output.items():
        if k in _SKIP_FIELDS or v is None:
            continue
        if isinstance(v, (int, float, str, bool)) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
            out.append((k, v))
    return out


_WORDS = {"ihc": "IHC", "qc": "QC", "mm2": "mm²", "um2": "µm²", "um": "µm", "hpf": "HPF", "pct": "%", "tps": "TPS"}


def _label(name: str) -> str:
    return " ".join(_WORDS.get(w, w) for w in name.split("_"))


#: output fields given in percent (the other units are in the field names: ``_mm2``, ``_um``, ``per_10_hpf``)
PERCENT_FIELDS = frozenset({"positivity_index", "hotspot_index", "tps"})


def _fmt(v: Any, name: str = "") -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    if isinstance(v, (int, float)):
        return fmt_number(v) + ("%" if name in PERCENT_FIELDS else "")
    return str(v)


def _title(tool: str) -> str:
    label = _label(tool)
    return label[0].upper() + label[1:]


def compose_answer(question: str, trace: list[ToolCallRecord], headline: dict[str, tuple[str, ...]]) -> str:
    """The templated answer: one sentence per successful call with its headline figures, plus what did not run."""
    ok = [r for r in trace if r.status == "ok" and r.output]
    lines: list[str] = []
    for r in ok:
        out = r.output or {}
        fields = headline.get(r.tool) or tuple(k for k, _ in _scalars(out)[:4])
        parts = [f"{_label(f)} {_fmt(out[f], f)}" for f in fields if out.get(f) not in (None, [])]
        where = f" on {r.image}" if r.image else ""
        warn = [w for w in out.get("warnings") or [] if isinstance(w, str)]
        caution = f" Warning: {'; '.join(warn)}." if warn else ""
        lines.append(f"{_title(r.tool)}{where}: {'; '.join(parts) or 'completed'} [{r.id}].{caution}")
    for r in trace:
        if r.status == "not_configured":
            lines.append(f"{_title(r.tool)} was not run: {r.output.get('message') if r.output else ''} [{r.id}].")
        elif r.status in ("failed", "bad_call"):
            lines.append(f"{_title(r.tool)} failed: {r.error} [{r.id}].")
    if not trace:
        lines.append(
            "No pathology tool was needed or applicable for this question, so no measurement is reported. "
            "PathAsst reports only figures measured by its tools."
        )
    return " ".join(lines)


def build_report(
    case: Case,
    question: str,
    planner: str,
    trace: list[ToolCallRecord],
    decisions: list[dict[str, Any]],
    headline: dict[str, tuple[str, ...]],
    phrased: str | None = None,
    timings: dict[str, float] | None = None,
    notes: list[str] | None = None,
    similar_cases: list[dict[str, Any]] | None = None,
) -> Report:
    """Assemble the report from the trace. A planner's phrasing is used only if every number in it is grounded."""
    findings: list[Finding] = []
    measurements: list[Measurement] = []
    for r in trace:
        if r.status == "ok" and r.output:
            scal = _scalars(r.output)
            for k, v in scal:
                measurements.append(Measurement(name=k, value=v, tool=r.tool, image=r.image, source=r.id))
            body = "; ".join(f"{_label(k)} {_fmt(v, k)}" for k, v in scal) or "completed"
            findings.append(Finding(text=f"{r.tool} ({r.image}): {body}", kind="measurement", sources=[r.id]))
        elif r.status == "not_configured":
            msg = (r.output or {}).get("message") or "not configured"
            findings.append(Finding(text=f"{r.tool}: {msg}", kind="not_configured", sources=[r.id]))
        else:
            findings.append(Finding(text=f"{r.tool}: {r.error}", kind="tool_failure", sources=[r.id]))
    report = Report(
        case_id=case.id,
        question=question,
        answer=compose_answer(question, trace, headline),
        planner=planner,
        stain=case.meta.stain,
        organ=case.meta.organ,
        images=[i.name for i in case.images],
        findings=findings,
        measurements=measurements,
        trace=trace,
        decisions=decisions,
        similar_cases=similar_cases or [],
        problems=list(case.problems),
        notes=list(notes or []),
        versions=_versions(trace),
        timings=timings or {},
    )
    if phrased:
        bad = ungrounded_numbers(phrased, report.allowed_numbers(case.meta.model_dump()))
        if bad:
            report.notes.append("planner phrasing rejected: it contained figures that appear in no tool output")
            report.rejected_phrasing = {"text": phrased, "ungrounded": sorted(set(bad))}
        else:
            report.answer, report.answer_source = phrased, "planner"
    return report


def render_markdown(report: Report) -> str:
    """Human-readable report. Numbers appear only from sources; call ids link each line to the trace."""
    meta = ", ".join(f"{k}: {v}" for k, v in (("stain", report.stain), ("organ", report.organ)) if v)
    lines = [f"# PathAsst report: case {report.case_id}", ""]
    if meta:
        lines += [f"*{meta}*", ""]
    if report.exchanges:
        lines += ["## Questions and answers", ""]
        for ex in report.exchanges:
            by = f" ({', '.join(x for x in (ex.asked_by, ex.at) if x)})" if ex.asked_by or ex.at else ""
            lines += [f"**Q{ex.number}.** {ex.question}{by}", "", ex.answer, ""]
    else:
        lines += ["## Question", "", f"> {report.question}", "", "## Answer", "", report.answer, ""]
    lines += ["## Findings", ""]
    lines += [
        f"- {f.text} [{', '.join(f.sources)}]" + (f" (Q{f.question})" if f.question else "") for f in report.findings
    ] or ["- none"]
    if report.similar_cases:
        lines += ["", "## Similar cases", ""]
        for s in report.similar_cases:
            lines.append(
                f"- similar to case {s.get('case_id')}, diagnosed {s.get('diagnosis') or 'unknown'}, "
                f"distance {_fmt(s.get('distance'))}"
            )
    lines += ["", "## Tool calls", "", "| id | tool | image | status | backend |", "|---|---|---|---|---|"]
    for r in report.trace:
        backend = (r.output or {}).get("backend", "")
        lines.append(f"| {r.id} | {r.tool} | {r.image or r.arguments.get('image', '')} | {r.status} | {backend} |")
    if report.problems:
        lines += ["", "## Input problems", ""] + [f"- {p.name}: {p.code}" for p in report.problems]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    lines += [
        "",
        f"*Planner: {report.planner}; answer: {report.answer_source}. Every figure above comes from the tool call "
        "named beside it (see report.json for inputs, outputs, timings and model versions). Draft for review by a "
        "pathologist; not a diagnosis.*",
        "",
    ]
    return "\n".join(lines)
