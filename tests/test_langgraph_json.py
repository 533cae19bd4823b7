"""``langgraph.json``: valid for langgraph-cli, and the graph it names loads and runs as LangGraph Server runs it.

langgraph-cli itself stays out of this environment (it downgrades grpcio/protobuf), so the checks repeat what its
config validation and langgraph-api's graph loader do, and then run the loaded graph on a real case.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from langgraph.store.base import BaseStore
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO / "langgraph.json"
CASE_NODES = {"load_case", "retrieve", "plan", "act", "report"}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return json.loads(CONFIG_PATH.read_text(encoding="utf-8"))


def _load_graph_value(spec: str) -> Any:
    """What langgraph-api's ``_graph_from_spec`` does with ``module:attr`` or ``path/to/file.py:attr``."""
    path_or_module, variable = spec.rsplit(":", maxsplit=1)
    if "/" in path_or_module:
        path = (CONFIG_PATH.parent / path_or_module).resolve()
        modname = path_or_module.replace("/", "__").replace(".py", "").replace(" ", "_").lstrip(".")
        modspec = importlib.util.spec_from_file_location(modname, path)
        assert modspec is not None and modspec.loader is not None, f"no python file at {path}"
        module = importlib.util.module_from_spec(modspec)
        sys.modules[modname] = module
        modspec.loader.exec_module(module)
    else:
        module = importlib.import_module(path_or_module)
    assert variable in module.__dict__, f"{path_or_module} has no attribute {variable!r}"
    return module.__dict__[variable]


def _compiled(value: Any) -> Pregel:
    """A graph value as the server resolves it: a compiled graph, a StateGraph, or a factory (of 0 or 1 args)."""
    if isinstance(value, Pregel):
        return value
    if isinstance(value, StateGraph):
        return value.compile()
    assert callable(value), f"{value!r} is not a graph or a graph factory"
    n_params = len(inspect.signature(value).parameters)
    made = value({"configurable": {}}) if n_params else value()
    return made.compile() if isinstance(made, StateGraph) else made


@pytest.fixture(scope="module")
def served(config: dict[str, Any]) -> Pregel:
    (spec,) = config["graphs"].values()
    return _compiled(_load_graph_value(spec))


# ---- the config file ---------------------------------------------------------------------------------------------
def test_config_has_the_fields_langgraph_cli_requires(config: dict[str, Any]) -> None:
    assert set(config) <= {"$schema", "python_version", "dependencies", "graphs", "env", "dockerfile_lines",
                           "pip_config_file", "store", "auth", "http", "checkpointer", "image_distro"}
    # python_version: 'major.minor', at least langgraph-cli's minimum, and one the project supports
    pyver = config["python_version"]
    assert re.fullmatch(r"3\.\d+", pyver)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    lo, hi = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", requires).groups()
    assert int(lo) <= int(pyver.split(".")[1]) < int(hi) and int(pyver.split(".")[1]) >= 11
    assert config["graphs"], "langgraph-cli refuses a config without graphs"
    for graph_id, spec in config["graphs"].items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", graph_id)
        assert isinstance(spec, str) and spec.count(":") == 1, f"{graph_id}: expected 'module:attr' or 'file.py:attr'"


def test_dependencies_are_installable(config: dict[str, Any]) -> None:
    deps = config["dependencies"]
    assert deps, "langgraph-cli needs at least one dependency"
    for dep in deps:
        if dep.startswith("."):  # a local package: a folder with pyproject.toml or setup.py
            folder = (CONFIG_PATH.parent / dep).resolve()
            assert folder.is_dir(), f"local dependency {dep} is not a folder"
            assert {"pyproject.toml", "setup.py"} & {p.name for p in folder.iterdir()}, f"{dep} is not a package"
            name = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["name"]
            assert name not in {"src", "langgraph", "langgraph-api", "langchain-core", "pydantic", "httpx"}
        else:  # a requirement: installed here too
            try:
                distribution(re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0])
            except PackageNotFoundError:
                pytest.fail(f"dependency {dep!r} is not installed")
    assert "." in deps, "the project itself must be installed for 'pathasst.agent.graph_server' to import"


def test_env_entries(config: dict[str, Any]) -> None:
    env = config["env"]
    if isinstance(env, str):  # a path to a KEY=VALUE file
        assert (CONFIG_PATH.parent / env).is_file(), f"env file {env} not found"
        return
    assert isinstance(env, dict) and env
    for key, value in env.items():
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) and isinstance(value, str), (key, value)
    # the offline guards the project relies on (no model downloads, no telemetry)
    assert env["HF_HUB_OFFLINE"] == "1" and env["YOLO_OFFLINE"] == "1" and env["ANONYMIZED_TELEMETRY"] == "False"
    assert not any(k.startswith("PATHASST_") for k in env), "settings belong in .env, not in langgraph.json"


# ---- the graph it names ------------------------------------------------------------------------------------------
def test_named_graph_is_compiled_with_the_case_nodes(config: dict[str, Any], served: Pregel) -> None:
    (spec,) = config["graphs"].values()
    value = _load_graph_value(spec)
    assert isinstance(value, Pregel), "a module-level compiled graph: no per-request factory call"
    # langgraph dev refuses a compiled graph that brings its own checkpointer or store
    assert not isinstance(value.checkpointer, BaseCheckpointSaver) and not isinstance(value.store, BaseStore)
    drawn = served.get_graph()
    assert set(drawn.nodes) == CASE_NODES | {"__start__", "__end__"}

    from pathasst.graphs.case_graph import build_graph

    def edges(g: Pregel) -> set[tuple[str, str, bool]]:
        return {(e.source, e.target, e.conditional) for e in g.get_graph().edges}

    assert edges(served) == edges(build_graph(False))  # same topology as the CLI's graph
    assert ("plan", "act", True) in edges(served) and ("act", "plan", False) in edges(served)


def test_context_schema_the_server_publishes(served: Pregel) -> None:
    ctx = served.get_context_jsonschema()
    assert set(ctx["properties"]) == {"planner"}
    planner = json.dumps(ctx["properties"]["planner"])
    assert all(name in planner for name in ("rules", "llamacpp", "openai"))


def test_input_and_output_schemas_the_server_publishes(served: Pregel) -> None:
    assert {"case_dir", "image_path", "question"} <= set(served.get_input_jsonschema()["properties"])
    assert "report" in served.get_output_jsonschema()["properties"]


@pytest.fixture()
def env_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Process settings from PATHASST_* variables, as the server reads them; a fresh ``get_settings`` around."""
    from pathasst.core.settings import get_settings

    for key in list(os.environ):
        if key.startswith("PATHASST_") and key != "PATHASST_SHARED_DATA":
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("PATHASST_PLANNER", "rules")
    monkeypatch.setenv("PATHASST_CASES_ROOT", str(tmp_path / "cases"))
    monkeypatch.setenv("PATHASST_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("PATHASST_CHROMA_PATH", str(tmp_path / "chroma"))  # empty library: no similar cases
    if os.environ.get("PATHASST_TEST_CACHE"):
        monkeypatch.setenv("PATHASST_CACHE_DIR", os.environ["PATHASST_TEST_CACHE"])
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture()
def case_dir(tmp_path: Path) -> Path:
    from skimage import data

    d = tmp_path / "cases" / "ihc01"
    d.mkdir(parents=True)
    Image.fromarray(data.immunohistochemistry()[128:384, 128:384]).save(d / "ihc.png")
    (d / "case.yaml").write_text("stain: H&E\nmpp: 0.5\norgan: colon\n")
    return d


def _direct_nuclei_count(case_dir: Path, settings: Any, mpp: float | None) -> int:
    """The nuclei_segmentation count on the same image, called directly (the expected value)."""
    from pathasst.core.imaging import ImageData
    from pathasst.tools.base import call_tool
    from pathasst.tools.registry import default_registry

    pixels = np.asarray(Image.open(case_dir / "ihc.png").convert("RGB"))
    image = ImageData(pixels, name="ihc.png", mpp=mpp)
    record, result = call_tool(default_registry(settings).get("nuclei_segmentation"), {"image": "ihc.png"},
                               lambda name, region, mpp: image)
    assert record.status == "ok" and result is not None
    assert result.output.count == len(np.unique(result.labels)) - 1
    return result.output.count


def test_served_graph_runs_a_real_case(served: Pregel, env_settings: Any, case_dir: Path) -> None:
    from pathasst.planning.report import Report

    state = served.invoke({"case_dir": str(case_dir)}, context={"planner": "rules"})
    json.dumps(state)  # the server sends the state as JSON: nothing else may be in it
    report = Report.model_validate(state["report"])
    assert report.case_id == "ihc01" and report.planner == "rules" and report.stain == "H&E"
    assert [(r.tool, r.status) for r in report.trace] == [("tissue_qc", "ok"), ("nuclei_segmentation", "ok")]
    qc, nuclei = (r.output for r in report.trace)
    assert 0.8 < qc["tissue_fraction"] <= 1.0 and qc["pen_marks"] is False
    count = _direct_nuclei_count(case_dir, env_settings, 0.5)
    assert nuclei["count"] == count and count > 20
    assert nuclei["mpp"] == 0.5 and nuclei["mpp_assumed"] is False
    assert f"count {count}" in report.answer
    assert [d["action"] for d in report.decisions] == ["call_tools", "finish"]
    assert report.similar_cases == []


def test_served_graph_with_the_servers_checkpointer(served: Pregel, env_settings: Any, case_dir: Path) -> None:
    """The server swaps in its own checkpointer and sends the assistant's default context ({})."""
    as_served = served.copy(update={"checkpointer": InMemorySaver()})
    cfg = {"configurable": {"thread_id": "t-1"}}
    as_served.invoke({"image_path": str(case_dir / "ihc.png"), "question": "How many nuclei are there?"},
                     config=cfg, context={})
    snap = as_served.get_state(cfg)
    report = snap.values["report"]
    assert report["case_id"] == "ihc" and report["planner"] == "rules"  # settings.planner
    assert [r["tool"] for r in report["trace"]] == ["nuclei_segmentation"]
    assert report["trace"][0]["output"]["count"] == _direct_nuclei_count(case_dir, env_settings, None)


def test_unknown_planner_in_context_is_a_clear_error(served: Pregel, env_settings: Any, case_dir: Path) -> None:
    from pathasst.planning import PlannerError

    with pytest.raises(PlannerError, match=r"unknown planner 'oracle'; valid planners: hybrid, llamacpp, openai, rules"):
        served.invoke({"case_dir": str(case_dir)}, context={"planner": "oracle"})


# ---- the real dev server (optional: langgraph-cli lives in a separate venv) -----------------------------------------
LANGGRAPH_CLI = os.environ.get("LANGGRAPH_CLI_BIN")


@pytest.mark.slow
@pytest.mark.skipif(
    not LANGGRAPH_CLI,
    reason="set LANGGRAPH_CLI_BIN to the `langgraph` executable of a separate venv with langgraph-cli[inmem] "
    "that also sees this project (langgraph-cli cannot join the main venv)",
)
def test_langgraph_dev_serves_the_graph(tmp_path: Path, case_dir: Path) -> None:
    import signal
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")}
    env.update({
        "LANGGRAPH_NO_VERSION_CHECK": "true", "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false",
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost", "PATHASST_PLANNER": "rules",
        "PATHASST_CASES_ROOT": str(case_dir.parent), "PATHASST_CHROMA_PATH": str(tmp_path / "chroma"),
        "PATHASST_OUTPUT_DIR": str(tmp_path / "out"),
    })
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [LANGGRAPH_CLI, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
         "--config", str(CONFIG_PATH)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False)
        for _ in range(120):
            try:
                if client.get("/ok").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        (assistant,) = client.post("/assistants/search", json={"graph_id": "pathasst_case"}).json()
        assert assistant["graph_id"] == "pathasst_case"
        reply = client.post("/runs/wait", json={"assistant_id": "pathasst_case", "input": {"case_dir": str(case_dir)},
                                                "context": {"planner": "rules"}})
        assert reply.status_code == 200, reply.text
        report = reply.json()["report"]
        assert report["case_id"] == "ihc01" and report["planner"] == "rules"
        trace = [(r["tool"], r["status"]) for r in report["trace"]]
        assert trace == [("tissue_qc", "ok"), ("nuclei_segmentation", "ok")]
        assert report["trace"][1]["output"]["count"] > 20
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
