"""Hostile input against the MCP server and ``pathasst run``: each attempt, its typed outcome, and nothing from outside
the root (file contents, absolute paths, the process id) in any reply or output.

Read it as a list. MCP (the SDK's real client, in process): traversal strings, absolute and ``/proc`` paths, NUL
bytes, URL-encoded traversal, symlinked files and folders, a symlink loop, a 10,000-character path, a decompression
bomb, a huge valid image, a call past its time limit, a cancelled call, concurrent calls over the cap. Serving: a
non-loopback bind without a token, ``--root /``, wrong Host and Origin headers, malformed JSON-RPC, SIGTERM during a
call. Batch runs: the same folder tricks in case folders. Memory: a 9400 x 9400 PNG stays under 2 GB peak RSS.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from pathasst.agent.mcp_server import build_server
from pathasst.core.cases import EmptyCaseError, load_case
from pathasst.core.deadline import check_deadline
from pathasst.core.errors import CallTimeoutError
from pathasst.core.imaging import ImageData
from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult
from pathasst.tools.registry import ToolRegistry

SECRET = "TOP-SECRET-LINE-7f3a"
IHC = "case1/ihc.png"


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/case1: a real IHC crop, links to a file and a folder outside ROOT, a symlink loop; OUTSIDE holds a secret."""
    from skimage import data

    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    (root / "case1").mkdir(parents=True)
    outside.mkdir()
    (root / IHC).write_bytes(_png(data.immunohistochemistry()[:256, :256]))
    (outside / "secret.png").write_bytes(_png(data.immunohistochemistry()[:64, :64]))
    (outside / "secret.txt").write_text(SECRET + "\n")
    (root / "case1" / "link.png").symlink_to(outside / "secret.png")
    (root / "case1" / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "case1" / "loop.png").symlink_to(root / "case1" / "loop.png")
    # a MIRAX slide whose data folder is a link out of the root (OpenSlide would follow it)
    (outside / "mirax_data").mkdir()
    (outside / "mirax_data" / "Slidedat.ini").write_text(SECRET)
    (root / "case2").mkdir()
    (root / "case2" / "slide.mrxs").write_bytes(b"MIRAX" + b"\0" * 64)
    (root / "case2" / "slide").symlink_to(outside / "mirax_data", target_is_directory=True)
    return root


def _leaks(text: str, root: Path) -> list[str]:
    """What a reply must never hold: outside content, the absolute location of the root or outside, the PID."""
    found = [s for s in (SECRET, str(root.parent), f"/proc/{os.getpid()}") if s in text]
    return found


def _calls(settings: Any, root: Path, calls: list[tuple[str, dict[str, Any]]], registry: ToolRegistry | None = None):
    async def go():
        async with Client(build_server(settings, root, registry)) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return anyio.run(go)


# --- paths ---------------------------------------------------------------------------------------------------------
PATH_ATTEMPTS = {
    "../outside/secret.png": "outside the cases root",
    "case1/../../outside/secret.png": "outside the cases root",
    "case1/link.png": "outside the cases root",  # a symlinked file
    "case1/linkdir/secret.png": "outside the cases root",  # a file under a symlinked folder
    "/proc/self/environ": "outside the cases root",
    "/etc/passwd": "outside the cases root",
    "case1/loop.png": "symlink loop",
    "case2/slide.mrxs": "outside the cases root",  # its data folder leaves the root
    "case1/ihc.png\x00.txt": "not a valid path",
    "..%2Foutside%2Fsecret.png": "not found under the image root",  # no URL decoding: a literal, missing name
    "x" * 10_000 + ".png": "File name too long",
}


def test_every_path_trick_is_a_typed_refusal_that_leaks_nothing(settings, hostile_root):
    results = _calls(settings, hostile_root, [("tissue_qc", {"image": p}) for p in PATH_ATTEMPTS])
    for (attempt, reason), result in zip(PATH_ATTEMPTS.items(), results):
        text = _text(result)
        assert result.is_error and result.structured_content is None, attempt[:40]
        assert reason in text, (attempt[:40], text)
        assert not _leaks(text, hostile_root), (attempt[:40], text)
        assert len(text) < 600, (attempt[:40], len(text))  # a huge argument is not echoed back


def test_decoder_messages_name_the_file_not_its_location(settings, hostile_root):
    (hostile_root / "case1" / "noise.png").write_bytes(b"not an image at all" * 10)
    (hostile_root / "case1" / "cut.png").write_bytes((hostile_root / IHC).read_bytes()[:400])
    results = _calls(settings, hostile_root, [("tissue_qc", {"image": f"case1/{n}"}) for n in ("noise.png", "cut.png")])
    for result, reason in zip(results, ("not a readable image", "corrupt or truncated image")):
        assert result.is_error and reason in _text(result), _text(result)
        assert not _leaks(_text(result), hostile_root), _text(result)


def test_absolute_path_inside_the_root_is_served(settings, hostile_root):
    (ok,) = _calls(settings, hostile_root, [("tissue_qc", {"image": str(hostile_root / IHC)})])
    assert not ok.is_error and ok.structured_content["image"] == IHC


# --- images --------------------------------------------------------------------------------------------------------
def test_a_png_header_claiming_10_gigapixels_is_refused_before_decoding(settings, hostile_root):
    from test_cases import _bomb_png

    _bomb_png(hostile_root / "case1" / "bomb.png", 100_000, 100_000)
    t0 = time.perf_counter()
    (result,) = _calls(settings, hostile_root, [("tissue_qc", {"image": "case1/bomb.png"})])
    assert result.is_error and "exceeds the limit" in _text(result) and "PATHASST_MAX_IMAGE_PIXELS" in _text(result)
    assert not _leaks(_text(result), hostile_root)
    assert time.perf_counter() - t0 < 10


def test_a_huge_valid_image_is_analysed_within_the_pixel_budget(settings, hostile_root):
    """A plain image over the budget is read the way slides are: thumbnail-level tools get it downsampled, tools
    with a working resolution the window with the most tissue; the note says which."""
    from skimage import data

    tissue = np.full((3000, 3000, 3), 245, np.uint8)
    tissue[1800:2312, 300:812] = data.immunohistochemistry()  # tissue in one corner only
    (hostile_root / "case1" / "big.png").write_bytes(_png(tissue))
    settings.max_region_pixels = 512 * 512
    qc, nuclei = _calls(settings, hostile_root, [("tissue_qc", {"image": "case1/big.png"}),
                                                 ("nuclei_segmentation", {"image": "case1/big.png",
                                                                          "method": "deconvolution"})])
    assert not qc.is_error, _text(qc)
    assert any("analysed at 1/" in n for n in qc.structured_content["notes"])
    assert qc.structured_content["image_scale"] == pytest.approx(3000 / int(3000 / (3000 / 512)), rel=1e-6)
    assert not nuclei.is_error, _text(nuclei)
    note = next(n for n in nuclei.structured_content["notes"] if "window" in n)
    assert "512x512 window" in note
    x0, y0 = nuclei.structured_content["image_origin"]
    assert 300 - 512 < x0 < 812 and 1800 - 512 < y0 < 2312  # the window overlaps the tissue
    assert nuclei.structured_content["output"]["count"] > 20


def test_an_image_over_the_budget_is_not_kept_for_the_case(settings, tmp_path):
    """The resolver keeps decoded images for the case's next call only when they fit the analysis budget: a huge
    PNG is decoded per call and only the analysed window outlives it (its full pixels would hold 265 MB at 9400 px)."""
    from pathasst.core.readers import CaseImageResolver

    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "big.png").write_bytes(_png(np.full((600, 500, 3), 200, np.uint8)))
    (tmp_path / "case" / "small.png").write_bytes(_png(np.full((100, 100, 3), 200, np.uint8)))
    settings.max_region_pixels = 200 * 200
    resolver = CaseImageResolver(load_case(tmp_path / "case", None, settings), settings)
    big = resolver("big.png", None, 0.5)
    assert big.shape == (200, 200) and big.pixels.base is None  # its own copy, not a view holding the whole image
    assert resolver("small.png", None, 0.5).shape == (100, 100)
    assert set(resolver._patches) == {"small.png"}


# --- time, cancellation, concurrency ---------------------------------------------------------------------------------
class _Slow(PathologyTool):
    """Works in steps for up to 30 s, checking the call's deadline between steps like the tiled tools do."""

    name: ClassVar[str] = "slow_tool"
    description: ClassVar[str] = "A test tool that works in small steps for up to thirty seconds."
    running: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    stopped: ClassVar[list[tuple[float, str]]] = []
    guard: ClassVar[threading.Lock] = threading.Lock()

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        cls = type(self)
        with cls.guard:
            cls.running += 1
            cls.peak = max(cls.peak, cls.running)
        try:
            for _ in range(600):
                check_deadline()
                time.sleep(0.05)
        except CallTimeoutError as exc:
            cls.stopped.append((time.monotonic(), str(exc)))
            raise
        finally:
            with cls.guard:
                cls.running -= 1
        return ToolResult(output=ToolOutput(message="done"))


class _Slow2(_Slow):
    name: ClassVar[str] = "slow_tool_2"


def _slow_registry(settings: Any) -> ToolRegistry:
    _Slow.running, _Slow.peak, _Slow.stopped = 0, 0, []
    reg = ToolRegistry(settings)
    reg.register(_Slow)
    reg.register(_Slow2)
    return reg


def test_a_call_past_its_time_limit_stops_with_the_reason(settings, hostile_root):
    settings.call_timeout_s = 1.0
    t0 = time.monotonic()
    (result,) = _calls(settings, hostile_root, [("slow_tool", {"image": IHC})], _slow_registry(settings))
    assert result.is_error and "ran past its time limit (PATHASST_CALL_TIMEOUT_S)" in _text(result)
    assert time.monotonic() - t0 < 5


def test_a_cancelled_call_stops_within_five_seconds(settings, hostile_root):
    settings.call_timeout_s = 60.0
    registry = _slow_registry(settings)

    async def go():
        async with Client(build_server(settings, hostile_root, registry)) as client:
            with anyio.move_on_after(1.0):
                await client.call_tool("slow_tool", {"image": IHC})
            cancelled_at = time.monotonic()
            while not _Slow.stopped and time.monotonic() - cancelled_at < 10:
                await anyio.sleep(0.05)
            return cancelled_at

    cancelled_at = anyio.run(go)
    assert _Slow.stopped, "the tool kept running after the client cancelled"
    stopped_at, reason = _Slow.stopped[0]
    assert stopped_at - cancelled_at < 5 and "cancelled" in reason


def test_concurrent_calls_never_exceed_the_cap(settings, hostile_root):
    # 4 s: the first call must reach the tool (image resolved, arguments checked) before its limit even on a busy CI
    # machine (with 1.5 s one run had every call time out before the tool started: peak 0)
    settings.call_timeout_s, settings.max_concurrent_calls = 4.0, 1
    registry = _slow_registry(settings)

    async def go():
        results: list[Any] = []
        async with Client(build_server(settings, hostile_root, registry)) as client:
            async def one(name: str) -> None:
                results.append(await client.call_tool(name, {"image": IHC}))

            async with anyio.create_task_group() as tg:
                for name in ("slow_tool", "slow_tool_2", "slow_tool"):
                    tg.start_soon(one, name)
        return results

    results = anyio.run(go)
    assert _Slow.peak == 1
    texts = [_text(r) for r in results]
    assert all(r.is_error for r in results)
    assert all("time limit" in t or "server is busy" in t for t in texts), texts


# --- serving -------------------------------------------------------------------------------------------------------
def _cli(args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")}
    base |= {"HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "PATHASST_CACHE_DIR": str(tmp / "cache"),
             "PATHASST_CHROMA_PATH": str(tmp / "chroma"), **env}
    return subprocess.run([sys.executable, "-m", "pathasst.cli.mcp", *args], env=base, cwd=tmp,
                          capture_output=True, text=True, timeout=120)


def test_a_non_loopback_bind_without_a_token_is_refused(hostile_root, tmp_path):
    for host in ("0.0.0.0", "192.0.2.10"):
        done = _cli(["--transport", "http", "--host", host, "--root", str(hostile_root)], tmp_path)
        assert done.returncode == 2 and "refusing to serve on" in done.stderr and "--insecure-bind" in done.stderr


@pytest.mark.parametrize("root", ["/", "/etc", "/proc/self"])
def test_a_system_folder_as_root_is_refused(root, tmp_path):
    done = _cli(["--root", root], tmp_path)
    assert done.returncode == 2 and "is a system folder" in done.stderr


def test_host_and_origin_checks_cover_every_loopback_address_and_the_allowed_hosts():
    from pathasst.agent.mcp_server import transport_security

    sec = transport_security("127.0.0.2", ["pathology.lab"])
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.2:*", "pathology.lab:*"} <= set(sec.allowed_hosts)
    assert "http://pathology.lab:*" in sec.allowed_origins and sec.enable_dns_rebinding_protection
    assert not any("evil" in h for h in sec.allowed_hosts)
    wildcard = transport_security("0.0.0.0")
    assert not any(h.startswith("0.0.0.0") for h in wildcard.allowed_hosts)


def test_http_server_refuses_foreign_host_origin_and_malformed_json_then_stops_on_sigterm(hostile_root, tmp_path):
    """``--host 127.0.0.2`` (a loopback address the SDK's own check does not know): a foreign Host gets 421, a
    foreign Origin 403, malformed JSON-RPC a JSON-RPC error; SIGTERM during a long call stops it within 5 s."""
    import socket

    import httpx2

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")}
    env = base | {"HF_HUB_OFFLINE": "1", "PATHASST_CACHE_DIR": str(tmp_path / "c"),
                  "PATHASST_CHROMA_PATH": str(tmp_path / "chroma")}
    cmd = [sys.executable, "-m", "pathasst.cli.mcp", "--transport", "http", "--host", "127.0.0.2",
           "--port", str(port), "--root", str(hostile_root)]
    url = f"http://127.0.0.2:{port}/mcp"
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    from skimage import data

    (hostile_root / "case3").mkdir(exist_ok=True)
    (hostile_root / "case3" / "large.png").write_bytes(_png(np.tile(data.immunohistochemistry(), (4, 4, 1))))
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.2", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        evil_host = httpx2.post(url, json=hello, headers={**headers, "Host": "evil.example"}, timeout=10)
        evil_origin = httpx2.post(url, json=hello, headers={**headers, "Origin": "http://evil.example"}, timeout=10)
        malformed = httpx2.post(url, content=b'{"jsonrpc": "2.0", "id": 1, "method":', headers=headers, timeout=10)
        assert evil_host.status_code == 421 and evil_origin.status_code == 403
        assert malformed.status_code in (400, 422) and "error" in malformed.text.lower()
        assert proc.poll() is None  # still serving

        async def long_call() -> None:  # the nuclei network over a 2048 px region: minutes of work
            async with Client(url) as client:
                await client.call_tool("nuclei_segmentation", {"image": "case3/large.png"})

        caller = threading.Thread(target=lambda: _swallow(lambda: anyio.run(long_call)), daemon=True)
        caller.start()
        time.sleep(4.0)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(timeout=5)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _swallow(fn: Any) -> None:
    try:
        fn()
    except BaseException:  # noqa: BLE001 - the server went away under the client, as intended
        pass


# --- batch runs ----------------------------------------------------------------------------------------------------
def test_case_folder_tricks_are_typed_problems_without_outside_paths(settings, hostile_root):
    case = load_case(hostile_root / "case1", hostile_root, settings)
    problems = {p.name: p for p in case.problems}
    assert problems["link.png"].code == "path_escape"
    assert problems["loop.png"].code == "unreadable_path" and "symlink loop" in problems["loop.png"].message
    for p in case.problems:
        assert not _leaks(p.message, hostile_root) and str(hostile_root) not in p.message, p.message
    assert "ihc.png" in [i.name for i in case.images]
    with pytest.raises(EmptyCaseError) as info:  # the only slide of case2 is refused: the case has no image left
        load_case(hostile_root / "case2", hostile_root, settings)
    assert "outside the cases root" in str(info.value) and SECRET not in str(info.value)


def test_pathasst_run_on_hostile_cases_finishes_and_writes_nothing_from_outside(settings, hostile_root, tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")}
    env |= {"HF_HUB_OFFLINE": "1", "PATHASST_CACHE_DIR": str(tmp_path / "c"), "PATHASST_SIMILAR_K": "0",
            "PATHASST_CHROMA_PATH": str(tmp_path / "chroma"), "PATHASST_PLANNER": "rules"}
    done = subprocess.run([sys.executable, "-c", "from pathasst.cli.main import main; main()", "run",
                           str(hostile_root), "--out", str(out), "--question", "Assess tissue quality."],
                          env=env, capture_output=True, text=True, timeout=600)
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix in
                      (".md", ".json", ".csv", ".jsonl", ".log", ".txt"))
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert SECRET not in written + done.stdout + done.stderr
    assert str(hostile_root.parent / "outside") not in written + done.stdout + done.stderr
    assert "symlink loop" in written


# --- memory --------------------------------------------------------------------------------------------------------
def test_a_9400_pixel_square_png_stays_under_2_gb(tmp_path):
    """The issue's example: a valid 9400 x 9400 PNG of a few hundred KB, analysed by the network tool
    ``tumor_segmentation`` (dense map over a 4096 px window and its heatmap: 2.4 GB before maps were stitched in place
    and overlays drawn in bands; ``tissue_qc``, the issue's own example, needs 0.9 GB) over MCP-equivalent reading
    (the case resolver) in a fresh process: peak RSS under 2 GB (the process's own high-water mark, VmHWM: ru_maxrss
    would carry over the size of the forked test process across exec). Every tool: ``bench/bench_call_memory.py``."""
    img = np.full((9400, 9400, 3), 240, np.uint8)
    img[2000:7000, 2000:7000] = (180, 90, 150)
    (tmp_path / "case").mkdir()
    Image.fromarray(img).save(tmp_path / "case" / "huge.png", optimize=False, compress_level=9)
    del img
    script = (
        "import sys\n"
        "from pathasst.core.settings import Settings\n"
        "from pathasst.core.cases import EmptyCaseError, load_case\n"
        "from pathasst.core.readers import CaseImageResolver\n"
        "from pathasst.tools.base import call_tool\n"
        "from pathasst.tools.registry import default_registry\n"
        f"s = Settings(_env_file=None, cache_dir={str(tmp_path / 'c')!r}, chroma_path={str(tmp_path / 'ch')!r})\n"
        f"case = load_case({str(tmp_path / 'case')!r}, None, s)\n"
        "resolver, reg = CaseImageResolver(case, s), default_registry(s)\n"
        "recs = [call_tool(reg.get(t), {'image': 'huge.png'}, resolver)[0] for t in ('tumor_segmentation',)]\n"
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "print('+'.join(r.status for r in recs), hwm.split()[1])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHASST_")} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    status, peak_kb = done.stdout.split()[-2:]
    assert status == "ok"
    assert int(peak_kb) < 2 * 1024**2, f"peak RSS {int(peak_kb) / 1024:.0f} MB"


# --- the review app ------------------------------------------------------------------------------------------------
def test_review_app_case_list_never_reads_case_yaml_from_outside(settings, tmp_path):
    """A case folder that is a link out of the root, and a case.yaml that is one: listed with a problem, unread."""
    from pathasst.ui.config import UISettings
    from pathasst.ui.facade import Facade

    root, outside = tmp_path / "cases", tmp_path / "elsewhere"
    (root / "good").mkdir(parents=True)
    (outside / "case").mkdir(parents=True)
    (outside / "case" / "case.yaml").write_text(f"stain: {SECRET}\n")
    (outside / "case" / "x.png").write_bytes(b"")
    (root / "good" / "case.yaml").write_text("stain: H&E\n")
    (root / "linked_case").symlink_to(outside / "case", target_is_directory=True)
    (root / "linked_yaml").mkdir()
    (root / "linked_yaml" / "case.yaml").symlink_to(outside / "case" / "case.yaml")
    settings.cases_root = root
    rows = {r.id: r for r in Facade(settings, UISettings(_env_file=None)).list_cases()}
    assert rows["good"].stain == "H&E" and rows["good"].problem in (None, "no image files")
    for name in ("linked_case", "linked_yaml"):
        assert rows[name].stain is None and "outside" in (rows[name].problem or ""), rows[name]
        assert SECRET not in rows[name].model_dump_json() and str(outside) not in rows[name].model_dump_json()


# --- every place the product opens a file ----------------------------------------------------------------------------
#: modules that open files, and where their paths come from. Case input (images, slides, case.yaml, case texts) is
#: opened only by the first group, each path having passed ``ensure_inside`` (``load_case``, ``RootImageResolver``,
#: ``Facade.case_dir``); the rest open what the operator configured (weights, library, output folder) or the
#: product's own package data. A new module that opens files must be added here, with the origin of its paths.
FILE_OPENERS = {
    # case input, contained
    "core/cases.py": "case.yaml and slide probes of paths checked by ensure_inside / ensure_companions_inside",
    "core/readers.py": "images and slides listed by load_case or located by RootImageResolver",
    "memory/ingest.py": "report/caption texts of a loaded case (Case.root, symlinks skipped)",
    "ui/facade.py": "case.yaml via read_case_meta; reports, GeoJSON and failure records in the output folder",
    "ui/findings.py": "OUT/CASE/findings/CALL_ID.{png,geojson} (call ids checked against call_[A-Za-z0-9_-]); "
                      "a batch report's overlays via ensure_inside the case folder",
    "ui/case_server.py": "images of load_case (via Facade.case_image) and overlays of Facade.layers, ensure_inside "
                         "the case's output folder",
    "ui/widgets.py": "similar-case thumbnails (Facade.similar_cases keeps only existing image files) and arrays",
    # operator-configured files and outputs
    "agent/outputs.py": "writes reports in the output folder",
    "core/files.py": "rewrites files its callers name (outputs, reviews, caption and training-data files)",
    "agent/runner.py": "reads its own reports and failure records in the output folder",
    "ui/catalogue.py": "model cards of the package; reports in the output folder",
    "ui/review.py": "review files in the output folder",
    "ui/viewer.py": "overlays the product rendered into the output folder",
    "tools/geojson_read.py": "package schema; GeoJSON the product wrote",
    "core/weights.py": "shipped or configured weights files (every checkpoint is read here)",
    "tools/nuclei_classical.py": "the shipped or a configured pixel-classifier file",
    "tools/backends/nuclei_net.py": "shipped or configured weights",
    "tools/backends/runtime.py": "shipped or configured weights",
    "tools/backends/sam.py": "configured weights",
    "tools/backends/yolo.py": "configured weights",
    "memory/store.py": "the configured case library",
    "memory/migrate.py": "the configured case library",
    "planning/hybrid.py": "the package's planner examples",
    "agent/demo.py": "writes the demo cases it creates",
    # evaluation commands: datasets the operator names on the command line
    "planning/planner_eval.py": "the package's planner question sets",
    "memory/evaluation.py": "an operator-named evaluation set",
    "tools/datasets.py": "operator-named datasets",
    "tools/evaluate.py": "operator-named datasets",
    "tools/evaluate_ihc.py": "operator-named datasets",
    "tools/evaluate_tissue.py": "operator-named datasets",
}
_OPENS = (r"Image\.open\(|OpenSlide\(|\.read_text\(|\.read_bytes\(|[^_a-zA-Z.]open\(|TiffFile\(|np\.load\(|"
          r"torch\.load\(|imread\(|safe_load\(")


def test_every_module_that_opens_files_is_reviewed():
    import re

    package = Path(__file__).resolve().parents[1]
    found = set()
    for folder in ("core", "memory", "tools", "planning", "graphs", "agent", "ui", "cli"):
        for path in (package / folder).rglob("*.py"):
            if re.search(_OPENS, path.read_text(encoding="utf-8")):
                found.add(path.relative_to(package).as_posix())
    assert found - set(FILE_OPENERS) == set(), "review where these modules' paths come from and list them"
    assert set(FILE_OPENERS) - found == set(), "these no longer open files: drop them from the list"


@pytest.mark.data
def test_a_slide_call_is_bounded_at_the_tools_working_resolution(settings, shared_data):
    """CMU-1 is 20x (0.499 um/px); a 40x tool enlarges what it reads 2x, so the budget is applied after that: the
    window read holds at most a quarter of the budget in level-0 pixels (measured: nuclei_segmentation on the whole
    slide peaks at 3.3 GB RSS with the default budget, 4.5 GB before)."""
    from pathasst.core.cases import single_image_case
    from pathasst.core.readers import CaseImageResolver

    settings.max_region_pixels = 1_000_000
    case = single_image_case(shared_data / "slides" / "cmu-1-small-region.svs", settings=settings)
    resolver = CaseImageResolver(case, settings)
    try:
        data = resolver(case.images[0].name, None, 0.25)
        h, w = data.shape
        enlarged = h * w * (data.mpp / 0.25) ** 2
        assert enlarged <= 1_000_000 * 1.01 and data.mpp == pytest.approx(0.499, rel=0.01)
        assert any("window" in n for n in data.notes)
        from pathasst.core.regions import Region

        big = resolver(case.images[0].name, Region(x=0, y=0, width=2000, height=2000), 0.25)  # a region too big
        assert big.shape[0] * big.shape[1] * (big.mpp / 0.25) ** 2 <= 1_000_000 * 1.01
    finally:
        resolver.close()
