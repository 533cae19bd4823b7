"""The case graph as LangGraph Server / ``langgraph dev`` serves it (``langgraph.json`` names ``graph`` here).

:func:`pathasst.graphs.case_graph.build_graph` takes a :class:`CaseContext` of live objects (settings, tool
registry, planner), which a server run cannot send: a run's ``context`` is JSON. This graph has the same nodes and
edges but takes a :class:`ServerContext` (the planner name) and builds the ``CaseContext`` for each node from
process-wide parts: the settings of :func:`get_settings` (``PATHASST_*`` variables and ``.env``), a tool registry
and the planners, created on first use and kept, so tools load their weights once per server process. The cases
root (the folder case paths may not escape) is ``settings.cases_root`` only: a run cannot widen it.

It is compiled without a checkpointer (the server brings its own persistence and refuses a graph that has one).
Array artifacts (label maps, masks, overlays) are dropped after each node: a server run returns the JSON state,
whose ``report`` holds every measurement; write overlays and GeoJSON with the CLI (``Engine``) instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from pathasst.agent.system import System, build_system
from pathasst.core.settings import PlannerName, Settings, get_settings
from pathasst.graphs.case_graph import wire
from pathasst.graphs.state import CaseContext, CaseState

__all__ = ["ServerContext", "ServerParts", "build_server_graph", "graph"]


@dataclass
class ServerContext:
    """The ``context`` a server run may send (every field optional)."""

    planner: PlannerName | None = None  # planner backend for this run; None = settings.planner


class ServerParts:
    """Settings, tool registry and planners shared by the runs of one server process.

    ``settings`` is a fixed ``Settings`` object, or None to follow :func:`get_settings` (clearing its cache, as tests
    do, gives a new registry and new planners on the next run). ``registry`` and ``planners`` default to the
    installed tools and to :func:`get_planner`.
    """

    def __init__(
        self, settings: Settings | None = None, registry: Any | None = None, planners: dict[str, Any] | None = None
    ) -> None:
        self._fixed = (settings, registry, dict(planners or {}))
        self._lock = threading.Lock()
        self._system: System | None = None

    def _current_settings(self) -> Any:
        if self._fixed[0] is not None:
            return self._fixed[0]

        return get_settings()

    def case_context(self, context: ServerContext | None) -> CaseContext:
        """A fresh ``CaseContext`` for one node, on the shared settings, registry and planner."""
        context = context if context is not None else ServerContext()
        settings = self._current_settings()
        with self._lock:
            if self._system is None or settings is not self._system.settings:  # first use, or get_settings() reset
                self._system = build_system(settings, registry=self._fixed[1], planners=self._fixed[2])
            system = self._system
        registry, planner = system.registry, system.planner(context.planner or settings.planner)
        cases_root = str(settings.cases_root) if settings.cases_root else None
        return CaseContext(settings=settings, registry=registry, planner=planner, cases_root=cases_root)


def _bind(node: Callable[[CaseState, Runtime[CaseContext]], dict[str, Any]], parts: ServerParts):
    """``node`` run with a ``CaseContext`` built from the run's ``ServerContext``; its resolvers closed after."""

    @wraps(node)
    def run(state: CaseState, runtime: Runtime[ServerContext]) -> dict[str, Any]:
        ctx = parts.case_context(runtime.context)
        try:
            return node(state, runtime.override(context=ctx))
        finally:
            ctx.close()

    return run


def build_server_graph(parts: ServerParts | None = None):
    """Compile the served case graph (no checkpointer). Same nodes and edges as ``case_graph.build_graph``."""
    parts = parts if parts is not None else ServerParts()
    builder = wire(StateGraph(CaseState, context_schema=ServerContext), lambda node: _bind(node, parts))
    return builder.compile(name="pathasst_case")


#: the compiled graph named in ``langgraph.json`` (cheap to build: settings, tools and planners load on first run)
graph = build_server_graph()
