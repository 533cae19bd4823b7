"""End to end in a real browser: ``pathasst ui`` on a free loopback port, driven by Debian's Chromium (headless,
through playwright): sign in, open a case, ask a question, see the tool-call step and the overlay, edit, sign off,
export. Screenshots go to ``test-artifacts/ui/``; with ``PATHASST_UPDATE_SCREENSHOT=1`` the README screenshot
``docs/ui-screenshot.png`` is refreshed from this run."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (/usr/bin/chromium)")
sync_api = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
README_SHOT = REPO / "docs" / "ui-screenshot.png"
USER, PASSWORD = "pathologist", "correct horse battery"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update"]


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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import bcrypt

    from pathasst.agent.demo import build_demo_cases

    base = tmp_path_factory.mktemp("e2e")
    build_demo_cases(base / "cases")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATHASST_", "STREAMLIT_"))}
    env.update(
        PATHASST_UI_PASSWORD_HASH=bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode(),
        PATHASST_UI_USER=USER,
        PATHASST_CHROMA_PATH=str(base / "chroma"),
        HF_HUB_OFFLINE="1", YOLO_OFFLINE="1", ANONYMIZED_TELEMETRY="False",
    )
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
        yield url, base
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


def _idle(page) -> None:
    """Wait until Streamlit has finished the current run."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")


def _one(loc):
    """``loc`` once the page shows exactly one match (a rerun briefly keeps stale copies of elements)."""
    sync_api.expect(loc).to_have_count(1)
    return loc


def _button(page, key: str):
    return _one(page.locator(f".st-key-{key} button"))


def _shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _readme_screenshot(src: Path) -> None:
    from PIL import Image

    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((1280, 1280))
        im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(README_SHOT, optimize=True)
    assert README_SHOT.stat().st_size < 300 * 1024


def test_case_list_to_signed_off_export(server: tuple[str, Path]) -> None:
    expect = sync_api.expect
    url, base = server
    t0 = time.monotonic()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)

            # login protects the app
            page.goto(url)
            page.get_by_role("heading", name="Sign in").wait_for()
            expect(page.get_by_text("ki67_patch")).to_have_count(0)
            page.get_by_role("textbox", name="User").fill(USER)
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()

            # case list
            page.get_by_role("heading", name="Cases").wait_for()
            expect(page.get_by_text("ki67_slide", exact=True)).to_be_visible()
            expect(page.get_by_text("5 of 5 cases · 5 new")).to_be_visible()
            _idle(page)
            _shot(page, "01-case-list")
            _button(page, "open_ki67_patch").click()

            # case view: ask a question; the tool call appears with its duration and summary
            page.get_by_role("heading", name="Case ki67_patch").wait_for()
            expect(page.get_by_text(re.compile(r"ihc\.png \(512×512\) · window x 0–512"))).to_be_visible()
            _idle(page)
            _shot(page, "02-case-view")
            chat = _one(page.get_by_placeholder("Ask about this case…"))
            chat.fill("What is the Ki-67 proliferation index?")
            chat.press("Enter")
            step = page.get_by_text(re.compile(r"ihc_quantification · ihc\.png · ok · [\d.]+ s — ")).first
            step.wait_for()
            expect(page.get_by_text(re.compile(r"\d+ tool call\(s\) · [\d.]+ s"))).to_be_visible()
            _idle(page)
            # the overlay of that call is listed, on, and drawn on the image
            expect(page.get_by_text(re.compile(r"^ihc_quantification \(\d+ objects"))).to_be_visible()
            expect(page.get_by_text(re.compile(r"overlay objects drawn: [1-9]\d*"))).to_be_visible()
            expect(page.get_by_text(re.compile(r"source: call_[0-9a-f]+")).first).to_be_visible()
            readme_src = _shot(page, "03-analysis")
            step.click()  # expand the step: arguments and the full output
            expect(page.get_by_text("Full output").first).to_be_visible()
            _shot(page, "03b-tool-call-expanded")

            # report: edit (kept apart from the AI draft), sign off, export
            _one(page.get_by_role("tab", name="Report")).click()
            expect(page.get_by_text("Draft: not signed off.")).to_be_visible()
            _one(page.get_by_role("tab", name="Pathologist's version")).click()
            area = _one(page.get_by_label("Report text (Markdown)"))
            text = area.input_value()
            assert "# PathAsst report: case ki67_patch" in text
            area.fill(text.replace("## Answer", "## Answer\n\nReviewed in the browser: agree with the index.", 1))
            area.press("Control+Enter")
            _idle(page)
            _button(page, "save_edits").click()
            expect(page.get_by_text(re.compile(rf"Edited by {USER} at"))).to_be_visible()
            _one(page.locator(".st-key-confirm_sign label")).click()
            _button(page, "sign_off").click()
            expect(page.get_by_text(re.compile(rf"Signed off by {USER} at"))).to_be_visible()
            _idle(page)
            _shot(page, "04-signed-off")
            with page.expect_download() as dl:
                _button(page, "export_md").click()
            md = Path(dl.value.path()).read_text(encoding="utf-8")
            assert "Reviewed in the browser: agree with the index." in md
            assert f"Signed off by {USER} at" in md
            with page.expect_download() as dl:
                _button(page, "export_pdf").click()
            assert Path(dl.value.path()).read_bytes().startswith(b"%PDF")

            # the case list shows the new status
            page.get_by_role("link", name="Cases").click()
            page.get_by_role("heading", name="Cases").wait_for()
            expect(page.get_by_text(f"signed by {USER} at", exact=False)).to_be_visible()
            _shot(page, "05-case-list-after")
        finally:
            browser.close()
    review = (base / "out" / "ki67_patch" / "review.json").read_text(encoding="utf-8")
    assert '"signed_text": "edits"' in review
    if os.environ.get("PATHASST_UPDATE_SCREENSHOT") == "1":
        _readme_screenshot(readme_src)
    assert time.monotonic() - t0 < 180
