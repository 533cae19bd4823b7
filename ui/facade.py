"""The one module the app's pages call for anything but layout.

It lists cases with their review status (:mod:`pathasst.ui.browser`), loads cases and their pixels (window by window), runs the graph through
``pathasst.agent.engine.Engine`` with an event callback, reads and writes the review state (``ui/review.py``),
exports reports (``ui/export.py``), checks logins, accepts uploads, and reports on the case library
(``pathasst.memory``) and the tool catalogue. No Streamlit import here: the pages own the layout.

Every case id or image name that comes from the browser is checked against what is actually on disk under the
cases root (and resolved with ``ensure_inside``), so a request can never reach a path outside it.
"""

from __future__ import annotations

import datetime as _dt
import hmac
import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from pathasst.agent.engine import Engine
from pathasst.agent.fhir import FHIR_FILE
from pathasst.agent.outputs import OutputLayout, write_case
from pathasst.agent.system import build_system
from pathasst.core.cases import PATCH_EXTENSIONS, Case, CaseError
from pathasst.core.errors import ToolError
from pathasst.core.readers import SlideReader, read_patch
from pathasst.core.regions import Region
from pathasst.core.settings import Settings
from pathasst.memory.conversations import case_thread_id, conversations_path, open_checkpointer
from pathasst.planning.base import PlannerError
from pathasst.planning.report import render_markdown
from pathasst.ui import catalogue, uploads
from pathasst.ui import findings as fnd
from pathasst.ui import review as rv
from pathasst.ui.browser import CaseBrowser, CaseRow, filter_cases
from pathasst.ui.catalogue import CaseLibrary, LibraryStatus, ToolInfo
from pathasst.ui.config import UISettings
from pathasst.ui.export import EXPORT_FORMATS, export_geojson, export_json, export_markdown, export_pdf
from pathasst.ui.findings import CaseFindings
from pathasst.ui.review import ChatTurn, ReviewLockedError, ReviewState
from pathasst.ui.sessions import SessionStore, token_from_cookie_header
from pathasst.ui.uploads import UPLOAD_EXTENSIONS, UploadError
from pathasst.ui.viewer import ImageInfo, Layer, Marker, ViewResult, Window, compose, window_for, zoom_levels

__all__ = [
    "AnalysisError",
    "CaseError",
    "CaseFindings",
    "CaseLibrary",
    "CaseRow",
    "ExportFile",
    "Facade",
    "ImageInfo",
    "Layer",
    "LibraryStatus",
    "LoginError",
    "Marker",
    "ReviewLockedError",
    "ReviewState",
    "ToolInfo",
    "UPLOAD_EXTENSIONS",
    "UploadError",
    "ViewResult",
    "Window",
    "filter_cases",
    "zoom_levels",
]

#: most pixels one view may read from a slide level (a slide without a coarse pyramid level is not read whole)
MAX_VIEW_READ_PIXELS = 64 * 1024 * 1024


# --- errors and small models ------------------------------------------------------------------
class AnalysisError(RuntimeError):
    """An analysis could not run (bad case, planner not available); the message says why."""


class LoginError(RuntimeError):
    """A sign-in was refused (wrong user or password, or locked out); the message is for the user."""


class ExportFile(BaseModel):
    filename: str
    mime: str
    data: bytes


class Facade(CaseBrowser):
    """Everything the pages do, for one cases root and one output folder. Thread-safe (one analysis at a time)."""

    def __init__(
        self, settings: Settings | None = None, ui_settings: UISettings | None = None, planner: Any = None, registry: Any = None
    ) -> None:
        if settings is None:  # the app's own process: the environment and .env
            settings = Settings()
        self.settings = settings
        self.ui = ui_settings if ui_settings is not None else UISettings()
        self.planner = planner
        self.registry = registry
        self.out_dir = Path(settings.output_dir)
        self.layout = OutputLayout(self.out_dir)
        self._engine: Any = None
        self._engine_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._patches: OrderedDict[tuple[str, float], np.ndarray] = OrderedDict()
        self._patch_lock = threading.Lock()
        self._sessions: SessionStore | None = None

    # ---- cases --------------------------------------------------------------------------------

    # ---- pixels -------------------------------------------------------------------------------
    def case_image(self, case: Case, name: str):
        """The image ``name`` of ``case`` (CaseError when the case has none of that name)."""
        try:
            return case.image(name)
        except KeyError:
            raise CaseError(f"case {case.id} has no image {name!r}") from None

    def image_info(self, case: Case, name: str) -> ImageInfo:
        img = self.case_image(case, name)
        mpp = case.meta.mpp or self.settings.default_mpp
        if img.kind == "wsi":
            with SlideReader(img.path, mpp=mpp) as s:
                return ImageInfo(name, "wsi", *s.dimensions, mpp=s.mpp, level_downsamples=s.level_downsamples)
        h, w = self._patch(img.path).shape[:2]
        return ImageInfo(name, "patch", w, h, mpp=mpp)

    def _patch(self, path: Path) -> np.ndarray:
        key = (str(path), path.stat().st_mtime)
        with self._patch_lock:
            if key in self._patches:
                self._patches.move_to_end(key)
                return self._patches[key]
        pixels = read_patch(path, self.settings.max_image_pixels).pixels
        with self._patch_lock:
            self._patches[key] = pixels
            while len(self._patches) > 4:
                self._patches.popitem(last=False)
        return pixels

    def view(
        self,
        case: Case,
        name: str,
        zoom: float,
        cx: float,
        cy: float,
        layers: list[Layer] | None = None,
        marker: Marker | None = None,
        alpha: float = 0.5,
    ) -> ViewResult:
        """The window of image ``name`` at ``zoom`` around (cx, cy), ``ui.view_px`` wide, with overlays drawn."""
        from PIL import Image

        info = self.image_info(case, name)
        win = window_for(info, zoom, cx, cy)
        view_px = self.ui.view_px
        out_w = view_px
        out_h = max(1, round(win.height * view_px / win.width))
        level = None
        if info.kind == "wsi":
            with SlideReader(self.case_image(case, name).path, mpp=info.mpp) as s:
                ds = max([d for d in s.level_downsamples if d <= max(1.0, win.width / view_px)] or [1.0])
                if (win.width / ds) * (win.height / ds) > MAX_VIEW_READ_PIXELS:
                    raise CaseError(
                        f"{name} has no pyramid level coarse enough to show this window at once: zoom in"
                    )
                data = s.read_region(
                    Region(x=win.x, y=win.y, width=win.width, height=win.height),
                    downsample=win.width / view_px,
                    max_pixels=view_px * view_px * 2,
                )
                level = s.last_level
            pixels = data.pixels
        else:
            pixels = self._patch(self.case_image(case, name).path)[win.y : win.y + win.height, win.x : win.x + win.width]
        if pixels.shape[1] != out_w or pixels.shape[0] != out_h:
            resample = Image.Resampling.NEAREST if out_w > pixels.shape[1] else Image.Resampling.LANCZOS
            pixels = np.asarray(Image.fromarray(pixels).resize((out_w, out_h), resample))
        scale = win.width / out_w
        mine = [lyr for lyr in (layers or []) if lyr.image == name]
        composed, drawn, painted = compose(pixels, win, scale, mine, marker, alpha)
        return ViewResult(pixels=composed, window=win, scale=scale, level=level, drawn=drawn, painted=painted)

    # ---- outputs of the last analysis ---------------------------------------------------------
    def report(self, case_id: str) -> dict[str, Any] | None:
        """``OUT/CASE/report.json`` of the last analysis, or None."""
        self.case_dir(case_id)
        path = self.layout.report_json(case_id)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def features(self, case_id: str) -> list[dict[str, Any]]:
        path = self.layout.annotations(case_id)
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("features", [])
        except FileNotFoundError:
            return []

    def layers(self, case_id: str) -> list[Layer]:
        """One layer per kept tool call that has something to draw, labelled with the question that made it."""
        report = self.report(case_id)
        if not report:
            return []
        by_call: dict[str, list[dict[str, Any]]] = {}
        for f in self.features(case_id):
            by_call.setdefault((f.get("properties") or {}).get("call_id", ""), []).append(f)
        files = report.get("files") or {}
        overlay_of = files.get("overlay_of")
        if overlay_of is None:  # a report written before ``overlay_of``: the last call of a tool on an image wins
            overlay_of = {}
            for rec in report.get("trace", []):
                if rec.get("status") == "ok":
                    name = OutputLayout.overlay_name(rec.get("image") or "image", rec["tool"])
                    overlay_of = {cid: n for cid, n in overlay_of.items() if n != name} | {rec["id"]: name}
        ledger = fnd.load_findings(self.out_dir, case_id)
        question_of = {s: t.number for t in ledger.turns for f in t.findings for s in f.sources} if ledger else {}
        out = []
        for rec in report.get("trace", []):
            if rec.get("status") != "ok":
                continue
            ov = overlay_of.get(rec["id"])
            ov_path = self.layout.case_dir(case_id) / ov if ov else None
            layer = Layer(
                call_id=rec["id"],
                tool=rec["tool"],
                image=rec.get("image") or (rec.get("arguments") or {}).get("image", ""),
                overlay_path=ov_path if ov_path is not None and ov_path.is_file() else None,
                origin=tuple(rec.get("image_origin") or (0.0, 0.0)),
                scale=float(rec.get("image_scale") or 1.0),
                features=by_call.get(rec["id"], []),
                question=question_of.get(rec["id"]),
            )
            if layer.overlay_path is not None or layer.features:
                out.append(layer)
        return out

    @staticmethod
    def similar_cases(report: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Retrieved cases of the report and of its ``similar_cases`` calls, one per case, nearest first.

        Each keeps its nearest distance and lists every source (``retrieval`` and/or tool call ids).
        """
        if not report:
            return []
        found = [{**s, "source": s.get("source", "retrieval")} for s in report.get("similar_cases") or []]
        for rec in report.get("trace", []):
            if rec.get("tool") == "similar_cases" and rec.get("status") == "ok":
                found.extend({**c, "source": rec["id"]} for c in (rec.get("output") or {}).get("cases", []))
        merged: dict[str, dict[str, Any]] = {}
        for s in sorted(found, key=lambda s: float(s.get("distance") or 0.0)):
            key = str(s.get("case_id"))
            if key in merged:
                if s["source"] not in merged[key]["sources"]:
                    merged[key]["sources"].append(s["source"])
                continue
            thumb = s.get("thumbnail")
            ok = bool(thumb) and Path(thumb).suffix.lower() in PATCH_EXTENSIONS and Path(thumb).is_file()
            merged[key] = {**s, "thumbnail": str(thumb) if ok else None, "sources": [s["source"]]}
        return list(merged.values())

    # ---- analysis -----------------------------------------------------------------------------
    def engine(self) -> Any:
        with self._engine_lock:
            if self._engine is None:
                try:
                    # every analysis is a thread in the SQLite conversation store, so it survives a restart
                    self._engine = Engine(
                        self.settings,
                        planner=self.planner,
                        registry=self.registry,
                        checkpointer=open_checkpointer(conversations_path(self.settings)),
                    )
                except PlannerError as exc:
                    raise AnalysisError(f"planner not available: {exc}") from exc
            return self._engine

    @property
    def planner_name(self) -> str:
        return str(getattr(self.planner, "name", None) or self.planner or self.settings.planner)

    @staticmethod
    def region_question(marker: Marker) -> str:
        """The request for ``region_segmentation`` at the user's point or box, in words the planners parse.

        The image name is left out on purpose: file names such as ``ihc.png`` read as requests of their own.
        """
        if marker.box is not None:
            x0, y0, x1, y1 = marker.box
            return f"Measure the area I marked: box ({x0}, {y0}, {x1}, {y1})."
        return f"Measure the area I marked: point {marker.x}, {marker.y}."

    def analyse(
        self,
        case_id: str,
        question: str | None,
        user: str,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> ChatTurn:
        """Run the graph on the case; write its outputs; record the turn and the new AI draft. Raises AnalysisError."""
        try:
            case = self.load_case(case_id)
        except CaseError as exc:
            raise AnalysisError(str(exc)) from exc
        question = (question or "").strip() or None
        with self._run_lock:
            if self.review(case_id).sign_off is not None:
                raise ReviewLockedError(f"case {case_id} is signed off: reopen it before a new analysis")
            repeat = self._just_answered(case_id, question, user)
            if repeat is not None:  # the same submission twice (two page runs racing): answered once
                return repeat
            t0 = time.perf_counter()
            try:
                report, artifacts = self.engine().run(
                    case=case, question=question, cases_root=self.cases_root, on_event=on_event,
                    thread_id=case_thread_id(case_id, f"ui-{uuid.uuid4().hex[:8]}"),
                )
            except (CaseError, PlannerError) as exc:
                self._record_turn(case_id, ChatTurn(question=question or "", asked_by=user, status="failed", error=str(exc)))
                raise AnalysisError(str(exc)) from exc
            with self._write_lock:
                rv.backup(self.out_dir, case_id)
                try:
                    ledger = self.findings(case_id) or CaseFindings(case_id=case_id)
                    fnd.save_artifacts(self.out_dir, case_id, artifacts)
                    added = ledger.add_turn(report, asked_by=user, at=rv.now())
                    fnd.save_findings(self.out_dir, ledger)
                    self._rebuild(ledger)
                finally:
                    rv.restore(self.out_dir, case_id)
                turn = ChatTurn(
                    question=report.question,
                    answer=report.answer,
                    asked_by=user,
                    at=added.at,
                    number=added.number,
                    calls=[r.model_dump(mode="json") for r in report.trace],
                    findings=[f.model_dump(mode="json") for f in report.findings],
                    similar_cases=self.similar_cases(report.model_dump(mode="json")),
                    seconds=time.perf_counter() - t0,
                )
                self._record_turn(case_id, turn)
        return turn

    #: a question equal to the one the same user had answered this many seconds ago is the same submission again
    REPEAT_WINDOW_S = 10.0

    def _just_answered(self, case_id: str, question: str | None, user: str) -> ChatTurn | None:
        turns = rv.load_chat(self.out_dir, case_id)
        if not turns or turns[-1].status != "ok" or turns[-1].asked_by != user:
            return None
        last = turns[-1]
        asked = question if question is not None else last.question  # the default question is recorded resolved
        at = rv.parse_time(last.at)
        if at is None:
            return None
        age = (_dt.datetime.now(_dt.UTC) - at).total_seconds()
        return last if last.question == asked and question is not None and age < self.REPEAT_WINDOW_S else None

    #: the review app's files that a rewrite of the case folder carries over
    _KEEP = (rv.REVIEW_FILE, rv.CHAT_FILE, fnd.FINDINGS_FILE, fnd.FINDINGS_DIR)

    def _rebuild(self, ledger: CaseFindings) -> None:
        """Rewrite the case's outputs from every kept finding, and make them the AI draft."""
        merged = fnd.merged_report(ledger)
        write_case(self.out_dir, merged, fnd.merged_artifacts(self.out_dir, ledger), overwrite=True, keep=self._KEEP)
        state = rv.load_review(self.out_dir, ledger.case_id)
        state.set_ai_draft(render_markdown(merged), merged.question, merged.created_at, merged.planner)
        rv.save_review(self.out_dir, state)

    def findings(self, case_id: str) -> CaseFindings | None:
        """The case's findings across all questions; a report of ``pathasst run`` becomes the first question's."""
        self.case_dir(case_id)
        with self._write_lock:
            ledger = fnd.load_findings(self.out_dir, case_id)
            if ledger is None:
                report = self.report(case_id)
                if report is not None:
                    ledger = fnd.from_batch_report(self.out_dir, case_id, report)
                    fnd.save_findings(self.out_dir, ledger)
            return ledger

    def set_finding_kept(self, case_id: str, finding_id: str, kept: bool, user: str) -> CaseFindings:
        """Keep or drop one finding; the report, overlays, exports and AI draft follow. Raises ReviewLockedError."""
        with self._write_lock:
            if self.review(case_id).sign_off is not None:
                raise ReviewLockedError(f"case {case_id} is signed off: reopen it before changing its findings")
            ledger = self.findings(case_id)
            if ledger is None:
                raise ValueError(f"case {case_id} has no findings yet: run an analysis first")
            turn, finding = ledger.finding(finding_id)
            if finding.kept == kept:
                return ledger
            finding.kept, finding.changed_by, finding.changed_at = kept, user, rv.now()
            fnd.save_findings(self.out_dir, ledger)
            self._rebuild(ledger)
            self._update(
                case_id,
                lambda s: s.record("finding_kept" if kept else "finding_dropped", user, finding=finding.text,
                                   question=turn.number),
            )
            return ledger

    def _record_turn(self, case_id: str, turn: ChatTurn) -> None:
        with self._write_lock:
            turns = rv.load_chat(self.out_dir, case_id)
            turns.append(turn)
            rv.save_chat(self.out_dir, case_id, turns)

    def chat(self, case_id: str) -> list[ChatTurn]:
        self.case_dir(case_id)
        return rv.load_chat(self.out_dir, case_id)

    # ---- review -------------------------------------------------------------------------------
    def review(self, case_id: str) -> ReviewState:
        """The review state; a report written by a batch run (``pathasst run``) becomes the AI draft on first view."""
        self.case_dir(case_id)
        state = rv.load_review(self.out_dir, case_id)
        if state.ai_draft is None and state.sign_off is None:
            md, report = self.layout.report_md(case_id), self.report(case_id)
            if md.is_file() and report:
                with self._write_lock:
                    state = rv.load_review(self.out_dir, case_id)
                    if state.ai_draft is None:
                        state.set_ai_draft(
                            md.read_text(encoding="utf-8"), str(report.get("question", "")),
                            str(report.get("created_at", "")), str(report.get("planner", "")),
                        )
                        rv.save_review(self.out_dir, state)
                self.findings(case_id)  # ... and the first question of the case's findings
        return state

    def _update(self, case_id: str, change: Callable[[ReviewState], None]) -> ReviewState:
        self.review(case_id)  # a batch-run report becomes the AI draft first
        with self._write_lock:
            state = rv.load_review(self.out_dir, case_id)
            change(state)
            rv.save_review(self.out_dir, state)
            return state

    def save_edits(self, case_id: str, markdown: str, user: str) -> ReviewState:
        return self._update(case_id, lambda s: s.save_edits(markdown, user))

    def discard_edits(self, case_id: str, user: str) -> ReviewState:
        return self._update(case_id, lambda s: s.discard_edits(user))

    def sign_off(self, case_id: str, user: str) -> ReviewState:
        """Sign the final text; findings the reviewer dropped are named in the sign-off record."""
        ledger = self.findings(case_id)
        dropped = [f"Q{t.number}: {f.text}" for t, f in ledger.dropped] if ledger else []
        return self._update(case_id, lambda s: s.sign(user, dropped))

    def reopen(self, case_id: str, user: str, reason: str) -> ReviewState:
        return self._update(case_id, lambda s: s.reopen(user, reason))

    # ---- export -------------------------------------------------------------------------------
    def export(self, case_id: str, fmt: str) -> ExportFile:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
        state = self.review(case_id)
        if state.ai_draft is None:
            raise ValueError("nothing to export: run an analysis first")
        suffix, mime = EXPORT_FORMATS[fmt]
        if fmt == "md":
            data = export_markdown(state).encode("utf-8")
        elif fmt == "json":
            ledger = self.findings(case_id)
            data = export_json(state, self.report(case_id), ledger.model_dump(mode="json") if ledger else None)
            data = data.encode("utf-8")
        elif fmt == "pdf":
            data = export_pdf(state, *self._snapshot(case_id))
        elif fmt == "fhir":
            path = self.layout.case_dir(case_id) / FHIR_FILE
            if not path.is_file():
                raise ValueError("no FHIR report for this case: run an analysis first")
            data = path.read_bytes()
        else:
            data = export_geojson(self.features(case_id)).encode("utf-8")
        return ExportFile(filename=f"{case_id}-{suffix}", mime=mime, data=data)

    def _snapshot(self, case_id: str) -> tuple[bytes | None, str]:
        """A JPEG of the case's first image with every kept overlay, and its caption (None when it cannot be drawn)."""
        import io

        from PIL import Image

        try:
            case = self.load_case(case_id)
            name = case.images[0].name
            layers = [lyr for lyr in self.layers(case_id) if lyr.image == name]
            res = self.view(case, name, 1.0, 0, 0, layers)
        except (CaseError, OSError, ValueError, IndexError):
            return None, ""
        buf = io.BytesIO()
        Image.fromarray(res.pixels).convert("RGB").save(buf, format="JPEG", quality=85)
        drawn = ", ".join(lyr.label for lyr in layers) or "no overlays"
        return buf.getvalue(), f"{name} ({res.window.width} x {res.window.height} px); overlays: {drawn}"

    # ---- access -------------------------------------------------------------------------------
    @property
    def login_mode(self) -> str:
        return self.ui.login_mode

    def check_password(self, user: str, password: str) -> bool:
        """True when ``user`` is the configured user and ``password`` matches the bcrypt hash."""
        import bcrypt

        if self.ui.password_hash is None:
            return False
        user_ok = hmac.compare_digest(user.strip().encode("utf-8"), self.ui.user.encode("utf-8"))
        try:
            pw_ok = bcrypt.checkpw(password.encode("utf-8"), self.ui.password_hash.get_secret_value().encode("ascii"))
        except ValueError:
            return False
        return user_ok and pw_ok

    @property
    def sessions(self) -> SessionStore:
        """Sign-in sessions and failed logins, in ``OUT/.pathasst/ui/sessions.sqlite``."""
        with self._engine_lock:
            if self._sessions is None:
                self._sessions = SessionStore(
                    self.out_dir / OutputLayout.STATE / "ui" / "sessions.sqlite", ttl_s=self.ui.session_hours * 3600,
                    max_attempts=self.ui.max_login_attempts, lockout_s=self.ui.lockout_s,
                )
            return self._sessions

    def verify(self, user: str, password: str, address: str | None) -> str:
        """The user when the password is right; LoginError when wrong or locked out (per user and per address)."""
        wait = self.sessions.locked_for(user, address)
        if wait > 0:
            raise LoginError(f"Too many failed attempts: try again in {math.ceil(wait)} s.")
        if not self.check_password(user, password):
            self.sessions.record_failure(user, address)
            raise LoginError("Wrong user or password.")
        self.sessions.clear_failures(user)
        return self.ui.user

    def sign_in(self, user: str, password: str, address: str | None) -> str:
        """A new session token for a right password (see :meth:`verify`)."""
        return self.sessions.create(self.verify(user, password, address))

    def session_user(self, token: str | None) -> str | None:
        return self.sessions.user_for(token)

    def authorize_request(self, cookie_header: str | None) -> str | None:
        """The user behind an HTTP request's ``Cookie`` header (any request is allowed when the app has no login)."""
        if self.login_mode == "none":
            return "anonymous"
        return self.session_user(token_from_cookie_header(cookie_header))

    # ---- uploads ------------------------------------------------------------------------------
    def check_upload(self, name: str, size: int, head: bytes) -> str:
        """The safe file name for an upload, or UploadError (size, extension, content type)."""
        return uploads.check_upload(name, size, head, self.ui.max_upload_bytes)

    def create_case(
        self,
        case_id: str,
        files: list[tuple[str, bytes]],
        stain: str | None = None,
        organ: str | None = None,
        question: str | None = None,
        mpp: float | None = None,
    ) -> Case:
        """A new case folder under the cases root from uploaded files; refused as a whole if anything is wrong."""
        meta = {"stain": stain, "organ": organ, "question": question, "mpp": mpp}
        uploads.create_case(self.cases_root, case_id, files, meta, self.settings, self.ui.max_upload_bytes)
        return self.load_case(case_id)

    def resolution_note(self, case: Case) -> str:
        """Where the case's resolution comes from, in words: given, read from the slide, assumed, or unknown."""
        if case.meta.mpp:
            return f"resolution {case.meta.mpp:g} µm/px (given)"
        img = case.images[0]
        if img.kind == "wsi":
            with SlideReader(img.path) as s:
                if s.mpp:
                    return f"resolution {s.mpp:.4g} µm/px (read from the slide)"
        if self.settings.default_mpp:
            return f"resolution not given: {self.settings.default_mpp:g} µm/px assumed (set it in case.yaml)"
        return "resolution not given: measures are in pixels"

    # ---- case library (pathasst.memory) and tools ---------------------------------------------
    def library_status(self) -> LibraryStatus:
        return catalogue.library_status(self.settings)

    def add_to_library(
        self, case_ids: list[str], progress: Callable[[int, int, str, str], None] | None = None
    ) -> list[tuple[str, str, bool]]:
        """Add cases one by one; ``progress(done, total, case_id, outcome)``; returns (case id, outcome, ok)."""
        lib = catalogue.open_case_library(self.settings)
        if lib is None:
            raise AnalysisError("case library not set up")
        pairs = [(cid, lambda cid=cid: self.load_case(cid)) for cid in case_ids]
        return catalogue.add_cases(lib, pairs, len(pairs), progress)

    def tools(self) -> list[ToolInfo]:
        try:
            reg = self.registry if self.registry is not None else build_system(self.settings).registry
        except (ToolError, ImportError) as exc:
            raise AnalysisError(f"the tool catalogue could not be loaded: {exc}") from exc
        return catalogue.tool_infos(reg, self.settings, self.out_dir, self.ui.accuracy_file)
