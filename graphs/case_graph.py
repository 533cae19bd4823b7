"""The compiled case graph: ``load_case -> retrieve -> plan <-> act -> report``.

``langgraph.json`` serves the same wiring through ``agent/graph_server.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from pathasst.graphs.nodes import act, load_case_node, plan, report, route_after_plan
from pathasst.graphs.retrieve import retrieve
from pathasst.graphs.state import CaseContext, CaseState

__all__ = ["build_graph", "wire"]


def wire(builder: StateGraph, wrap: Callable[[Callable], Callable] = lambda node: node) -> StateGraph:
    """Add the case graph's nodes (each passed through ``wrap``) and edges to ``builder``."""
    for name, node in (("load_case", load_case_node), ("retrieve", retrieve), ("plan", plan), ("act", act),
                       ("report", report)):
        builder.add_node(name, wrap(node))
    builder.add_edge(START, "load_case")
    builder.add_edge("load_case", "retrieve")
    builder.add_edge("retrieve", "plan")
    builder.add_conditional_edges("plan", route_after_plan, {"act": "act", "report": "report"})
    builder.add_edge("act", "plan")
    builder.add_edge("report", END)
    return builder


def build_graph(checkpointer: Any | None = None):
    """Compile the case graph. ``checkpointer`` defaults to an in-memory saver; pass a SqliteSaver to persist."""
    builder = wire(StateGraph(CaseState, context_schema=CaseContext))
    return builder.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())
