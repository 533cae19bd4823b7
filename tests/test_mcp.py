"""The MCP server (``pathasst mcp``) through the SDK's real client: in process, over stdio and over streamable HTTP.

Images are a crop of ``skimage.data.immunohistochemistry()`` (no download) plus, with ``@pytest.mark.data``, a
held-out CoNSeP tile and an Aperio slide from ``../shared/data``.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult
from PIL import Image
from tool_helpers import EXPECTED_TOOLS

from pathasst.agent.mcp_server import build_server
from pathasst.core.cases import CaseError
from pathasst.tools.registry import default_registry

TOOL_NAMES = set(EXPECTED_TOOLS)
IHC = "case1/ihc.png"


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(fn)


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/case1/ihc.png (a real IHC crop), ROOT/case1/broken.png (truncated), a file outside ROOT, a symlink to it."""
    from skimage import data

    base = tmp_path_factory.mktemp("mcp")
    root = base / "root"
    (root / "case1").mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(data.immunohistochemistry()[:256, :256]).save(buf, format="PNG")
    (root / IHC).write_bytes(buf.getvalue())
    (root / "case1" / "broken.png").write_bytes(buf.getvalue()[:300])
    (base / "outside").mkdir()
    (base / "outside" / "secret.png").write_bytes(buf.getvalue())
    (root / "case1" / "link.png").symlink_to(base / "outside" / "secret.png")
    return root


def _server_env(tmp: Path) -> dict[str, str]:
    """Offline, and every PathAsst folder in ``tmp`` (the user's environment and home are not used)."""
    return {
        "HF_HUB_OFFLINE": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp / "yolo"),
        "ANONYMIZED_TELEMETRY": "False",
        "PATHASST_CHROMA_PATH": str(tmp / "chroma"),
        "PATHASST_CACHE_DIR": str(tmp / "cache"),
        "PATHASST_OUTPUT_DIR": str(tmp / "out"),
    }


# --- in process --------------------------------------------------------------------------------------------------
def test_lists_every_registry_tool_with_its_real_schemas(settings, image_root):
    registry = default_registry(settings)

    async def go():
        async with Client(build_server(settings, image_root)) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in _run(go)}
    assert set(tools) == TOOL_NAMES == set(registry.names())
    for name, tool in tools.items():
        cls = registry.tool_class(name)
        assert tool.input_schema == cls.input_model.model_json_schema(), name
        out = tool.output_schema
        assert {"status", "summary", "output", "model", "image"} <= set(out["required"]), name
        assert out["properties"]["output"]["$ref"] == f"#/$defs/{cls.output_model.__name__}", name
        assert set(out["$defs"][cls.output_model.__name__]["properties"]) == set(cls.output_model.model_fields), name
        assert tool.annotations.read_only_hint is True
    nuclei = tools["nuclei_segmentation"].input_schema
    assert nuclei["required"] == ["image"]
    assert {"image", "region", "method", "min_area_px", "seed_h", "assumed_mpp"} == set(nuclei["properties"])
    assert nuclei["properties"]["method"]["enum"] == ["auto", "pixel_classifier", "deconvolution"]


def test_paths_outside_the_root_are_refused(settings, image_root):
    outside = image_root.parent / "outside" / "secret.png"

    async def go():
        async with Client(build_server(settings, image_root)) as client:
            images = ("../outside/secret.png", str(outside), "case1/link.png")
            return [await client.call_tool("tissue_qc", {"image": image}) for image in images]

    for result in _run(go):
        assert result.is_error
        assert "refused" in _text(result) and "outside the cases root" in _text(result)
        assert result.structured_content is None


def test_corrupt_image_missing_image_and_not_configured_are_error_results(settings, image_root):
    async def go():
        async with Client(build_server(settings, image_root)) as client:
            return (
                await client.call_tool("nuclei_segmentation", {"image": "case1/broken.png"}),
                await client.call_tool("nuclei_segmentation", {"image": "case1/none.png"}),
                await client.call_tool("similar_cases", {"image": IHC, "k": 2}),
            )

    broken, missing, similar = _run(go)
    assert broken.is_error and "corrupt or truncated image" in _text(broken)
    assert missing.is_error and "not found under the image root" in _text(missing)
    # the case library in tmp is empty: a not-configured tool is an error result that still carries its typed result
    assert similar.is_error and "case library not configured" in _text(similar)
    assert similar.structured_content["status"] == "not_configured"
    assert similar.structured_content["output"]["cases"] == []
    assert not (Path(settings.chroma_path) / "chroma.sqlite3").exists()


def test_region_sent_as_a_json_string_is_decoded(settings, image_root):
    async def go():
        async with Client(build_server(settings, image_root)) as client:
            return await client.call_tool(
                "tissue_qc", {"image": IHC, "region": '{"x": 64, "y": 32, "width": 128, "height": 96}'}
            )

    result = _run(go)
    assert not result.is_error, _text(result)
    assert result.structured_content["image_origin"] == [64.0, 32.0]
    assert result.structured_content["image"] == IHC


def test_case_yaml_of_the_image_folder_gives_the_resolution(settings, image_root, tmp_path):
    """An image inside a case folder is read with that case's case.yaml (mpp), like a batch run reads it."""
    import shutil

    root = tmp_path / "root"
    (root / "c2" / "sub").mkdir(parents=True)
    shutil.copy(image_root / IHC, root / "c2" / "sub" / "ihc.png")
    shutil.copy(image_root / IHC, root / "plain.png")
    (root / "c2" / "case.yaml").write_text("stain: Ki-67\nmpp: 0.5\n")

    async def go():
        async with Client(build_server(settings.model_copy(update={"default_mpp": None}), root)) as client:
            return (await client.call_tool("tissue_qc", {"image": "c2/sub/ihc.png"}),
                    await client.call_tool("tissue_qc", {"image": "plain.png"}))

    in_case, plain = _run(go)
    assert not in_case.is_error and not plain.is_error, (_text(in_case), _text(plain))
    assert in_case.structured_content["image_mpp"] == 0.5
    assert plain.structured_content["image_mpp"] is None
    (root / "c2" / "case.yaml").write_text("mpp: [not, a, number]\n")
    bad = _run(go)[0]
    assert bad.is_error and "case.yaml" in _text(bad)


def test_similar_cases_searches_the_case_library(settings, image_root, tmp_path):
    from skimage import data

    from pathasst.memory import open_library

    ihc = data.immunohistochemistry()
    archive = (("arch_a", ihc[:256, :256], "glands A"), ("arch_b", ihc[256:, 256:], "glands B"))
    for case_id, pixels, diagnosis in archive:
        folder = tmp_path / "archive" / case_id
        folder.mkdir(parents=True)
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / "img.png")
        (folder / "case.yaml").write_text(f"diagnosis: {diagnosis}\norgan: colon\n", encoding="utf-8")
    assert open_library(settings).add_cases(tmp_path / "archive").count("added") == 2

    async def go():
        async with Client(build_server(settings, image_root)) as client:
            return await client.call_tool("similar_cases", {"image": IHC, "k": 2, "where": '{"organ": "colon"}'})

    result = _run(go)
    assert not result.is_error, _text(result)
    out = result.structured_content["output"]
    assert [c["case_id"] for c in out["cases"]] == ["arch_a", "arch_b"]  # arch_a holds the same pixels
    assert out["cases"][0]["distance"] < 1e-3 and out["cases"][0]["diagnosis"] == "glands A"
    assert out["library_images"] == 2 and result.structured_content["model"]["backend"] == out["embedder"]


def test_no_image_root_is_refused_at_start(settings, tmp_path):
    assert settings.cases_root is None
    with pytest.raises(CaseError, match="no image root"):
        build_server(settings)
    with pytest.raises(CaseError, match="not found or not a folder"):
        build_server(settings, tmp_path / "missing")


# --- stdio subprocess --------------------------------------------------------------------------------------------
@dataclass
class StdioRun:
    tools: dict[str, Any]
    calls: dict[str, CallToolResult]
    stray: list[Exception] = field(default_factory=list)  # stdout lines that were not JSON-RPC
    stderr: str = ""


@pytest.fixture(scope="module")
def stdio_run(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> StdioRun:
    """One ``python -m pathasst.cli.mcp --root ROOT`` session over stdio, listing the tools and calling them."""
    tmp = tmp_path_factory.mktemp("stdio")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pathasst.cli.mcp", "--root", str(image_root)],
        env=_server_env(tmp),
        cwd=str(tmp),  # no stray .env is read
    )
    stray: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            stray.append(message)

    calls = {
        "nuclei": ("nuclei_segmentation", {"image": IHC}),
        "outside": ("nuclei_segmentation", {"image": "../outside/secret.png"}),
        "invalid": ("nuclei_segmentation", {"image": IHC, "min_area_px": 0, "colour": "blue"}),
        "qc": ("tissue_qc", {"image": IHC}),
    }

    async def go(errlog) -> tuple[dict[str, Any], dict[str, CallToolResult]]:
        async with Client(stdio_client(params, errlog=errlog), message_handler=on_message) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            return tools, {key: await client.call_tool(name, args) for key, (name, args) in calls.items()}

    with open(tmp / "stderr.txt", "w+", encoding="utf-8") as errlog:
        tools, results = anyio.run(go, errlog)
    return StdioRun(tools, results, stray, (tmp / "stderr.txt").read_text(encoding="utf-8"))


def test_stdio_lists_the_nine_tools(stdio_run):
    assert set(stdio_run.tools) == TOOL_NAMES
    schema = stdio_run.tools["nuclei_segmentation"].input_schema
    assert schema["properties"]["min_area_px"]["anyOf"][0]["minimum"] == 1
    assert schema["properties"]["assumed_mpp"]["default"] == 0.25


def test_stdio_nuclei_segmentation_returns_structured_measurements(stdio_run):
    result = stdio_run.calls["nuclei"]
    assert not result.is_error, _text(result)
    content = result.structured_content
    assert content["status"] == "ok" and content["image"] == IHC
    out = content["output"]
    assert out["count"] >= 10
    assert 0.05 < out["nuclear_area_fraction"] < 0.9
    assert out["mpp_assumed"] is True and out["mpp"] == 0.25
    assert content["model"]["tool"] == "nuclei_segmentation" and content["model"]["backend"] == "nuclei_net"  # on IHC too
    assert f"{out['count']} nuclei" in _text(result)  # the text content is the short summary


def test_stdio_refuses_a_path_outside_the_root(stdio_run):
    result = stdio_run.calls["outside"]
    assert result.is_error
    assert "image '../outside/secret.png' refused" in _text(result) and "outside the cases root" in _text(result)


def test_stdio_invalid_arguments_come_back_with_the_validation_message(stdio_run):
    result = stdio_run.calls["invalid"]
    assert result.is_error
    text = _text(result)
    assert "bad call to nuclei_segmentation: invalid arguments" in text
    assert "min_area_px: Input should be greater than or equal to 1" in text
    assert "colour: Extra inputs are not permitted" in text


def test_stdio_tissue_qc(stdio_run):
    result = stdio_run.calls["qc"]
    assert not result.is_error, _text(result)
    out = result.structured_content["output"]
    assert 0.9 < out["tissue_fraction"] <= 1.0
    assert out["pen_marks"] is False


def test_stdio_stdout_carries_only_the_protocol(stdio_run):
    assert stdio_run.stray == [], stdio_run.stderr
    assert "PathAsst MCP server on stdio" in stdio_run.stderr


# --- streamable HTTP subprocess ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(proc: subprocess.Popen, port: int, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"server did not listen on port {port} within {timeout} s")


def test_streamable_http_on_loopback(image_root, tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")} | _server_env(tmp_path)
    cmd = [sys.executable, "-m", "pathasst.cli.mcp", "--transport", "http", "--port", str(port)]
    cmd += ["--root", str(image_root)]
    with open(tmp_path / "stderr.txt", "w+", encoding="utf-8") as errlog:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=errlog)
        try:
            _wait_for_port(proc, port)

            async def go():
                async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                    tools = (await client.list_tools()).tools
                    return tools, await client.call_tool("tissue_qc", {"image": IHC})

            tools, result = _run(go)
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl+C: a clean stop
            code = proc.wait(timeout=20)
        errlog.seek(0)
        stderr = errlog.read()
    assert {t.name for t in tools} == TOOL_NAMES
    assert not result.is_error, _text(result)
    assert 0.9 < result.structured_content["output"]["tissue_fraction"] <= 1.0
    assert f"http://127.0.0.1:{port}/mcp" in stderr
    assert code == 0, stderr


def test_streamable_http_with_a_token_refuses_requests_without_it(image_root, tmp_path):
    """PATHASST_MCP_TOKEN: a request without the bearer token, or with another, gets 401 naming the setting and
    reaches no tool; the MCP client that sends it lists and calls the tools."""
    import httpx2
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")} | _server_env(tmp_path)
    env["PATHASST_MCP_TOKEN"] = "s3cret-token"
    cmd = [sys.executable, "-m", "pathasst.cli.mcp", "--transport", "http", "--port", str(port)]
    cmd += ["--root", str(image_root)]
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    with open(tmp_path / "stderr.txt", "w+", encoding="utf-8") as errlog:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=errlog)
        try:
            _wait_for_port(proc, port)
            refused = [httpx2.post(url, json=hello, headers=h, timeout=10) for h in
                       ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"})]

            async def go(token):
                client_http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
                async with Client(streamable_http_client(url, http_client=client_http)) as client:
                    tools = (await client.list_tools()).tools
                    return tools, await client.call_tool("tissue_qc", {"image": IHC})

            tools, result = _run(lambda: go("s3cret-token"))
            with pytest.raises(Exception):  # noqa: B017 - the client surfaces the 401 as its own error type
                _run(lambda: go("wrong"))
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=20)
        errlog.seek(0)
        stderr = errlog.read()
    for r in refused:
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "PATHASST_MCP_TOKEN" in r.json()["detail"]
    assert {t.name for t in tools} == TOOL_NAMES
    assert not result.is_error and 0.9 < result.structured_content["output"]["tissue_fraction"] <= 1.0
    assert "(bearer token required)" in stderr and "s3cret-token" not in stderr
    assert code == 0, stderr


def test_bearer_token_middleware_refuses_an_empty_token_and_passes_lifespan():
    from pathasst.agent.mcp_server import BearerTokenAuth

    with pytest.raises(ValueError, match="must not be empty"):
        BearerTokenAuth(object(), "")
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    _run(lambda: BearerTokenAuth(app, "t")({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


# --- shared data -------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_held_out_consep_tile_and_slide_over_mcp(settings, shared_data):
    """The MCP result is the tool's own result (same count), near the ground truth, and slides are read."""
    from pathasst.core.cases import single_image_case
    from pathasst.core.readers import CaseImageResolver
    from pathasst.tools.base import call_tool

    tile = "consep_train/images/train_18_005.jpg"  # source image 18: never used for training or tuning
    slide = "slides/cmu-1-small-region.svs"

    async def go():
        async with Client(build_server(settings, shared_data)) as client:
            return (
                await client.call_tool("nuclei_segmentation", {"image": tile}),
                await client.call_tool("tissue_qc", {"image": slide}),
            )

    nuclei, qc = _run(go)
    assert not nuclei.is_error and not qc.is_error, (_text(nuclei), _text(qc))
    case = single_image_case(shared_data / tile, settings=settings)
    tool = default_registry(settings).get("nuclei_segmentation")
    direct, _ = call_tool(tool, {"image": case.images[0].name}, CaseImageResolver(case, settings))
    count = nuclei.structured_content["output"]["count"]
    assert count == direct.output["count"]
    truth = len(np.unique(np.asarray(Image.open(shared_data / "consep_train/instances/train_18_005.png")))) - 1
    assert 0.5 * truth <= count <= 1.5 * truth, (count, truth)
    assert qc.structured_content["image"] == slide
    assert qc.structured_content["image_mpp"] is not None  # the slide's own resolution (0.499 um/px, downsampled)
    assert 0.05 < qc.structured_content["output"]["tissue_fraction"] < 0.95
