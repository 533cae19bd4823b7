"""The ``retrieve`` node: similar past cases from the case library, before planning.

Top-``RETRIEVE_K`` cases for the case's first image (a patch, or the slide's tissue tiles aggregated), the case itself
excluded. They become ``state["similar"]`` (cited in the report: "similar to case X, diagnosed Y, distance d") and
``state["retrieved"]`` (one line of text per case for ``PlannerContext.retrieved``: data, never instructions).
No library, an empty one, or one that cannot be read gives no similar cases and never fails the case; a problem
other than "no library" is written to the report's notes.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from pathasst.core.cases import Case, CaseError
from pathasst.core.embedders import EmbedderError
from pathasst.core.errors import ToolError
from pathasst.graphs.state import CaseContext, CaseState
from pathasst.memory.library import open_library
from pathasst.memory.store import StoreError

__all__ = ["RETRIEVE_K", "retrieve"]

#: number of similar cases retrieved for every case
RETRIEVE_K = 3


def _library_errors() -> tuple[type[BaseException], ...]:
    from chromadb.errors import ChromaError

    return (StoreError, EmbedderError, ToolError, CaseError, ChromaError, OSError)


def retrieve(state: CaseState, runtime: Runtime[CaseContext]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = runtime.context
    case = Case.model_validate(state["case"])
    similar: list[dict[str, Any]] = []
    retrieved: list[str] = []
    notes: list[str] = []

    k = int(getattr(ctx.settings, "similar_k", RETRIEVE_K))
    lib = open_library(ctx.settings)
    if k > 0 and lib.exists():
        try:
            hits = lib.similar_to_case(case, k=k)
        except _library_errors() as exc:
            notes.append(f"similar cases unavailable: {type(exc).__name__}: {exc}")
        else:
            similar = [h.citation() for h in hits]
            retrieved = [h.as_data() for h in hits]
    ctx.emit("retrieved", {"case_id": case.id, "similar": similar})
    prev = (state.get("timings") or {}).get("retrieve", 0.0)
    return {
        "similar": similar,
        "retrieved": retrieved,
        "notes": notes,
        "timings": {"retrieve": prev + time.perf_counter() - t0},
    }
