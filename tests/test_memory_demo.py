"""The demo's case library: built from the demo cases, and every demo report cites similar cases (not itself)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from pathasst.agent.demo import DEMO_DIAGNOSIS, build_demo_cases, build_demo_library
from pathasst.agent.engine import Engine
from pathasst.agent.runner import run_batch
from pathasst.planning.rules import RulesPlanner
from pathasst.tools.base import PathologyTool, ToolOutput, ToolResult
from pathasst.tools.registry import ToolRegistry


class Noop(PathologyTool):
    name: ClassVar[str] = "tissue_qc"
    description: ClassVar[str] = "Tissue quality (test double)."

    def analyze(self, image, args):
        return ToolResult(output=ToolOutput())


@pytest.mark.slow
def test_demo_library_and_cited_similar_cases(tmp_path, settings):
    cases = tmp_path / "demo" / "cases"
    build_demo_cases(cases)
    rep = build_demo_library(cases, tmp_path / "demo" / "library", settings)
    assert rep.count("added") == 4 and rep.count("failed") == 1  # empty_case has no image
    assert [name for name, _ in rep.bad_files] == ["broken_inputs/truncated.png"]
    assert build_demo_library(cases, tmp_path / "demo" / "library", settings).count("unchanged") == 4

    s = settings.model_copy(update={"chroma_path": tmp_path / "demo" / "library"})
    reg = ToolRegistry(s)
    reg.register(Noop)
    result = run_batch(cases, tmp_path / "demo" / "reports", Engine(s, planner=RulesPlanner(s), registry=reg))
    assert result.counts == {"ok": 4, "failed": 1}
    for cid in ("ki67_patch", "ki67_slide", "qc_blurred", "broken_inputs"):
        md = (tmp_path / "demo" / "reports" / cid / "report.md").read_text()
        assert "## Similar cases" in md and f"similar to case {cid}," not in md
        cited = [ln for ln in md.splitlines() if ln.startswith("- similar to case ")]
        assert len(cited) == 3 and all(f"diagnosed {DEMO_DIAGNOSIS}, distance " in ln for ln in cited)
    patch = (tmp_path / "demo" / "reports" / "ki67_patch" / "report.md").read_text()
    assert "similar to case ki67_slide" in patch
