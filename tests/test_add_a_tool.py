"""Adding a tool touches one module plus an entry point: a package outside this repository, installed the way pip
installs one (a module and a ``.dist-info`` folder with ``entry_points.txt`` on the path), is listed, planned by the
default planner from a question in the tool's own words, run, and reported, with no edit to planner code.

This is the README's "Add a tool" recipe, run as a new user would: ``pathasst tools list`` and ``pathasst ask`` in a
fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathasst.planning.llamacpp import worked_examples
from pathasst.planning.rules import RulesPlanner
from pathasst.tools.planning import PlanningHints

TOOL_MODULE = '''
"""Collagen by colour: the share of tissue pixels that are eosin-pink (a toy measurement; the contract is real)."""
from typing import ClassVar

import numpy as np
from pydantic import Field

from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult
from pathasst.core.imaging import ImageData
from pathasst.tools.planning import PlanExample, PlanningHints


class CollagenOutput(ToolOutput):
    collagen_fraction: float = Field(..., ge=0, le=1, description="Share of tissue pixels that are pink.")


class CollagenTool(PathologyTool):
    name: ClassVar[str] = "collagen_fraction"
    description: ClassVar[str] = "Share of the tissue that is collagen (eosin-pink), from colour."
    output_model = CollagenOutput
    planning: ClassVar[PlanningHints] = PlanningHints(
        triggers=(r"\\bcollagen\\b", r"\\bfibrosis\\b"),
        examples=(PlanExample(question="How much collagen is in this section?"),),
    )

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        rgb = image.pixels.astype(int)
        tissue = rgb.sum(-1) < 600
        pink = tissue & (rgb[..., 0] > rgb[..., 2] + 20) & (rgb[..., 1] < rgb[..., 0] - 40)
        return ToolResult(CollagenOutput(collagen_fraction=round(float(pink.sum() / max(tissue.sum(), 1)), 4)))
'''


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A folder holding an installed distribution ``collagen-tool`` (module + dist-info), as pip would lay it out."""
    site = tmp_path / "site"
    (site / "collagen_tool").mkdir(parents=True)
    (site / "collagen_tool" / "__init__.py").write_text(TOOL_MODULE)
    info = site / "collagen_tool-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: collagen-tool\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pathasst.tools]\ncollagen_fraction = collagen_tool:CollagenTool\n")
    return site


def _run(args: list[str], site: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")}
    env |= {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATHASST_OUTPUT_DIR": str(home / "out"),
            "PATHASST_CHROMA_PATH": str(home / "chroma")}
    cli = [sys.executable, "-c", "from pathasst.cli.main import main; main()"]
    return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=300, cwd=home)


def test_an_entry_point_tool_is_listed_planned_run_and_reported(site: Path, tmp_path: Path) -> None:
    listed = _run(["tools", "list"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "collagen_fraction" in listed.stdout

    img = np.full((128, 128, 3), 245, np.uint8)
    img[:, :64] = (230, 120, 180)  # pink half: tissue, collagen by colour
    img[:64, 64:] = (90, 60, 140)  # purple quarter: tissue, not collagen
    Image.fromarray(img).save(tmp_path / "field.png")
    done = _run(["ask", str(tmp_path / "field.png"), "How much collagen is there in this field?", "--json"], site,
                tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    calls = [r for r in report["trace"] if r["tool"] == "collagen_fraction"]
    assert len(calls) == 1 and calls[0]["status"] == "ok", report["trace"]
    assert calls[0]["output"]["collagen_fraction"] == pytest.approx(2 / 3, abs=0.01)  # 64x128 pink of 96x128 tissue
    assert "0.6667" in report["answer"] and calls[0]["id"] in report["answer"]  # quoted, with its source


def test_triggers_respect_negation_and_order_follows_the_hints() -> None:
    """The rules planner reads a catalogue tool's triggers like its own: negated mentions do not count, and the
    plan runs in the tools' ``planning.order`` (an external tool without one after the project's tools)."""
    hints = PlanningHints(triggers=(r"\bcollagen\b",))
    catalogue = [{"name": "tissue_qc", "planning": {"order": 10}}, {"name": "collagen_fraction",
                                                                    "planning": hints.model_dump()}]
    rules = RulesPlanner()
    assert rules.tools_for("Check the image quality and the collagen here.", "H&E", "patch", catalogue)[0] == [
        "tissue_qc", "collagen_fraction"]
    assert rules.tools_for("Check the image quality; no need to measure collagen.", "H&E", "patch", catalogue)[0] == [
        "tissue_qc"]
    assert rules.tools_for("Run collagen_fraction on this image.", "H&E", "patch", catalogue[:1] + [
        {"name": "collagen_fraction"}])[0] == ["collagen_fraction"]  # named, without triggers
    assert "collagen" not in " ".join(rules.tools_for("Check the collagen here.", "H&E", "patch")[0])


def test_hints_are_checked_and_reach_the_llamacpp_prompt() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        PlanningHints(triggers=("(unclosed",))
    with pytest.raises(ValueError, match="empty string"):
        PlanningHints(triggers=(r"\s*",))
    entry = {"name": "collagen_fraction",
             "planning": PlanningHints(examples=("How much collagen is in this section?",)).model_dump()}
    rows = worked_examples([entry])
    assert rows[0] == ("How much collagen is in this section?", "H&E", "patch", ("collagen_fraction",))
    assert all(tools == () for *_, tools in rows[1:])  # then the planner's own no-tool examples
