"""End to end in a real browser: ``pathasst ui`` on a free loopback port, driven by Debian's Chromium (headless,
through playwright): sign in, open a case, ask a question, see the tool-call step and the overlay, edit, sign off,
export. Screenshots go to ``test-artifacts/ui/``; with ``PATHASST_UPDATE_SCREENSHOT=1`` the README screenshot
``docs/ui-screenshot.png`` is refreshed from this run."""

from __future__ import annotations

import json
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
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (/usr/bin/chromium)")
sync_api = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
README_SHOT = REPO / "docs" / "ui-screenshot.png"
USER, PASSWORD = "pathologist", "correct horse battery"
LOCKOUT_S = 8
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
        PATHASST_UI_MAX_LOGIN_ATTEMPTS="3",
        PATHASST_UI_LOCKOUT_S=str(LOCKOUT_S),
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


def _ask(page, question: str, step: str) -> None:
    chat = _one(page.get_by_placeholder("Ask about this case…"))
    chat.fill(question)
    chat.press("Enter")
    page.get_by_text(re.compile(step)).first.wait_for()
    _idle(page)


def _sign_in(page, password: str = PASSWORD) -> None:
    page.get_by_role("heading", name="Sign in").wait_for()
    page.get_by_role("textbox", name="User").fill(USER)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def _pdf_text(data: bytes) -> str:
    import io

    from pypdf import PdfReader

    return " ".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)


def test_three_questions_then_the_first_finding_is_in_the_signed_pdf(server: tuple[str, Path]) -> None:
    expect = sync_api.expect
    url, base = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
            requested: list[str] = []
            ctx.on("request", lambda r: requested.append(r.url))
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)

            # login protects the app
            page.goto(url)
            _sign_in(page)
            # case list
            page.get_by_role("heading", name="Cases").wait_for()
            expect(page.get_by_text("ki67_slide", exact=True)).to_be_visible()
            expect(page.get_by_text("5 of 5 cases · 5 new")).to_be_visible()
            _idle(page)
            _shot(page, "01-case-list")
            _button(page, "open_ki67_patch").click()

            # three questions; each tool call appears with its duration and summary
            page.get_by_role("heading", name="Case ki67_patch").wait_for()
            _idle(page)
            _shot(page, "02-case-view")
            _ask(page, "What is the Ki-67 proliferation index?", r"ihc_quantification · ihc\.png · ok · [\d.]+ s — ")
            viewer = page.frame_locator('iframe[src*="slide_viewer"]')
            expect(viewer.locator("#legend .layer")).to_contain_text("Q1 · ihc_quantification")  # its layer is drawn
            viewer.get_by_role("button", name=re.compile(r"^Layers")).click()  # the legend, open for the screenshot
            page.wait_for_timeout(500)
            readme_src = _shot(page, "03-analysis")
            viewer.get_by_role("button", name=re.compile(r"^Layers")).click()
            _ask(page, "Is the image quality adequate?", r"tissue_qc · ihc\.png · ok · [\d.]+ s — ")
            _ask(page, "Measure the area I marked: point 200, 200.", r"region_segmentation · ihc\.png · ok · [\d.]+ s — ")
            expect(page.get_by_text(re.compile(r"^Q3\.")).first).to_be_attached()  # the third turn is recorded
            report = json.loads((base / "out" / "ki67_patch" / "report.json").read_text(encoding="utf-8"))
            first = next(r["id"] for r in report["trace"] if r["tool"] == "ihc_quantification")
            assert [r["tool"] for r in report["trace"]] == ["ihc_quantification", "tissue_qc", "region_segmentation"]

            # the Report tab lists every question's findings, each with a keep box
            _one(page.get_by_role("tab", name="Report")).click()
            expect(page.get_by_text("Draft: not signed off.")).to_be_visible()
            keep = page.get_by_role("checkbox", name=re.compile(r"\[call_[0-9a-f]+\]$"))
            expect(keep).to_have_count(3)  # one per finding of the three questions, all kept
            expect(page.get_by_role("checkbox", name=re.compile(rf"^ihc_quantification \(ihc\.png\).*\[{first}\]$"))).to_be_checked()
            _shot(page, "04-findings")

            # edit (kept apart from the AI draft), then sign off: the password is asked again
            _one(page.get_by_role("tab", name="Pathologist's version")).click()
            area = _one(page.get_by_label("Report text (Markdown)"))
            text = area.input_value()
            assert "# PathAsst report: case ki67_patch" in text and f"[{first}] (Q1)" in text
            area.fill(text.replace("## Findings", "## Findings\n\nReviewed in the browser: agree.", 1))
            area.press("Control+Enter")
            _idle(page)
            _button(page, "save_edits").click()
            expect(page.get_by_text(re.compile(rf"Edited by {USER} at \d{{4}}-\d\d-\d\d \d\d:\d\d UTC"))).to_be_visible()
            _one(page.locator(".st-key-confirm_sign label")).click()
            _idle(page)
            _one(page.get_by_label("Password (asked again to sign)")).fill("not it")
            _button(page, "sign_off").click()
            expect(page.get_by_text("Not signed: Wrong user or password.")).to_be_visible()
            _one(page.get_by_label("Password (asked again to sign)")).fill(PASSWORD)
            _button(page, "sign_off").click()
            expect(page.get_by_text(re.compile(rf"Signed off by {USER} at"))).to_be_visible()
            _idle(page)
            _shot(page, "05-signed-off")
            # exports are links to the app's case server, answered only with the session cookie
            downloads = {}
            for fmt in ("md", "pdf", "geojson", "fhir"):
                href = _one(page.locator(f".st-key-export_{fmt} a")).get_attribute("href")
                answer = ctx.request.get(href)
                assert answer.status == 200 and "attachment" in answer.headers["content-disposition"], fmt
                downloads[fmt] = answer.body()
                anonymous = p.request.new_context()
                assert anonymous.get(href).status == 401, fmt  # no cookie, no export
                anonymous.dispose()
            md = downloads["md"].decode("utf-8")
            assert "Reviewed in the browser: agree." in md and f"Signed off by {USER} at" in md and first in md
            pdf = _pdf_text(downloads["pdf"])
            assert first in pdf and "What is the Ki-67 proliferation index?" in pdf and f"Signed off by {USER}" in pdf
            assert first in downloads["fhir"].decode() and first in downloads["geojson"].decode()
            # the viewer's tiles come from the same server, behind the same session
            tiles = [u for u in requested if "/tile?" in u]
            assert tiles, "the tiled viewer loaded no tile"
            anonymous = p.request.new_context()
            assert anonymous.get(tiles[0]).status == 401 and ctx.request.get(tiles[0]).status == 200
            anonymous.dispose()
            # ... nor the static view's image (inline, over the signed-in session)
            page.get_by_text("Static view (server-rendered)").click()
            expect(page.get_by_text(re.compile(r"ihc\.png \(512×512\) · window x 0–512"))).to_be_visible()
            expect(page.locator('img[alt="ihc.png"][src^="data:image/jpeg;base64,"]')).to_have_count(1)
            # nothing of the case went through Streamlit's /media, which has no session check
            assert not [u for u in requested if urlsplit(u).path.startswith("/media/")]

            # the case list shows the new status
            page.get_by_role("link", name="Cases").click()
            page.get_by_role("heading", name="Cases").wait_for()
            expect(page.get_by_text(f"signed by {USER} at", exact=False)).to_be_visible()
            _shot(page, "06-case-list-after")
        finally:
            browser.close()
    review = json.loads((base / "out" / "ki67_patch" / "review.json").read_text(encoding="utf-8"))
    assert review["sign_off"]["signed_text"] == "edits"
    if os.environ.get("PATHASST_UPDATE_SCREENSHOT") == "1":
        _readme_screenshot(readme_src)


def _cookies_once_set(page: sync_api.Page, name: str, timeout_s: float = 30.0) -> dict[str, dict]:
    """The page's cookies once ``name`` is among them (the app writes it from a frame, after the page renders)."""
    deadline = time.monotonic() + timeout_s
    while True:
        cookies = {c["name"]: c for c in page.context.cookies()}
        if name in cookies or time.monotonic() > deadline:
            return cookies
        page.wait_for_timeout(200)


def test_sign_in_survives_reload_keeps_deep_links_and_locks_out_across_contexts(server: tuple[str, Path]) -> None:
    expect = sync_api.expect
    url, base = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            expect.set_options(timeout=60_000)
            # a deep link asks for a sign-in, then opens where it pointed
            a = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            a.goto(f"{url}/case?case=qc_blurred")
            _sign_in(a)
            a.get_by_role("heading", name="Case qc_blurred").wait_for()
            assert "case=qc_blurred" in a.url
            cookies = _cookies_once_set(a, "pathasst_session")
            assert cookies["pathasst_session"]["sameSite"] == "Strict"
            # a reload keeps the session (server side, from the cookie) and the page
            a.reload()
            a.get_by_role("heading", name="Case qc_blurred").wait_for()
            expect(a.get_by_role("heading", name="Sign in")).to_have_count(0)
            # a forged cookie is not a session
            b_ctx = browser.new_context()
            b_ctx.add_cookies([{**cookies["pathasst_session"], "value": "forged"}])
            b = b_ctx.new_page()
            b.goto(f"{url}/case?case=qc_blurred")
            b.get_by_role("heading", name="Sign in").wait_for()
            # failures in one browser lock the user out in another (per user and address, not per session)
            for _ in range(3):
                _sign_in(b, "wrong")
                expect(b.get_by_text(re.compile("Wrong user or password|Too many failed attempts")).first).to_be_visible()
                _idle(b)
            c = browser.new_context().new_page()
            c.goto(url)
            _sign_in(c)
            expect(c.get_by_text(re.compile(r"Too many failed attempts: try again in \d+ s"))).to_be_visible()
            # signing out ends the session for every tab of that browser
            a.get_by_role("button", name="Sign out").click()
            a.get_by_role("heading", name="Sign in").wait_for()
            a.reload()
            a.get_by_role("heading", name="Sign in").wait_for()
        finally:
            browser.close()
    time.sleep(LOCKOUT_S)  # let the lockout pass for tests after this one
