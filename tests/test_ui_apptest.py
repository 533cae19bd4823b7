"""The review app's pages driven with ``streamlit.testing.v1.AppTest`` on the example cases, with the rules planner
and the real tools: case list, case view, analysis, overlays, edits and sign-off, exports, login, uploads, library
and tools pages; plus the facade's path checks and the ``pathasst ui`` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "ui" / "app.py"
VIEWS = REPO / "ui" / "views"
TIMEOUT = 120


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_cases: Path) -> dict[str, Path]:
    """A private copy of the example cases, an empty output folder and the rules planner; no login."""
    for key in list(os.environ):
        if key.startswith("PATHASST_") and key != "PATHASST_SHARED_DATA":
            monkeypatch.delenv(key, raising=False)
    cases, out = tmp_path / "cases", tmp_path / "out"
    shutil.copytree(demo_cases, cases)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("PATHASST_CASES_ROOT", str(cases))
    monkeypatch.setenv("PATHASST_OUTPUT_DIR", str(out))
    monkeypatch.setenv("PATHASST_PLANNER", "rules")
    monkeypatch.setenv("PATHASST_UI_ACCURACY_FILE", "")
    monkeypatch.setenv("PATHASST_CHROMA_PATH", str(tmp_path / "chroma"))  # no library unless a test adds one
    return {"cases": cases, "out": out}


def _app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at: AppTest) -> str:
    return "\n".join(
        [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
        + [e.label for e in at.expander] + [s.value for s in at.success] + [w.value for w in at.warning]
        + [i.value for i in at.info] + [e.value for e in at.error]
    )


def _caption(at: AppTest) -> str:
    """Caption of the static view's image (window, resolution, pyramid level, overlay objects drawn)."""
    (caption,) = [c.value for c in at.caption if "overlay objects drawn" in c.value]
    return caption


def _open(at: AppTest, case_id: str) -> AppTest:
    at.button(key=f"open_{case_id}").click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [f"Case {case_id}"]
    return at


def _ask(at: AppTest, question: str) -> AppTest:
    at.chat_input(key="chat_q").set_value(question).run()
    assert not at.exception, at.exception
    return at


def _facade(env: dict[str, Path]):
    from pathasst.core.settings import Settings
    from pathasst.ui.config import UISettings
    from pathasst.ui.facade import Facade

    return Facade(Settings(_env_file=None), UISettings(_env_file=None))


# --- case list -----------------------------------------------------------------------------------
def test_case_list_status_search_and_filter(env):
    at = _app()
    text = _texts(at)
    for cid in ("ki67_patch", "ki67_slide", "qc_blurred", "broken_inputs", "empty_case"):
        assert f"**{cid}**" in text
    assert "5 of 5 cases · 5 new" in text
    assert "no image files" in text  # the empty case says why

    at.text_input(key="case_search").input("slide").run()
    ids = [b.key for b in at.button if b.key and b.key.startswith("open_")]
    assert ids == ["open_ki67_slide"]

    at.text_input(key="case_search").input("").run()
    at.multiselect(key="case_status").select("signed off").run()
    assert not [b for b in at.button if b.key and b.key.startswith("open_")]


def test_status_follows_outputs_and_sign_off(env):
    fac = _facade(env)
    fac.analyse("ki67_patch", None, "dr tester")
    fac.sign_off("ki67_patch", "dr tester")
    fac.analyse("qc_blurred", None, "dr tester")
    status = {r.id: r.status for r in fac.list_cases()}
    assert status == {
        "broken_inputs": "new", "empty_case": "new", "ki67_patch": "signed off", "qc_blurred": "analysed",
        "ki67_slide": "new",
    }
    at = _app()
    assert "signed by dr tester" in _texts(at)
    at.multiselect(key="case_status").select("analysed").run()
    assert [b.key for b in at.button if b.key and b.key.startswith("open_")] == ["open_qc_blurred"]


# --- case view -----------------------------------------------------------------------------------
def test_slide_view_reads_a_pyramid_level_and_zooms(env):
    at = _open(_app(), "ki67_slide")
    caption = _caption(at)
    assert "mosaic.tif (2048×2048)" in caption
    assert "window x 0–2048, y 0–2048" in caption
    assert "pyramid level 1" in caption  # the whole 2048 px slide in a 768 px view: never level 0
    at.select_slider(key="zoom_ki67_slide_").set_value(4.0).run()
    caption = _caption(at)
    assert "window x 768–1280, y 768–1280" in caption
    assert "pyramid level 0" in caption
    at.button(key="right_ki67_slide_").click().run()  # pan half a window to the right
    assert "window x 1024–1536" in _caption(at)


def test_unknown_case_id_from_url_is_refused(env):
    at = AppTest.from_file(str(VIEWS / "case.py"), default_timeout=TIMEOUT)
    at.query_params["case"] = "../../etc"
    at.run()
    assert any("not a case id" in e.value for e in at.error)


def test_analysis_with_rules_planner_shows_steps_findings_and_overlays(env):
    at = _open(_app(), "ki67_patch")
    _ask(at, "What is the Ki-67 proliferation index?")
    labels = [e.label for e in at.expander]
    step = next(lbl for lbl in labels if lbl.startswith("ihc_quantification · ihc.png · ok"))
    assert " s — " in step  # duration and summary are on the step itself
    text = _texts(at)
    assert "tool call(s)" in text
    report = json.loads((env["out"] / "ki67_patch" / "report.json").read_text())
    call_id = next(r["id"] for r in report["trace"] if r["tool"] == "ihc_quantification")
    assert f"(#{call_id})" in text  # findings link to their tool call
    assert f'<span id="{call_id}"></span>' in text  # ... which has that anchor
    # overlays: one toggle per tool call with something to draw, drawn on the image
    toggle = next(t for t in at.toggle if t.key == f"layer_ki67_patch_{call_id}")
    assert toggle.value is True and toggle.label.startswith("Q1 · ihc_quantification (")
    drawn = _caption(at)
    assert "overlay objects drawn: 0" not in drawn
    toggle.set_value(False).run()
    assert "overlay objects drawn: 0" in _caption(at)
    # the turn and the AI draft are stored beside the outputs
    chat = json.loads((env["out"] / "ki67_patch" / "chat.json").read_text())
    assert chat[-1]["question"] == "What is the Ki-67 proliferation index?"
    review = json.loads((env["out"] / "ki67_patch" / "review.json").read_text())
    assert call_id in review["ai_draft"]["markdown"]


def test_point_and_box_feed_region_segmentation(env):
    at = _open(_app(), "ki67_patch")
    at.number_input(key="mx_ki67_patch_").set_value(300)
    at.number_input(key="my_ki67_patch_").set_value(200)
    at.checkbox(key="show_mark_ki67_patch_").check()
    at.button(key="measure_ki67_patch_").click().run()
    assert not at.exception, at.exception
    report = json.loads((env["out"] / "ki67_patch" / "report.json").read_text())
    assert [(r["tool"], r["status"], r["arguments"].get("point")) for r in report["trace"]] == [
        ("region_segmentation", "ok", [300, 200])
    ]
    assert any(lbl.startswith("region_segmentation · ihc.png · ok") for lbl in (e.label for e in at.expander))
    assert any(t.label.startswith("Q1 · region_segmentation (") for t in at.toggle)  # its outline is an overlay

    at.radio(key="mark_kind_ki67_patch_").set_value("Box").run()
    for key, value in (("bx0", 100), ("by0", 120), ("bx1", 220), ("by1", 260)):
        at.number_input(key=f"{key}_ki67_patch_").set_value(value)
    at.button(key="measure_ki67_patch_").click().run()
    report = json.loads((env["out"] / "ki67_patch" / "report.json").read_text())
    assert [(r["tool"], r["status"], r["arguments"].get("point"), r["arguments"].get("box")) for r in report["trace"]] == [
        ("region_segmentation", "ok", [300, 200], None), ("region_segmentation", "ok", None, [100, 120, 220, 260])
    ]  # the point's finding stays beside the box's
    assert any(t.label.startswith("Q2 · region_segmentation (") for t in at.toggle)


# --- report: edits, sign-off, export ----------------------------------------------------------------
def test_edit_sign_off_and_exports(env):
    at = _open(_app(), "ki67_patch")
    _ask(at, "What is the Ki-67 proliferation index?")
    review_path = env["out"] / "ki67_patch" / "review.json"
    ai = json.loads(review_path.read_text())["ai_draft"]
    assert at.button(key="save_edits").disabled  # no reviewer name yet
    at.sidebar.text_input(key="reviewer_name").input("Dr Ana Lopez").run()
    area = next(t for t in at.text_area if t.key.startswith("edit_ki67_patch_"))
    edited = area.value.replace("## Findings", "## Findings\n\nReviewed: Ki-67 hot spot in the lower left — µm ≥ 5.", 1)
    assert edited != area.value
    area.input(edited).run()
    at.button(key="save_edits").click().run()
    state = json.loads(review_path.read_text())
    assert state["ai_draft"] == ai  # the AI draft is never overwritten
    assert state["edits"]["markdown"] == edited and state["edits"]["by"] == "Dr Ana Lopez"

    assert at.button(key="sign_off").disabled  # needs the confirmation
    at.checkbox(key="confirm_sign").check().run()
    at.button(key="sign_off").click().run()
    state = json.loads(review_path.read_text())
    assert state["sign_off"]["by"] == "Dr Ana Lopez" and state["sign_off"]["signed_text"] == "edits"
    assert state["sign_off"]["at"].endswith("+00:00")
    assert "Signed off by **Dr Ana Lopez**" in _texts(at)
    assert at.chat_input(key="chat_q").proto.disabled  # no new analysis on a signed-off case

    fac = _facade(env)
    md = fac.export("ki67_patch", "md").data.decode()
    assert "Reviewed: Ki-67 hot spot in the lower left" in md and "Signed off by Dr Ana Lopez" in md
    doc = json.loads(fac.export("ki67_patch", "json").data)
    assert doc["final_text_source"] == "edits"
    assert doc["review"]["ai_draft"]["markdown"] == ai["markdown"]
    assert doc["review"]["edits"]["markdown"] == edited
    assert doc["report"]["trace"][0]["tool"] == "ihc_quantification"
    pdf = fac.export("ki67_patch", "pdf").data
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    geo = json.loads(fac.export("ki67_patch", "geojson").data)
    assert geo["type"] == "FeatureCollection" and geo["features"]
    props = geo["features"][0]["properties"]
    assert props["tool"] == "ihc_quantification" and "classification" in props
    labels = {d.proto.label for d in at.get("download_button")}
    assert labels == {"Markdown", "JSON", "PDF", "QuPath GeoJSON", "FHIR"}


def test_reopen_keeps_the_old_sign_off_and_new_analysis_keeps_old_draft(env):
    fac = _facade(env)
    fac.analyse("ki67_patch", None, "a")
    first = fac.review("ki67_patch").ai_draft
    fac.save_edits("ki67_patch", "my text", "a")
    fac.sign_off("ki67_patch", "a")
    from pathasst.ui.facade import ReviewLockedError

    with pytest.raises(ReviewLockedError):
        fac.analyse("ki67_patch", "Is the image quality adequate?", "a")
    fac.reopen("ki67_patch", "a", "second look")
    fac.analyse("ki67_patch", "Is the image quality adequate?", "a")
    state = fac.review("ki67_patch")
    assert state.sign_off is None and state.edits is not None and state.edits_outdated
    events = [e["event"] for e in state.history]
    assert events[-3:] == ["reopen", "ai_draft_replaced", "analysis"]
    assert next(e for e in state.history if e["event"] == "ai_draft_replaced")["previous"]["markdown"] == first.markdown
    assert len(fac.chat("ki67_patch")) == 2  # the conversation survives the new output folder


def test_review_survives_a_crash_between_new_outputs_and_restore(env):
    """``write_case`` replaces OUT/CASE; a crash before the review files are put back loses nothing."""
    from pathasst.ui import review as rv

    fac = _facade(env)
    fac.analyse("ki67_patch", None, "a")
    fac.save_edits("ki67_patch", "kept text", "a")
    rv.backup(env["out"], "ki67_patch")
    for name in ("review.json", "chat.json"):  # as if the folder had just been replaced
        (env["out"] / "ki67_patch" / name).unlink()
    assert fac.review("ki67_patch").edits.markdown == "kept text"
    assert len(fac.chat("ki67_patch")) == 1
    fac.analyse("ki67_patch", "Is the image quality adequate?", "a")
    assert fac.review("ki67_patch").edits.markdown == "kept text"
    assert len(fac.chat("ki67_patch")) == 2
    assert not (env["out"] / ".pathasst" / "ui" / "ki67_patch").exists()


def test_a_batch_run_report_becomes_the_ai_draft(env):
    """Cases run with ``pathasst run`` (no review files yet) open with their report as the AI draft."""
    from pathasst.agent.engine import Engine
    from pathasst.agent.outputs import write_case
    from pathasst.core.settings import Settings

    settings = Settings(_env_file=None)
    report, artifacts = Engine(settings, planner="rules").run(
        case_dir=env["cases"] / "qc_blurred", cases_root=env["cases"]
    )
    write_case(env["out"], report, artifacts)
    at = _open(_app(), "qc_blurred")
    review = json.loads((env["out"] / "qc_blurred" / "review.json").read_text())
    assert review["ai_draft"]["markdown"] == (env["out"] / "qc_blurred" / "report.md").read_text()
    assert any(t.label.startswith("Q1 · tissue_qc (") for t in at.toggle)  # its overlays are there too
    assert "Draft: not signed off." in _texts(at)


# --- access --------------------------------------------------------------------------------------
@pytest.fixture()
def login_env(env, monkeypatch):
    import bcrypt

    monkeypatch.setenv("PATHASST_UI_PASSWORD_HASH", bcrypt.hashpw(b"s3cret pass", bcrypt.gensalt(4)).decode())
    monkeypatch.setenv("PATHASST_UI_USER", "pathologist")
    return env


def test_login_protects_every_page(login_env):
    at = _app()
    assert [s.value for s in at.subheader] == ["Sign in"]
    assert "ki67_patch" not in _texts(at)  # nothing from the case list before login
    at.text_input(key="login_user").input("pathologist")
    at.text_input(key="login_password").input("wrong")
    at.button[0].click().run()
    assert any("Wrong user or password" in e.value for e in at.error)
    assert "ki67_patch" not in _texts(at)
    at.text_input(key="login_password").input("s3cret pass")
    at.button[0].click().run()
    assert [t.value for t in at.title] == ["Cases"]
    assert "Signed in as **pathologist**" in "\n".join(c.value for c in at.sidebar.caption)
    for page in ("cases.py", "case.py", "library.py", "tools.py"):  # each page also refuses on its own
        single = AppTest.from_file(str(VIEWS / page), default_timeout=TIMEOUT)
        single.run()
        assert [s.value for s in single.subheader] == ["Sign in"], page
        assert not [t for t in single.title if t.value != "PathAsst case review"], page


def _sign_in(at: AppTest, password: str, user: str = "pathologist") -> AppTest:
    at.text_input(key="login_user").input(user)
    at.text_input(key="login_password").input(password)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def test_login_locks_out_per_user_across_sessions(login_env, monkeypatch):
    monkeypatch.setenv("PATHASST_UI_MAX_LOGIN_ATTEMPTS", "2")
    at = _app()
    for _ in range(2):
        _sign_in(at, "nope")
    _sign_in(at, "s3cret pass")  # even the right password is refused while locked
    assert any("Too many failed attempts" in e.value for e in at.error)
    assert [s.value for s in at.subheader] == ["Sign in"]
    fresh = _sign_in(_app(), "s3cret pass")  # a new browser session is locked out too
    assert any("Too many failed attempts" in e.value for e in fresh.error)


def test_sessions_expire_revoke_and_lock_per_user_and_address(tmp_path):
    from pathasst.ui.sessions import SessionStore, token_from_cookie_header

    now = [1000.0]
    store = SessionStore(tmp_path / "s.sqlite", ttl_s=60, max_attempts=2, lockout_s=30, clock=lambda: now[0])
    token = store.create("pathologist")
    assert store.user_for(token) == "pathologist" and store.user_for("forged") is None
    assert "pathologist" not in (tmp_path / "s.sqlite").read_bytes().decode("latin-1") or token not in (
        tmp_path / "s.sqlite"
    ).read_bytes().decode("latin-1")  # only the token's digest is stored
    assert token_from_cookie_header(f"a=1; pathasst_session={token}; b=2") == token
    assert token_from_cookie_header("pathasst_session=") is None and token_from_cookie_header(None) is None
    now[0] += 61
    assert store.user_for(token) is None  # expired
    t2 = store.create("pathologist")
    store.revoke(t2)
    assert store.user_for(t2) is None
    # two failures from one address lock that address for any user name, and the user from any address
    store.record_failure("alice", "10.0.0.1")
    store.record_failure("bob", "10.0.0.1")
    assert store.locked_for("carol", "10.0.0.1") == pytest.approx(30)
    assert store.locked_for("carol", "10.0.0.2") == 0
    store.record_failure("dave", "10.0.0.3")
    store.record_failure("dave", "10.0.0.4")
    assert store.locked_for("dave", "10.0.0.9") > 0 and store.locked_for("DAVE", None) > 0
    now[0] += 31
    assert store.locked_for("dave", "10.0.0.9") == 0 and store.locked_for("carol", "10.0.0.1") == 0


def test_sign_off_asks_for_the_password_again(login_env):
    fac = _facade(login_env)
    fac.analyse("qc_blurred", "Is the image quality adequate?", "pathologist")
    at = _sign_in(_app(), "s3cret pass")
    at.button(key="open_qc_blurred").click().run()
    at.checkbox(key="confirm_sign").check().run()
    at.text_input(key="signoff_password").input("wrong")
    at.button(key="sign_off").click().run()
    assert any("Not signed: Wrong user or password" in e.value for e in at.error)
    assert _facade(login_env).review("qc_blurred").sign_off is None
    at.text_input(key="signoff_password").input("s3cret pass")
    at.button(key="sign_off").click().run()
    assert _facade(login_env).review("qc_blurred").sign_off.by == "pathologist"


def test_uploads_are_checked_and_stay_in_the_cases_root(env, monkeypatch):
    from pathasst.core.cases import CaseError
    from pathasst.ui.facade import UploadError

    monkeypatch.setenv("PATHASST_UI_MAX_UPLOAD_MB", "1")
    fac = _facade(env)
    png = (env["cases"] / "ki67_patch" / "ihc.png").read_bytes()
    with pytest.raises(UploadError, match="exceeds the upload limit"):
        fac.check_upload("big.png", 2 * 1024 * 1024, png[:16])
    with pytest.raises(UploadError, match="unsupported file type"):
        fac.check_upload("x.exe", 10, b"MZ")
    with pytest.raises(UploadError, match="not a .png file"):
        fac.check_upload("fake.png", 10, b"GIF89a....")
    with pytest.raises(UploadError, match="case id"):
        fac.create_case("../escape", [("a.png", png)])
    with pytest.raises(UploadError, match="truncated|corrupt"):
        fac.create_case("bad", [("a.png", png[: len(png) // 3])])
    assert not (env["cases"] / "bad").exists()
    case = fac.create_case("uploaded_1", [("../../evil/../a b.png", png)], stain="Ki-67", organ="breast")
    assert case.root == (env["cases"] / "uploaded_1").resolve()
    assert [i.name for i in case.images] == ["a_b.png"]
    assert not list(env["cases"].glob(".upload-*"))
    for bad in ("../cases", "/etc", "ki67_patch/../..", ".pathasst", ""):
        with pytest.raises(CaseError):
            fac.case_dir(bad)
    # through the page's form
    at = _app()
    at.text_input(key="new_case_id").input("uploaded_2")
    at.text_input(key="new_stain").input("Ki-67")
    at.file_uploader(key="new_files").set_value(("slide one.png", png, "image/png"))
    at.button(key="FormSubmitter:upload-Create case").click().run()
    assert not at.exception, at.exception
    assert any("Case uploaded_2 created with 1 image(s)" in s.value for s in at.success)
    assert (env["cases"] / "uploaded_2" / "slide_one.png").read_bytes() == png
    assert "**uploaded_2**" in _texts(at)
    assert at.text_input(key="new_case_id").value == ""  # a created case clears the form
    at.text_input(key="new_case_id").input("uploaded_3")
    at.text_input(key="new_organ").input("breast")
    at.number_input(key="new_mpp").set_value(0.25)
    at.file_uploader(key="new_files").set_value(("notes.png", b"GIF89a not a png", "image/png"))
    at.button(key="FormSubmitter:upload-Create case").click().run()
    assert any("not a .png file" in e.value for e in at.error)
    assert not (env["cases"] / "uploaded_3").exists()
    # ... and an error keeps every field, so the user fixes only the file
    assert at.text_input(key="new_case_id").value == "uploaded_3" and at.text_input(key="new_organ").value == "breast"
    assert at.number_input(key="new_mpp").value == 0.25
    at.file_uploader(key="new_files").set_value(("good.png", png, "image/png"))
    at.button(key="FormSubmitter:upload-Create case").click().run()
    assert any("resolution 0.25 µm/px (given)" in s.value for s in at.success)
    assert "mpp: 0.25" in (env["cases"] / "uploaded_3" / "case.yaml").read_text()


# --- library and tools pages ----------------------------------------------------------------------
def test_library_page_degrades_without_a_store(env, monkeypatch):
    import pathasst.memory as memory

    def unreachable(settings):
        raise RuntimeError("Chroma server at 127.0.0.1:1 is not reachable")

    monkeypatch.setattr(memory, "open_library", unreachable)
    at = AppTest.from_file(str(VIEWS / "library.py"), default_timeout=TIMEOUT)
    at.run()
    assert any("case library unavailable: Chroma server at 127.0.0.1:1 is not reachable" in i.value for i in at.info)
    assert at.button(key="lib_add").disabled


def test_library_page_adds_cases_with_progress(env, monkeypatch):
    import pathasst.memory as memory

    added: list[str] = []

    class FakeLibrary:
        def add_case(self, case):
            added.append(case.id)

        def stats(self):
            return {"cases": len(added), "image_embedder": "hed-texture"}

    monkeypatch.setattr(memory, "open_library", lambda settings: FakeLibrary(), raising=False)
    at = AppTest.from_file(str(VIEWS / "library.py"), default_timeout=TIMEOUT)
    at.run()
    at.multiselect(key="lib_cases").select("ki67_patch").select("qc_blurred").run()
    at.button(key="lib_add").click().run()
    assert added == ["ki67_patch", "qc_blurred"]
    assert any("2 of 2 cases in the library" in s.value for s in at.success)
    assert "- **qc_blurred**: added" in _texts(at)
    assert [m.value for m in at.metric if m.label == "cases"] == ["2"]
    assert "(`hed-texture` embeddings in Chroma)" in _texts(at)  # the embedder in use, not a fixed name


def test_tools_page_lists_the_catalogue(env, tmp_path, monkeypatch):
    acc = tmp_path / "acc.json"
    acc.write_text(json.dumps({"nuclei_segmentation": {"object_f1": 0.71, "dataset": "CoNSeP"}}))
    monkeypatch.setenv("PATHASST_UI_ACCURACY_FILE", str(acc))
    at = AppTest.from_file(str(VIEWS / "tools.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    names = {e.label.split(" v")[0] for e in at.expander}
    assert {"tissue_qc", "nuclei_segmentation", "ihc_quantification", "region_segmentation"} <= names
    table = at.dataframe[0].value
    row = table[table["tool"] == "nuclei_segmentation"].iloc[0]
    assert "object_f1 0.71" in row["measured accuracy"]
    assert table[table["tool"] == "mitosis_detection"].iloc[0]["weights"].startswith("not set (PATHASST_")
    assert table[table["tool"] == "tissue_qc"].iloc[0]["backend (last run)"] == "not run yet"
    _facade(env).analyse("qc_blurred", "Is the image quality adequate?", "a")
    at.run()
    table = at.dataframe[0].value
    assert table[table["tool"] == "tissue_qc"].iloc[0]["backend (last run)"] == "classical (ok)"


# --- the command line -----------------------------------------------------------------------------
def test_cli_ui_binds_loopback_with_usage_stats_off(env, monkeypatch):
    from typer.testing import CliRunner

    import pathasst.cli.main as cli

    seen: dict = {}

    class FakePopen:
        def __init__(self, cmd, env):
            seen["cmd"], seen["env"] = cmd, env

        def wait(self, timeout=None):
            return 0

        def send_signal(self, sig):
            pass

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    runner = CliRunner()
    res = runner.invoke(cli.app, ["ui", "--cases", str(env["cases"]), "--port", "8611"])
    assert res.exit_code == 0, res.output
    cmd = seen["cmd"]
    opt = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert opt["--server.address"] == "127.0.0.1" and opt["--server.port"] == "8611"
    assert opt["--browser.gatherUsageStats"] == "false" and opt["--server.headless"] == "true"
    assert cmd[cmd.index("run") + 1].endswith(os.path.join("ui", "app.py"))
    assert seen["env"]["PATHASST_CASES_ROOT"] == str(env["cases"].resolve())
    assert "warning" not in res.output.lower()

    # beyond loopback without a login: refused unless --insecure-bind, and then warned about
    seen.clear()
    res = runner.invoke(cli.app, ["ui", "--cases", str(env["cases"]), "--address", "0.0.0.0"])
    assert res.exit_code == 2 and "refusing to serve on 0.0.0.0" in res.output and "PATHASST_UI_PASSWORD_HASH" in res.output
    assert "cmd" not in seen  # nothing was started
    res = runner.invoke(cli.app, ["ui", "--cases", str(env["cases"]), "--address", "0.0.0.0", "--insecure-bind"])
    assert res.exit_code == 0
    assert "warning" in res.output.lower() and "0.0.0.0" in res.output
    res = runner.invoke(cli.app, ["ui", "--cases", "/etc"])
    assert res.exit_code == 2 and "is a system folder" in res.output


def test_cli_does_not_import_streamlit():
    code = "import sys, pathasst.cli.main; sys.exit(1 if 'streamlit' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_cli_ui_without_arguments_opens_the_demo_or_an_empty_folder(env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import pathasst.cli.main as cli

    for key in ("PATHASST_CASES_ROOT", "PATHASST_OUTPUT_DIR", "PATHASST_CHROMA_PATH"):
        monkeypatch.delenv(key, raising=False)
    seen: dict = {}

    class FakePopen:
        def __init__(self, cmd, env):
            seen["env"] = env

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    demo = tmp_path / "with_demo"
    for sub in ("demo_out/cases/c1", "demo_out/reports", "demo_out/library"):
        (demo / sub).mkdir(parents=True)
    monkeypatch.chdir(demo)
    res = CliRunner().invoke(cli.app, ["ui"])
    assert res.exit_code == 0, res.output
    assert "opening the demo's cases" in res.output
    assert seen["env"]["PATHASST_CASES_ROOT"] == str((demo / "demo_out" / "cases").resolve())
    assert seen["env"]["PATHASST_OUTPUT_DIR"] == str((demo / "demo_out" / "reports").resolve())
    assert seen["env"]["PATHASST_CHROMA_PATH"] == str((demo / "demo_out" / "library").resolve())
    res = CliRunner().invoke(cli.app, ["ui", "--cases", "demo_out/cases"])  # the demo's cases keep its reports
    assert seen["env"]["PATHASST_OUTPUT_DIR"] == str((demo / "demo_out" / "reports").resolve())

    empty = tmp_path / "fresh"
    empty.mkdir()
    monkeypatch.chdir(empty)
    res = CliRunner().invoke(cli.app, ["ui"])
    assert res.exit_code == 0, res.output
    assert (empty / "pathasst_cases").is_dir() and "starting with an empty one" in res.output
    assert seen["env"]["PATHASST_CASES_ROOT"] == str((empty / "pathasst_cases").resolve())


def test_an_empty_cases_folder_says_how_to_add_cases(env, tmp_path, monkeypatch):
    (tmp_path / "none").mkdir()
    monkeypatch.setenv("PATHASST_CASES_ROOT", str(tmp_path / "none"))
    at = _app()
    assert any("No cases yet" in i.value and "make demo" in i.value for i in at.info)
    assert at.text_input(key="new_case_id") is not None and at.number_input(key="new_mpp").value is None


def test_user_facing_text_has_no_class_names_double_stops_or_mixed_times(env):
    fac = _facade(env)
    layout = fac.layout
    layout.write_failure("empty_case", "EmptyCaseError: case empty_case has no image files")
    rows = {r.id: r for r in fac.list_cases()}
    assert rows["empty_case"].problem == "case empty_case has no image files"
    fac.analyse("qc_blurred", "Is the image quality adequate?", "Dr A")
    fac.sign_off("qc_blurred", "Dr A")
    row = {r.id: r for r in fac.list_cases()}["qc_blurred"]
    import re

    for stamp in (row.analysed_at, row.signed_at):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", stamp), stamp
    at = _open(_app(), "ki67_patch")
    assert "index?." not in _texts(at) and "index?" in _texts(at)


def test_cli_ui_refuses_a_missing_cases_folder(env, tmp_path):
    from typer.testing import CliRunner

    import pathasst.cli.main as cli

    res = CliRunner().invoke(cli.app, ["ui", "--cases", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "cases folder not found" in res.output


def test_similar_cases_gallery_shows_diagnoses_and_distances(env):
    """A report whose similar_cases call retrieved two cases: the gallery lists them nearest first."""
    from PIL import Image

    thumb = env["cases"].parent / "thumb.png"
    Image.new("RGB", (32, 32), (200, 120, 150)).save(thumb)
    folder = env["out"] / "qc_blurred"
    folder.mkdir(parents=True)
    call = {
        "id": "call_sim0000001", "tool": "similar_cases", "arguments": {"image": "sharp.png"}, "status": "ok",
        "summary": "2 cases", "image": "sharp.png",
        "output": {"status": "ok", "backend": "pathclip", "cases": [
            {"case_id": "lib-17", "distance": 0.31, "diagnosis": "adenocarcinoma", "thumbnail": None},
            {"case_id": "lib-03", "distance": 0.12, "diagnosis": "tubular adenoma", "thumbnail": str(thumb)},
        ]},
    }
    (folder / "report.json").write_text(json.dumps({"case_id": "qc_blurred", "trace": [call], "similar_cases": []}))
    at = _open(_app(), "qc_blurred")
    text = _texts(at)
    first, second = text.index("**lib-03**"), text.index("**lib-17**")
    assert first < second
    assert "tubular adenoma" in text and "distance 0.120" in text and "source `call_sim0000001`" in text
    # the one stored thumbnail, inline (no /media URL, which would bypass the login)
    shown = [m.value for m in at.markdown if 'alt="case lib-03"' in m.value]
    assert len(shown) == 1 and "data:image/jpeg;base64," in shown[0]
    import base64
    import io

    png = base64.b64decode(shown[0].split("base64,")[1].split('"')[0])
    assert max(abs(a - b) for a, b in zip(Image.open(io.BytesIO(png)).getpixel((5, 5)), (200, 120, 150))) <= 3
    assert not [m for m in at.markdown if 'alt="case lib-17"' in m.value]  # it has no thumbnail


def test_real_case_library_feeds_the_similar_cases_gallery(env, tmp_path, monkeypatch):
    """Chroma on disk with the embedded embedders: add cases on the Library page, then retrieve them for a case."""
    pytest.importorskip("chromadb")
    monkeypatch.setenv("PATHASST_CHROMA_PATH", str(tmp_path / "chroma"))
    at = AppTest.from_file(str(VIEWS / "library.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    at.multiselect(key="lib_cases").select("ki67_patch").select("qc_blurred").run()
    at.button(key="lib_add").click().run()
    assert not at.exception, at.exception
    assert any("2 of 2 cases in the library" in s.value for s in at.success)
    assert [m.value for m in at.metric if m.label == "cases"] == ["2"]

    at = _open(_app(), "broken_inputs")
    _ask(at, "Find similar cases in the archive.")
    text = _texts(at)
    assert "**ki67_patch**" in text and "**qc_blurred**" in text
    assert "distance 0." in text
    assert len([m for m in at.markdown if "data:image/jpeg;base64," in m.value]) >= 3  # the view and the thumbnails


def test_cli_hash_password_makes_a_usable_bcrypt_hash():
    import bcrypt
    from typer.testing import CliRunner

    import pathasst.cli.main as cli

    res = CliRunner().invoke(cli.app, ["ui", "--hash-password"], input="pw 1\npw 1\n")
    assert res.exit_code == 0, res.output
    line = next(w for w in res.output.split() if w.startswith("$2b$"))
    assert bcrypt.checkpw(b"pw 1", line.encode())


def test_questions_asked_while_one_runs_are_queued_not_lost(env):
    """Questions (or drawn regions) that arrive while the assistant works wait in a queue; each is answered once."""
    at = _open(_app(), "qc_blurred")
    at.session_state["questions_qc_blurred"] = [
        "Is the image quality adequate?", "Measure the area I marked: point 50, 60.",
    ]
    at.run()
    assert not at.exception, at.exception
    chat = json.loads((env["out"] / "qc_blurred" / "chat.json").read_text())
    assert [t["question"] for t in chat] == ["Is the image quality adequate?", "Measure the area I marked: point 50, 60."]
    assert at.session_state["questions_qc_blurred"] == []
    at.run()  # a later rerun answers nothing again
    assert len(json.loads((env["out"] / "qc_blurred" / "chat.json").read_text())) == 2
    # the same submission handed in again right after its answer (a rerun that interrupted the page) is not re-asked
    at.chat_input(key="chat_q").set_value("Measure the area I marked: point 50, 60.").run()
    assert len(json.loads((env["out"] / "qc_blurred" / "chat.json").read_text())) == 2
