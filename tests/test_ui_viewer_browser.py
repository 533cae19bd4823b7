"""The tiled viewer end to end in headless Chromium: ``pathasst ui`` (no login) on the example cases; the
OpenSeadragon component loads its tiles from the case server, zooms with the wheel, shows a clicked object's
details after an analysis, sends a drawn box to ``region_segmentation``, and keeps two images in step. Also how the
page reads a drawn region (no browser needed)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from pathasst.ui.slide_viewer import region_marker
from pathasst.ui.viewer import Marker

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists() or find_spec("playwright") is None,
                                    reason="Debian chromium (/usr/bin/chromium) or playwright not installed")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui-viewer"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update"]
VIEWER = 'iframe[src*="slide_viewer"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.read().strip() == b"ok"
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``pathasst ui`` without a login on a free loopback port: (url, output folder)."""
    from pathasst.agent.demo import build_demo_cases

    base = tmp_path_factory.mktemp("viewer")
    build_demo_cases(base / "cases")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATHASST_", "STREAMLIT_"))}
    env.update(PATHASST_CHROMA_PATH=str(base / "chroma"), HF_HUB_OFFLINE="1", YOLO_OFFLINE="1",
               ANONYMIZED_TELEMETRY="False")
    exe = Path(sys.executable).with_name("pathasst")
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pathasst.cli.main"]
    cmd = [*head, "ui", "--cases", str(base / "cases"), "--out", str(base / "out"), "--port", str(port),
           "--planner", "rules"]
    log = open(ARTIFACTS / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, env=env, cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"pathasst ui exited with {proc.returncode}: {(ARTIFACTS / 'server.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("pathasst ui did not become healthy within 90 s")
            time.sleep(0.25)  # polling the health endpoint, not waiting on the page
        yield url, base / "out"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()


def _viewer(page):
    """The component's frame, once its first pane has its tiles and layers."""
    page.frame_locator(VIEWER).locator('#viewer-0[data-ready="1"]').wait_for()
    return next(f for f in page.frames if "slide_viewer" in f.url)


def _screen(page, frame, x: float, y: float, pane: int = 0) -> tuple[float, float]:
    """Page coordinates of level-0 image pixel (x, y) in the viewer's pane."""
    box = page.locator(VIEWER).bounding_box()
    at = frame.evaluate("([x, y, i]) => window.__imageToScreen(x, y, i)", [x, y, pane])
    return box["x"] + at["x"], box["y"] + at["y"]


def _zoom(frame, pane: int = 0) -> float:
    return float(frame.locator(f"#viewer-{pane}").get_attribute("data-zoom"))


def _inside(x: float, y: float, ring: list[list[float]]) -> bool:
    hit = False
    for (xi, yi), (xj, yj) in zip(ring, ring[-1:] + ring[:-1], strict=True):
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            hit = not hit
    return hit


def _central_object(features: list[dict], cx: float, cy: float) -> tuple[dict, float, float]:
    """A polygon feature near (cx, cy) whose vertex mean lies inside it, and that point."""
    best = None
    for f in features:
        ring = f["geometry"]["coordinates"][0]
        x, y = sum(p[0] for p in ring) / len(ring), sum(p[1] for p in ring) / len(ring)
        if len(ring) > 6 and _inside(x, y, ring):
            d = math.hypot(x - cx, y - cy)
            if best is None or d < best[0]:
                best = (d, f, x, y)
    assert best is not None, "no polygon with its centre inside"
    return best[1], best[2], best[3]


def test_drawn_regions_become_points_and_boxes_inside_the_image() -> None:
    assert region_marker({"kind": "point", "point": [300.4, 200]}, 512, 512) == Marker(300, 200)
    assert region_marker({"kind": "box", "box": [100, 120, 220, 260]}, 512, 512) == Marker(
        100, 120, box=(100, 120, 220, 260))
    polygon = {"kind": "polygon", "polygon": [[100, 100], [200, 110], [220, 220], [120, 600]]}
    assert region_marker(polygon, 512, 512) == Marker(100, 100, box=(100, 100, 220, 511))  # its bounding box, clipped
    for bad in ({"kind": "box", "box": [5, 5, 5, 40]}, {"kind": "box", "box": "0,0,1,1"}, {"kind": "point"},
                {"kind": "point", "point": ["x", 1]}, {"kind": "circle"}, {"kind": "polygon", "polygon": [[1, 1]]}):
        assert region_marker(bad, 512, 512) is None, bad


@needs_chromium
def test_tiled_viewer_zoom_objects_box_and_sync(app: tuple[str, Path]) -> None:
    from playwright import sync_api

    expect = sync_api.expect
    url, out = app
    t0 = time.monotonic()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            internet = []  # what the viewer's frame asks of anything but loopback
            page.on("request", lambda r: "slide_viewer" in r.frame.url
                    and not r.url.startswith(("http://127.0.0.1:", "blob:", "data:")) and internet.append(r.url))

            # tiles load; the wheel zooms
            page.goto(f"{url}/case?case=ki67_patch")
            frame = _viewer(page)
            before = _zoom(frame)
            page.mouse.move(*_screen(page, frame, 256, 256))
            for _ in range(3):  # a fixed step per wheel event (events close together count once)
                page.mouse.wheel(0, -120)
            frame.wait_for_function(f"Number(document.querySelector('#viewer-0').dataset.zoom) > {before * 1.15}")
            assert internet == []

            # an analysis adds its layer; a click on one of its objects shows the object's class and call
            chat = page.get_by_placeholder("Ask about this case…")
            chat.fill("What is the Ki-67 proliferation index?")
            chat.press("Enter")
            legend = page.frame_locator(VIEWER).locator("#legend .layer")
            expect(legend).to_contain_text("Q1 · ihc_quantification")  # the analysis is done and its layer shown
            frame = _viewer(page)
            report = json.loads((out / "ki67_patch" / "report.json").read_text(encoding="utf-8"))
            call_id = next(r["id"] for r in report["trace"] if r["tool"] == "ihc_quantification")
            features = json.loads((out / "ki67_patch" / "annotations.geojson").read_text(encoding="utf-8"))["features"]
            mine = [f for f in features if f["properties"].get("call_id") == call_id]
            centre = frame.evaluate("(() => { const v = window.__viewers[0], c = v.viewport.getCenter(true);"
                                    " const p = v.world.getItemAt(0).viewportToImageCoordinates(c);"
                                    " return [p.x, p.y]; })()")
            feature, fx, fy = _central_object(mine, *centre)
            page.mouse.click(*_screen(page, frame, fx, fy))
            popup = page.frame_locator(VIEWER).locator("#popup")
            expect(popup).to_be_visible()
            expect(popup).to_contain_text(feature["properties"]["classification"]["name"])
            expect(popup).to_contain_text(call_id)
            value = frame.evaluate("window.__lastValue")
            assert value["action"] == "object" and value["call_id"] == call_id
            page.screenshot(path=str(ARTIFACTS / "object.png"))

            # a box drawn with the box tool is measured by region_segmentation
            frame.locator('[data-tool="box"]').click()
            frame.evaluate("window.__viewers[0].viewport.goHome(true)")
            page.mouse.move(*_screen(page, frame, 100, 120))
            page.mouse.down()
            page.mouse.move(*_screen(page, frame, 220, 260), steps=8)
            page.mouse.up()
            assert frame.evaluate("window.__lastValue")["kind"] == "box"
            expect(legend.filter(has_text="region_segmentation")).to_have_count(1)
            report = json.loads((out / "ki67_patch" / "report.json").read_text(encoding="utf-8"))
            box = next(r["arguments"]["box"] for r in report["trace"] if r["tool"] == "region_segmentation")
            assert all(abs(a - b) <= 3 for a, b in zip(box, (100, 120, 220, 260), strict=True)), box
            page.screenshot(path=str(ARTIFACTS / "box.png"))

            # two images side by side follow each other
            page.goto(f"{url}/case?case=qc_blurred")
            frame = _viewer(page)
            page.frame_locator(VIEWER).locator('#viewer-1[data-ready="1"]').wait_for()
            page.mouse.move(*_screen(page, frame, 128, 128, pane=0))
            for _ in range(3):
                page.mouse.wheel(0, -120)
            frame.wait_for_function("Number(document.querySelector('#viewer-0').dataset.zoom) > 1.15")
            frame.wait_for_function("Math.abs(document.querySelector('#viewer-0').dataset.zoom"
                                    " - document.querySelector('#viewer-1').dataset.zoom) < 1e-6")
            page.screenshot(path=str(ARTIFACTS / "side-by-side.png"))
        finally:
            browser.close()
    assert time.monotonic() - t0 < 120
