"""Planner backends behind one interface (rules, hybrid, llamacpp, openai); :func:`get_planner` builds one by name
(heavy imports stay lazy)."""

from __future__ import annotations

from importlib import import_module

from pathasst.agent.planners.base import (
    PlanDecision,
    PlannedCall,
    Planner,
    PlannerContext,
    PlannerError,
    PlannerOutputError,
    PriorCall,
)
from pathasst.agent.settings import Settings

__all__ = [
    "PLANNER_NAMES",
    "PlanDecision",
    "PlannedCall",
    "Planner",
    "PlannerContext",
    "PlannerError",
    "PlannerOutputError",
    "PriorCall",
    "get_planner",
]

# name -> (module, class); the module is imported only when that backend is asked for
_BACKENDS: dict[str, tuple[str, str]] = {
    "rules": ("pathasst.agent.planners.rules", "RulesPlanner"),
    "hybrid": ("pathasst.agent.planners.hybrid", "HybridPlanner"),
    "llamacpp": ("pathasst.agent.planners.llamacpp", "LlamaCppPlanner"),
    "openai": ("pathasst.agent.planners.openai_backend", "OpenAIPlanner"),
}
PLANNER_NAMES: tuple[str, ...] = tuple(sorted(_BACKENDS))


def get_planner(name: str, settings: Settings) -> Planner:
    """The planner backend ``name`` built with ``settings`` (front ends: through ``agent.system.build_system``).

    Raises :class:`PlannerError` listing the valid names when ``name`` is unknown. Construction is cheap: models and
    clients load on first use.
    """
    key = (name or "").strip().lower()
    if key not in _BACKENDS:
        raise PlannerError(f"unknown planner {name!r}; valid planners: {', '.join(PLANNER_NAMES)}")
    module_name, class_name = _BACKENDS[key]
    cls = getattr(import_module(module_name), class_name)
    return cls(settings)
