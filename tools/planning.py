"""What planners need to know about a tool, declared by the tool itself (``PathologyTool.planning``).

A tool added through the ``pathasst.tools`` entry point is planned with no edit to planner code: the registry puts
these hints into every catalogue entry (``entry["planning"]``), and

* the rules and hybrid planners call the tool when one of its ``triggers`` matches the question outside a negation
  ("don't ...", "no need to ...") and order a plan by ``order``;
* the llama.cpp planner shows its ``examples`` as worked examples in its prompt;
* the tool-invocation data generator (``pathasst-train data toolcalls``) phrases requests from its ``examples``.

The project's own tools declare their order and examples here too; their stain- and modality-aware routing (a
diagnosis is ``slide_classification`` on a slide and ``tissue_classification`` on a patch, counting cells on an IHC
stain is ``ihc_quantification``) stays in the rules planner, which knows the stains.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DEFAULT_ORDER", "PlanExample", "PlanningHints", "compiled_triggers"]

#: where a tool without an ``order`` hint goes in a plan: after the project's tools (10-90)
DEFAULT_ORDER = 100


class PlanExample(BaseModel):
    """A request that this tool (alone) answers, with the stain and image kind it was asked about."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    question: str = Field(..., min_length=3, description="The request, in a pathologist's words.")
    stain: str = Field("H&E", description="Stain of the case the request is about.")
    image: Literal["patch", "wsi"] = Field("patch", description="A plain image (patch) or a whole slide (wsi).")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return {"question": value} if isinstance(value, str) else value


class PlanningHints(BaseModel):
    """Triggers, examples and ordering of one tool (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    triggers: tuple[str, ...] = Field(
        (), description="Regular expressions (case-insensitive) that, matched in a question, ask for this tool.")
    examples: tuple[PlanExample, ...] = Field((), description="Requests this tool answers on its own.")
    order: int = Field(DEFAULT_ORDER, description="Position in a plan: lower runs first (project tools: 10-90).")

    @field_validator("triggers")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern, re.I)
            except re.error as exc:
                raise ValueError(f"trigger {pattern!r} is not a regular expression: {exc}") from exc
            if re.compile(pattern, re.I).search(""):
                raise ValueError(f"trigger {pattern!r} matches the empty string (it would match every question)")
        return value


_COMPILED: dict[tuple[str, ...], re.Pattern[str] | None] = {}


def compiled_triggers(entry: dict[str, Any]) -> re.Pattern[str] | None:
    """One pattern for the triggers of a catalogue ``entry`` (None when it has none), compiled once."""
    triggers = tuple((entry.get("planning") or {}).get("triggers") or ())
    if triggers not in _COMPILED:
        _COMPILED[triggers] = re.compile("|".join(f"(?:{t})" for t in triggers), re.I) if triggers else None
    return _COMPILED[triggers]
