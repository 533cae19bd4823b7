"""Running cases through the graph: one case (``run_case``), a folder of cases (``run_batch``), ``summary.csv``.

Each case is isolated: an input error or an unexpected exception fails that case (with its reason in
``summary.csv``) and the batch goes on. Outputs are atomic; a rerun skips finished cases and retries failed ones.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathasst.agent.engine import Engine
from pathasst.agent.executors import CaseJob, InlineExecutor
from pathasst.agent.outputs import OutputLayout, clean_stale, write_case
from pathasst.core.cases import discover_cases
from pathasst.core.files import atomic_write_text

__all__ = ["BatchResult", "CaseOutcome", "run_batch", "write_summary"]

log = logging.getLogger(__name__)
SUMMARY_FIELDS = ["case_id", "status", "reason", "question", "n_calls", "tools", "failed_calls", "answer", "report"]


@dataclass
class CaseOutcome:
    case_id: str
    status: str  # ok | failed | skipped
    reason: str = ""
    report_dir: Path | None = None
    seconds: float = 0.0


@dataclass
class BatchResult:
    out_dir: Path
    outcomes: list[CaseOutcome] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for o in self.outcomes:
            c[o.status] = c.get(o.status, 0) + 1
        return c


def _summary_row(layout: OutputLayout, case_id: str) -> dict[str, Any]:
    rep_path = layout.report_json(case_id)
    if rep_path.is_file():
        try:
            rep = json.loads(rep_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            return {"case_id": case_id, "status": "failed", "reason": f"unreadable report.json: {exc}"}
        trace = rep.get("trace", [])
        return {
            "case_id": case_id,
            "status": "ok",
            "reason": "",
            "question": rep.get("question", ""),
            "n_calls": len(trace),
            "tools": ";".join(r["tool"] for r in trace),
            "failed_calls": sum(1 for r in trace if r["status"] in ("failed", "bad_call")),
            "answer": rep.get("answer", ""),
            "report": layout.report_md(case_id).relative_to(layout.root).as_posix(),
        }
    reason = layout.failure_reason(case_id)
    if reason is not None:
        return {"case_id": case_id, "status": "failed", "reason": reason}
    return {"case_id": case_id, "status": "pending", "reason": "not run yet"}


def write_summary(out_dir: Path, case_ids: list[str]) -> Path:
    """(Re)write ``OUT/summary.csv`` atomically from what is on disk: every case, failed ones with the reason."""
    layout = OutputLayout(Path(out_dir))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for cid in case_ids:
        w.writerow(_summary_row(layout, cid))
    path = layout.summary_csv
    atomic_write_text(path, buf.getvalue())
    return path


def run_batch(
    cases_dir: Path,
    out_dir: Path,
    engine: Engine | None = None,
    question: str | None = None,
    force: bool = False,
    progress: Callable[[CaseOutcome], None] | None = None,
    executor: Any = None,
) -> BatchResult:
    """Run every case folder under ``cases_dir``; skip finished ones unless ``force``.

    ``executor`` (:mod:`pathasst.agent.executors`) decides where the cases run; default: one after another with
    ``engine`` in this process. Whatever runs them, this function alone writes the outputs, atomically, in the order
    the cases finish, so a killed run leaves only complete case folders and a rerun finishes the rest.
    """
    if executor is None:
        if engine is None:
            raise ValueError("run_batch needs an engine or an executor")
        executor = InlineExecutor(engine)
    cases_dir, out_dir = Path(cases_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir)
    layout = OutputLayout(out_dir)
    layout.failed_dir.mkdir(parents=True, exist_ok=True)
    case_dirs = discover_cases(cases_dir)
    ids = [p.name for p in case_dirs]
    result = BatchResult(out_dir=out_dir)
    write_summary(out_dir, ids)

    def _done(outcome: CaseOutcome) -> None:
        result.outcomes.append(outcome)
        if progress is not None:
            progress(outcome)

    jobs = []
    for case_dir in case_dirs:
        if layout.is_done(case_dir.name) and not force:
            _done(CaseOutcome(case_dir.name, "skipped", "already complete", layout.case_dir(case_dir.name)))
        else:
            jobs.append(CaseJob(case_dir=case_dir, question=question, cases_root=cases_dir))
    for work in executor.map(jobs):
        cid = work.case_id
        outcome = CaseOutcome(cid, work.status, work.reason, seconds=work.seconds)
        if work.status == "ok":
            try:
                outcome.report_dir = write_case(out_dir, work.report, work.artifacts, overwrite=force)
                layout.failure_record(cid).unlink(missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - e.g. disk full: that case fails, the batch goes on
                log.error("writing case %s failed:\n%s", cid, traceback.format_exc())
                outcome = CaseOutcome(cid, "failed", f"cannot write outputs: {type(exc).__name__}: {exc}",
                                      seconds=work.seconds)
        if outcome.status == "failed":
            layout.write_failure(cid, outcome.reason)
        write_summary(out_dir, ids)
        _done(outcome)
    return result
