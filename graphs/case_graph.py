"""The compiled case graph: ``load_case -> retrieve -> plan <-> act -> report`` (``langgraph.json`` serves it through ``graphs/server.py``)."""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from pathasst.graphs.nodes import act, load_case_node, plan, report, route_after_plan
from pathasst.graphs.retrieve import retrieve
from pathasst.graphs.state import CaseContext, CaseState

__all__ = ["build_graph"]


def build_graph(checkpointer: Any | None = None):
    """Compile the case graph. ``checkpointer`` defaults to an in-memory saver; pass a SqliteSaver to persist."""
    builder = StateGraph(CaseState, context_schema=CaseContext)
    builder.add_node("load_case", load_case_node)
    builder.add_node("retrieve", retrieve)
    builder.add_node("plan", plan)
    builder.add_node("act", act)
    builder.add_node("report", report)
    builder.add_edge(START, "load_case")
    builder.add_edge("load_case", "retrieve")
    builder.add_edge("retrieve", "plan")
    builder.add_conditional_edges("plan", route_after_plan, {"act": "act", "report": "report"})
    builder.add_edge("act", "plan")
    builder.add_edge("report", END)
    return builder.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())


