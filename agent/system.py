"""The composition root: settings -> tool registry -> planners -> case graph, wired in one place.

Every front end (batch runner and its workers, ``pathasst ask``/``predict``/``tools``/``eval``, the MCP server, the
LangGraph server, the review app) gets its parts from :func:`build_system` instead of assembling them itself. The
registry is built once per system (tools load their weights once), planners once per name, on first use, and the
graph is compiled on request (with the caller's checkpointer).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from pathasst.core.settings import Settings, get_settings
from pathasst.planning import Planner, get_planner
from pathasst.tools.registry import ToolRegistry, default_registry

__all__ = ["System", "build_system"]


class System:
    """The wired parts: ``settings``, ``registry``, and planners by name (``planner()``: ``settings.planner``)."""

    def __init__(self, settings: Settings, registry: ToolRegistry, planners: Mapping[str, Planner] | None = None,
                 default: str | Planner | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self._planners: dict[str, Planner] = dict(planners or {})
        self._default = default  # a planner name, a ready planner, or None for settings.planner
        self._lock = threading.Lock()

    def planner(self, name: str | None = None) -> Planner:
        """The planner called ``name`` (default: the ``default`` given, else ``settings.planner``), built on first
        use; ``PlannerError`` listing the valid names for an unknown one."""
        if name is None and hasattr(self._default, "plan"):
            return self._default
        name = name or self._default or self.settings.planner
        with self._lock:
            if name not in self._planners:
                self._planners[name] = get_planner(name, self.settings)
            return self._planners[name]

    def graph(self, checkpointer: Any | None = None) -> Any:
        """The compiled case graph (load_case -> retrieve -> plan <-> act -> report)."""
        from pathasst.graphs.case_graph import build_graph  # LangGraph loads here: MCP and predict never need it

        return build_graph(checkpointer)


def build_system(settings: Settings | None = None, *, registry: ToolRegistry | None = None,
                 planner: str | Planner | None = None, planners: Mapping[str, Planner] | None = None) -> System:
    """The system for ``settings`` (default: :func:`get_settings`, the environment and ``.env``): the installed tools
    (or ``registry``), and ``planner`` (a name or a ready planner object; default ``settings.planner``) plus any
    ready ``planners`` by name."""
    settings = settings if settings is not None else get_settings()
    registry = registry if registry is not None else default_registry(settings)
    system = System(settings, registry, planners, default=planner)
    if isinstance(planner, str):
        system.planner()  # an unknown name fails here, not at the first case
    return system
