"""The engine: the compiled case graph with its registry and planner, kept for many case runs (tools load their
weights once). Batch runs (:mod:`pathasst.agent.runner`), their workers (:mod:`pathasst.agent.executors`) and the
review app run cases through it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathasst.agent.system import build_system
from pathasst.core.settings import Settings
from pathasst.graphs.state import CaseContext
from pathasst.planning.report import Report

__all__ = ["Engine"]


class Engine:
    """Holds the compiled graph, the registry and the planner for many case runs (tools load weights once)."""

    def __init__(self, settings: Settings, planner: Any = None, registry: Any = None, checkpointer: Any = None):
        # a planner name (or None = settings.planner), or a ready planner object
        system = build_system(settings, registry=registry, planner=planner)
        self.settings, self.registry, self.planner = system.settings, system.registry, system.planner()
        self.graph = system.graph(checkpointer)

    def run(
        self,
        *,
        case: Any = None,
        case_dir: Path | None = None,
        image_path: Path | None = None,
        question: str | None = None,
        cases_root: Path | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        thread_id: str | None = None,
    ) -> tuple[Report, dict[str, Any]]:
        """Run one case (a prepared ``Case``, a folder or a single image); return the report and the artifacts."""
        ctx = CaseContext(
            settings=self.settings,
            registry=self.registry,
            planner=self.planner,
            cases_root=str(cases_root) if cases_root else None,
            on_event=on_event,
        )
        inputs: dict[str, Any] = {"question": question, "records": [], "decisions": [], "notes": [], "timings": {}}
        if case is not None:
            inputs["case"] = case.model_dump(mode="json")
            inputs["case_dir"] = str(case.root)
        elif image_path is not None:
            inputs["image_path"] = str(image_path)
            inputs["case_dir"] = str(Path(image_path).parent)
        else:
            inputs["case_dir"] = str(case_dir)
        config = {"configurable": {"thread_id": thread_id or uuid.uuid4().hex}, "recursion_limit": 4 * 64 + 8}
        t0 = time.perf_counter()
        try:
            state = self.graph.invoke(inputs, config=config, context=ctx)
        finally:
            ctx.close()
        report = Report.model_validate(state["report"])
        report.timings["total"] = time.perf_counter() - t0
        return report, ctx.artifacts
