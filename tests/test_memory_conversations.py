"""Conversation memory: case threads checkpointed in SQLite survive a restart (a new process) and can resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathasst.memory.conversations import case_thread_id, list_threads, open_checkpointer, thread_config

# One script, run as separate processes: each phase reopens the database, as a restarted app would.
SCRIPT = r'''
import json, sys
from pathlib import Path
from pathasst.core.settings import Settings
from pathasst.planning.rules import RulesPlanner
from pathasst.agent.engine import Engine
from pathasst.graphs.state import CaseContext
from pathasst.memory.conversations import case_thread_id, open_checkpointer, thread_config
from pathasst.tools.base import PathologyTool, ToolOutput, ToolResult
from pathasst.tools.registry import ToolRegistry

class QC(PathologyTool):
    name = "tissue_qc"
    description = "Tissue quality (test double)."
    def analyze(self, image, args):
        return ToolResult(output=ToolOutput())

phase, db, case_dir, lib = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
settings = Settings(_env_file=None, chroma_path=lib)
reg = ToolRegistry(settings)
reg.register(QC)
saver = open_checkpointer(db)
eng = Engine(settings, planner=RulesPlanner(settings), registry=reg, checkpointer=saver)
tid = case_thread_id(case_dir.name, "review-1")
cfg = {**thread_config(tid), "recursion_limit": 100}
ctx = CaseContext(settings=settings, registry=reg, planner=eng.planner)
out = {}
if phase == "ask":
    report, _ = eng.run(case_dir=case_dir, question="Check the tissue quality.", thread_id=tid)
    out["calls"] = len(report.trace)
elif phase == "follow-up":
    before = eng.graph.get_state(thread_config(tid)).values
    out["previous_question"] = before["question"]
    out["previous_report"] = before["report"]["case_id"]
    report, _ = eng.run(case_dir=case_dir, question="Check the tissue quality again.", thread_id=tid)
    after = eng.graph.get_state(thread_config(tid)).values
    out["records"] = len(after["records"])
    out["decisions"] = [d["action"] for d in after["decisions"]]
    out["question"] = after["question"]
elif phase == "interrupt":
    inputs = {"case_dir": str(case_dir), "question": "Check the tissue quality.", "records": [], "decisions": [],
              "notes": [], "timings": {}}
    eng.graph.invoke(inputs, cfg, context=ctx, interrupt_before=["report"])
    out["next"] = list(eng.graph.get_state(cfg).next)
elif phase == "resume":
    out["next_before"] = list(eng.graph.get_state(cfg).next)
    state = eng.graph.invoke(None, cfg, context=ctx)
    out["report_case"] = state["report"]["case_id"]
    out["tools"] = [r["tool"] for r in state["report"]["trace"]]
print("RESULT " + json.dumps(out))
'''


def _phase(tmp_path: Path, phase: str, case_dir: Path) -> dict:
    script = tmp_path / "conv.py"
    script.write_text(SCRIPT, encoding="utf-8")
    r = subprocess.run(
        [sys.executable, str(script), phase, str(tmp_path / "conv.sqlite"), str(case_dir), str(tmp_path / "nolib")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture()
def case_dir(tmp_path) -> Path:
    d = tmp_path / "cases" / "c1"
    d.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "a.png")
    (d / "case.yaml").write_text("stain: H&E\n", encoding="utf-8")
    return d


@pytest.mark.slow
def test_thread_survives_restart_and_keeps_history(tmp_path, case_dir):
    assert _phase(tmp_path, "ask", case_dir) == {"calls": 1}
    out = _phase(tmp_path, "follow-up", case_dir)  # a new process: the thread is read back from SQLite
    assert out["previous_question"] == "Check the tissue quality." and out["previous_report"] == "c1"
    # the follow-up planner saw the earlier tissue_qc call in the thread's history and did not repeat it
    assert out["question"] == "Check the tissue quality again."
    assert out["records"] == 1 and out["decisions"] == ["call_tools", "finish", "finish"]
    saver = open_checkpointer(tmp_path / "conv.sqlite")
    assert list_threads(saver, "c1") == ["case:c1:review-1"] and list_threads(saver, "other") == []


@pytest.mark.slow
def test_interrupted_review_resumes_after_restart(tmp_path, case_dir):
    assert _phase(tmp_path, "interrupt", case_dir) == {"next": ["report"]}
    out = _phase(tmp_path, "resume", case_dir)
    assert out == {"next_before": ["report"], "report_case": "c1", "tools": ["tissue_qc"]}


def test_thread_ids():
    assert case_thread_id("c1") == "case:c1:default"
    assert case_thread_id("c1", "second opinion") == "case:c1:second_opinion"
    with pytest.raises(ValueError):
        case_thread_id("")
