"""The layer contracts of ``pyproject.toml`` ([tool.importlinter]) hold, and the checker sees what they forbid.

import-linter reads every import statement, those inside functions included, so a function-level import cannot
dodge a contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: install the dev extra (import-linter)")
    return subprocess.run([exe, "--config", str(config), "--no-cache"], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def test_the_layer_contracts_hold() -> None:
    done = _lint(REPO / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 kept, 0 broken" in done.stdout
    assert "Layers: cli > ui > agent" in done.stdout


def test_every_package_sits_in_a_layer() -> None:
    """A new top-level package must be placed in the layers contract (or it would escape it)."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in config["contracts"] if c["type"] == "layers")
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == {name.removeprefix("pathasst.") for name in layers} | {"finetune"}
    assert set(config["root_packages"]) == set(layers) | {"pathasst.finetune"}


def test_a_contract_the_code_breaks_is_reported(tmp_path: Path) -> None:
    """Tools may import the case library (the similar_cases tool does): a contract forbidding it fails, naming the
    import."""
    config = tmp_path / "broken.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["pathasst.tools", "pathasst.memory"]\n'
        '[[tool.importlinter.contracts]]\nname = "tools never import memory"\ntype = "forbidden"\n'
        'source_modules = ["pathasst.tools"]\nforbidden_modules = ["pathasst.memory"]\n'
    )
    done = _lint(config)
    assert done.returncode == 1
    assert "0 kept, 1 broken" in done.stdout and "pathasst.tools.similar_cases -> pathasst.memory" in done.stdout


def test_one_composition_root_builds_registry_and_planners() -> None:
    """Front ends get their registry and planners from ``agent/system.build_system``; none assembles them itself
    (the tools' evaluator, which needs only a registry, and the planner evaluator's tolerant loader excepted)."""
    import re

    allowed = {"agent/system.py", "tools/registry.py", "planning/__init__.py", "tools/eval_cli.py",
               "cli/eval.py"}
    calls = re.compile(r"\b(?:default_registry|get_planner)\(")
    offenders = sorted(
        str(p.relative_to(REPO)) for folder in ("core", "memory", "tools", "planning", "graphs", "agent", "ui", "cli")
        for p in (REPO / folder).rglob("*.py")
        if str(p.relative_to(REPO)) not in allowed
        and any(calls.search(line) and not line.lstrip().startswith(("def ", "#")) for line in p.read_text().splitlines())
    )
    assert offenders == []


def test_build_system_wires_settings_registry_and_planners(settings) -> None:
    from pathasst.agent.engine import Engine
    from pathasst.agent.system import build_system
    from pathasst.planning import PlannerError
    from pathasst.planning.rules import RulesPlanner

    system = build_system(settings, planner="rules")
    assert system.settings is settings and "nuclei_segmentation" in system.registry
    assert isinstance(system.planner(), RulesPlanner) and system.planner("rules") is system.planner("rules")
    with pytest.raises(PlannerError, match="rules"):
        system.planner("nope")  # the message lists the valid names
    ready = RulesPlanner(settings)
    engine = Engine(settings, planner=ready, registry=system.registry)
    assert engine.planner is ready and engine.registry is system.registry


PACKAGES = ("core", "memory", "tools", "planning", "graphs", "agent", "ui", "cli")
#: the only first-party imports allowed inside functions: modules that load a heavy library when imported, kept off
#: the paths that do not need it (LangGraph for MCP and predict, jsonschema and the MCP SDK for the CLI's other commands)
LAZY_MODULES = {"pathasst.graphs.case_graph", "pathasst.planning.planner_eval", "pathasst.agent.mcp_server"}


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle between modules either, function-level imports included, so no import is placed inside a
    function to dodge one."""
    import grimp
    import networkx as nx

    graph = grimp.build_graph(*(f"pathasst.{p}" for p in PACKAGES))
    edges = nx.DiGraph((m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m))
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def test_tools_reach_the_case_library_only_through_its_package() -> None:
    import grimp

    graph = grimp.build_graph("pathasst.tools", "pathasst.memory")
    reached = {imported for module in graph.find_children("pathasst.tools") | graph.find_descendants("pathasst.tools")
               for imported in graph.find_modules_directly_imported_by(module) if imported.startswith("pathasst.memory")}
    assert reached == {"pathasst.memory"}


def test_first_party_imports_inside_functions_are_only_the_heavy_ones() -> None:
    import ast

    found = set()
    for folder in PACKAGES:
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pathasst"):
                        found.add(node.module)
                    elif isinstance(node, ast.Import):
                        found |= {a.name for a in node.names if a.name.startswith("pathasst")}
    assert found == LAZY_MODULES
