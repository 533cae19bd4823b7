"""State and runtime context of the case graph.

The state is JSON-serialisable (so any LangGraph checkpointer can store it); array artifacts (label maps, masks,
overlays) live in the runtime context's ``artifacts``, keyed by tool call id, and never enter the state.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated, Any

from typing_extensions import TypedDict  # typing.TypedDict hides the schema from langgraph's server on 3.11

from pathasst.core.settings import Settings
from pathasst.planning.base import Planner
from pathasst.tools.registry import ToolRegistry

__all__ = ["CaseContext", "CaseState"]


class CaseState(TypedDict, total=False):
    case_dir: str  # folder of the case (or of the single image)
    image_path: str | None  # set for single-image runs (pathasst ask)
    question: str | None
    case: dict[str, Any]  # Case.model_dump(mode="json")
    step: int
    pending: list[dict[str, Any]]  # PlannedCall dumps waiting for the act node
    records: Annotated[list[dict[str, Any]], operator.add]  # ToolCallRecord dumps (the trace)
    decisions: Annotated[list[dict[str, Any]], operator.add]
    notes: Annotated[list[str], operator.add]
    timings: Annotated[dict[str, float], lambda a, b: {**a, **b}]
    similar: list[dict[str, Any]]  # similar past cases (retrieve node): case_id, distance, diagnosis, thumbnail ...
    retrieved: list[str]  # their archived text for the planner: DATA, never instructions
    report: dict[str, Any]


@dataclass
class CaseContext:
    """Runtime dependencies of one graph run (not checkpointed)."""

    settings: Settings
    registry: ToolRegistry
    planner: Planner
    cases_root: str | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)  # call id -> ToolResult
    resolvers: dict[str, Any] = field(default_factory=dict)  # case id -> CaseImageResolver
    on_event: Any = None  # optional callback(event: str, payload: dict) for progress / UIs

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event, payload)

    def close(self) -> None:
        for r in self.resolvers.values():
            r.close()
        self.resolvers.clear()
