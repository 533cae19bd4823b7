"""Planning: planner backends behind one interface (rules, hybrid, llamacpp, openai; :func:`get_planner` builds one
by name, heavy imports stay lazy), the parsing of model output, the grounded report and the planner evaluator."""

from __future__ import annotations

from importlib import import_module

from pathasst.core.settings import Settings
from pathasst.planning.base import (
    PlanDecision,
    PlannedCall,
    Planner,
    PlannerContext,
    PlannerError,
    PlannerOutputError,
    PriorCall,
)

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
    "rules": ("pathasst.planning.rules", "RulesPlanner"),
    "hybrid": ("pathasst.planning.hybrid", "HybridPlanner"),
    "llamacpp": ("pathasst.planning.llamacpp", "LlamaCppPlanner"),
    "openai": ("pathasst.planning.openai_backend", "OpenAIPlanner"),
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
