"""Nodes of the case graph: load_case -> (retrieve, in ``retrieve.py``) -> plan <-> act -> report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from pathasst.core.cases import Case, ensure_inside, load_case, single_image_case
from pathasst.core.errors import UnknownToolError, to_planner_message
from pathasst.core.readers import CaseImageResolver
from pathasst.graphs.state import CaseContext, CaseState
from pathasst.planning.base import (
    PlanDecision,
    PlannedCall,
    PlannerContext,
    PlannerError,
    PriorCall,
)
from pathasst.planning.report import build_report
from pathasst.tools.base import ToolCallRecord, call_tool

__all__ = ["act", "default_question", "load_case_node", "plan", "report", "route_after_plan"]

IHC_STAINS = ("ki-67", "ki67", "mib-1", "mib1", "er", "pr", "pd-l1", "pdl1", "her2", "dab", "ihc", "p53", "cd")


def default_question(stain: str | None, image_kind: str) -> str:
    """The question asked when neither the user nor case.yaml gives one."""
    s = (stain or "").strip().lower()
    if s and any(s == t or s.startswith(t) for t in IHC_STAINS):
        if s.startswith(("er", "pr")):
            return f"Quantify {stain} nuclear positivity (percent positive and H-score)."
        if s.startswith(("pd-l1", "pdl1")):
            return "Quantify PD-L1 positivity (tumour proportion score)."
        return f"What is the {stain} proliferation index (percent positive nuclei)?"
    if image_kind == "wsi":
        return "Check the slide's tissue quality and count nuclei in the tissue."
    return "Check tissue quality, then segment and count the nuclei with density and morphometry."


def _t(state: CaseState, name: str, t0: float) -> dict[str, float]:
    prev = (state.get("timings") or {}).get(name, 0.0)
    return {name: prev + time.perf_counter() - t0}


def _case(state: CaseState) -> Case:
    return Case.model_validate(state["case"])


def load_case_node(state: CaseState, runtime: Runtime[CaseContext]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = runtime.context
    # with a cases root (batch runs, the review app, a served graph), every way in stays inside it
    if state.get("case"):
        case = _case(state)
        if ctx.cases_root is not None:
            ensure_inside(case.root, Path(ctx.cases_root))
            for img in case.images:
                ensure_inside(case.root / img.name, Path(ctx.cases_root))
    elif state.get("image_path"):
        if ctx.cases_root is not None:
            ensure_inside(Path(state["image_path"]), Path(ctx.cases_root))
        case = single_image_case(Path(state["image_path"]), settings=ctx.settings)
    else:
        case = load_case(Path(state["case_dir"]), ctx.cases_root, ctx.settings)
    ctx.resolvers[case.id] = CaseImageResolver(case, ctx.settings)
    question = state.get("question") or case.meta.question or default_question(case.meta.stain, case.image_kind)
    ctx.emit("case_loaded", {"case_id": case.id, "images": [i.name for i in case.images]})
    return {"case": case.model_dump(mode="json"), "question": question, "step": 0, "timings": _t(state, "load_case", t0)}


def plan(state: CaseState, runtime: Runtime[CaseContext]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = runtime.context
    case = _case(state)
    step = state.get("step", 0)
    records = state.get("records") or []
    notes: list[str] = []
    if step >= ctx.settings.step_budget:
        decision = PlanDecision.finish(f"step budget of {ctx.settings.step_budget} rounds reached")
        notes.append("the step budget was reached before the planner finished")
    else:
        pctx = PlannerContext(
            question=state["question"],
            stain=case.meta.stain,
            organ=case.meta.organ,
            image_kind=case.image_kind,
            images=[i.name for i in case.images],
            catalogue=ctx.registry.catalogue(),
            history=[
                PriorCall(tool=r["tool"], arguments=r["arguments"], status=r["status"], summary=r["summary"])
                for r in records
            ],
            retrieved=list(state.get("retrieved") or []),
            notes=case.meta.notes,
            step=step,
        )
        try:
            decision = ctx.planner.plan(pctx)
        except PlannerError as exc:  # includes PlannerOutputError: malformed output that could not be repaired
            decision = PlanDecision.finish(f"planner error: {exc}")
            notes.append(f"planner {ctx.planner.name} output rejected: {exc}")
    ctx.emit("plan", {"step": step, "decision": decision.model_dump(mode="json")})
    return {
        "pending": [c.model_dump(mode="json") for c in decision.calls] if decision.action == "call_tools" else [],
        "decisions": [{"step": step, **decision.model_dump(mode="json")}],
        "step": step + 1,
        "notes": notes,
        "timings": _t(state, "plan", t0),
    }


def route_after_plan(state: CaseState) -> str:
    return "act" if state.get("pending") else "report"


def act(state: CaseState, runtime: Runtime[CaseContext]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = runtime.context
    case = _case(state)
    resolver = ctx.resolvers.get(case.id) or CaseImageResolver(case, ctx.settings)
    ctx.resolvers[case.id] = resolver
    out: list[dict[str, Any]] = []
    for raw in state.get("pending") or []:
        call = PlannedCall.model_validate(raw)
        ctx.emit("tool_start", {"id": call.id, "tool": call.tool, "arguments": call.arguments})
        try:
            tool = ctx.registry.get(call.tool)
        except UnknownToolError as exc:
            record = ToolCallRecord(
                id=call.id,
                tool=call.tool,
                arguments=call.arguments,
                status="bad_call",
                summary=to_planner_message(call.tool, exc),
                error=str(exc),
            )
            result = None
        else:
            record, result = call_tool(tool, call.arguments, resolver, call_id=call.id,
                                       timeout_s=getattr(ctx.settings, "call_timeout_s", None))
        if result is not None:
            ctx.artifacts[record.id] = result
        ctx.emit("tool_end", record.model_dump(mode="json"))
        out.append(record.model_dump(mode="json"))
    return {"records": out, "pending": [], "timings": _t(state, "act", t0)}


def report(state: CaseState, runtime: Runtime[CaseContext]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = runtime.context
    case = _case(state)
    trace = [ToolCallRecord.model_validate(r) for r in state.get("records") or []]
    headline = {name: ctx.registry.tool_class(name).headline_fields for name in ctx.registry.names()}
    notes = list(state.get("notes") or [])
    for rec in trace:
        notes.extend(n for n in rec.notes if n not in notes)
    phrased = None
    phrase = getattr(ctx.planner, "phrase", None)
    similar = list(state.get("similar") or [])
    draft_report = build_report(
        case, state["question"], ctx.planner.name, trace, state.get("decisions") or [], headline, similar_cases=similar
    )
    if callable(phrase) and trace:
        pctx = PlannerContext(question=state["question"], stain=case.meta.stain, images=[i.name for i in case.images])
        try:
            phrased = phrase(pctx, draft_report.answer)
        except PlannerError as exc:
            notes.append(f"planner phrasing unavailable: {exc}")
    timings = dict(state.get("timings") or {})
    timings["report"] = time.perf_counter() - t0
    rep = build_report(
        case,
        state["question"],
        ctx.planner.name,
        trace,
        state.get("decisions") or [],
        headline,
        phrased=phrased,
        timings=timings,
        notes=notes,
        similar_cases=similar,
    )
    return {"report": rep.model_dump(mode="json"), "timings": {"report": timings["report"]}}
