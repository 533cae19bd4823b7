"""The tiled viewer in headless Chromium: how long the case page takes to show its image, and how long a pan or a
zoom takes until every tile of the view it settles on is loaded.

``pathasst ui`` (no login) runs on the example cases plus, when ``../shared/data`` is present, a case holding the
TCGA slide (4443 x 3567 px, two pyramid levels). Page: from navigation to the viewer's ``data-ready`` (tiles of the
first view and the overlay layers loaded), on a warm app, ``--pages`` times. Interactions: ``--moves`` wheel zooms and
drags at random places on the slide; each is timed in the page from the input event until the viewport stops and
OpenSeadragon reports the image fully loaded (``getFullyLoaded``), and split into the animation and the tiles still
missing after it. Tiles come from the browser cache when they were seen before, as in use. Prints JSON.

Run: ``.venv/bin/python bench/bench_viewer.py [--case ki67_slide] [--pages 5] [--moves 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
VIEWER = 'iframe[src*="slide_viewer"]'
SLIDE = SHARED / "slides" / "tcga-cr-7395-01a-01-ts1.svs"

#: in the viewer's frame: time the next input until the view is still and fully loaded
_ARM = """() => {
  const v = window.__viewers[0];
  const r = { t0: null, still: null, done: null };
  window.__move = r;
  const start = () => { if (r.t0 === null) r.t0 = performance.now(); };
  for (const type of ["wheel", "pointerup"]) window.addEventListener(type, start, { capture: true, once: true });
  const moving = () => {
    const vp = v.viewport;
    return Math.abs(vp.getZoom(true) - vp.getZoom(false)) > 1e-9 || !vp.getCenter(true).equals(vp.getCenter(false));
  };
  let quiet = 0;
  const poll = () => {
    if (r.t0 !== null) {
      if (moving()) { r.still = null; quiet = 0; }
      else {
        if (r.still === null) r.still = performance.now();
        quiet += 1;  // a frame after the last move, so the world has asked for the tiles of the final view
        if (quiet > 1 && v.world.getItemAt(0).getFullyLoaded()) { r.done = performance.now(); return; }
      }
    }
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(root: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATHASST_", "STREAMLIT_"))}
    env.update(PATHASST_CHROMA_PATH=str(root / "chroma"), HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    exe = Path(sys.executable).with_name("pathasst")
    cmd = [str(exe), "ui", "--cases", str(root / "cases"), "--out", str(root / "out"), "--port", str(port),
           "--planner", "rules"]
    log = open(root / "server.log", "w")  # noqa: SIM115 - lives as long as the app
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"the app did not start: {(root / 'server.log').read_text()[-2000:]}")


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return {"median_ms": round(statistics.median(values), 1), "p90_ms": round(p90, 1), "n": len(values)}


def _open(page, url: str, case: str):
    """Navigate to the case page; (seconds until the viewer is ready, the viewer's frame)."""
    t0 = time.perf_counter()
    page.goto(f"{url}/case?case={case}")
    page.frame_locator(VIEWER).locator('#viewer-0[data-ready="1"]').wait_for(timeout=120_000)
    return time.perf_counter() - t0, next(f for f in page.frames if "slide_viewer" in f.url)


def _moves(page, frame, n: int, rng: random.Random) -> list[dict[str, float]]:
    pane = frame.locator("#viewer-0").bounding_box()  # in page coordinates
    x0, y0 = pane["x"], pane["y"]
    out = []
    for i in range(n):
        frame.evaluate(_ARM)
        x = x0 + pane["width"] * rng.uniform(0.25, 0.75)
        y = y0 + pane["height"] * rng.uniform(0.25, 0.75)
        page.mouse.move(x, y)
        if i % 2 == 0:  # zoom in or out by one wheel step
            page.mouse.wheel(0, -120 if (i // 2) % 3 != 2 else 240)
        else:  # drag a third of the view
            page.mouse.down()
            page.mouse.move(x + rng.uniform(-1, 1) * pane["width"] / 3, y + rng.uniform(-1, 1) * pane["height"] / 3,
                            steps=5)
            page.mouse.up()
        frame.wait_for_function("window.__move.done !== null", timeout=30_000)
        r = frame.evaluate("window.__move")
        out.append({"kind": "zoom" if i % 2 == 0 else "pan", "total": r["done"] - r["t0"],
                    "animation": r["still"] - r["t0"], "tiles_after": r["done"] - r["still"]})
    return out


def run(case: str | None, pages: int, moves: int, seed: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from pathasst.agent.demo import build_demo_cases

    root = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    build_demo_cases(root / "cases")
    if case is None:
        case = "ki67_slide"
        if SLIDE.is_file():
            (root / "cases" / "tcga_slide").mkdir()
            shutil.copy(SLIDE, root / "cases" / "tcga_slide" / SLIDE.name)
            case = "tcga_slide"
    proc, url = _start_app(root)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            cold, _ = _open(page, url, case)  # the app's first page: imports, first script run
            ready = [_open(page, url, case)[0] * 1000 for _ in range(pages)]
            _, frame = _open(page, url, case)
            timed = _moves(page, frame, moves, random.Random(seed))
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "case": case,
        "first_page_cold_ms": round(cold * 1000, 1),
        "case_page_to_viewer_ready": _stats(ready),
        "pan_zoom_until_tiles_loaded": _stats([m["total"] for m in timed]),
        "zoom": _stats([m["total"] for m in timed if m["kind"] == "zoom"]),
        "pan": _stats([m["total"] for m in timed if m["kind"] == "pan"]),
        "of_which_animation": _stats([m["animation"] for m in timed]),
        "tiles_still_loading_after_animation": _stats([m["tiles_after"] for m in timed]),
        "targets": {"case_page_ms": 1500, "pan_zoom_ms": 300},
        "cpus": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help="case id (default: the TCGA slide when ../shared/data has it, else ki67_slide)")
    ap.add_argument("--pages", type=int, default=5, help="timed navigations to the case page")
    ap.add_argument("--moves", type=int, default=20, help="timed pan/zoom interactions")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(run(args.case, args.pages, args.moves, args.seed), indent=2))


if __name__ == "__main__":
    main()
