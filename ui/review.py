"""Review state of one case, kept in files next to its outputs: ``OUT/CASE/review.json`` and ``OUT/CASE/chat.json``.

The AI draft and the pathologist's edits are separate fields: an edit never touches the AI draft, and a new analysis
moves the previous AI draft into ``history`` (with its text) instead of dropping it. Sign-off records who, when and
the sha256 of the text signed. Every write is atomic (``atomic_write_text``).

A new analysis replaces the whole ``OUT/CASE`` folder (``write_case``); :func:`backup` copies the review files to
``OUT/.pathasst/ui/CASE/`` first and :func:`restore` puts them back, so a crash between the two loses nothing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from pathasst.agent.outputs import OutputLayout
from pathasst.core.files import atomic_write_text

__all__ = [
    "AIDraft",
    "EVENT_LABELS",
    "ChatTurn",
    "Edits",
    "ReviewLockedError",
    "ReviewState",
    "SignOff",
    "backup",
    "load_chat",
    "load_review",
    "now",
    "restore",
    "save_chat",
    "save_review",
    "sha256_text",
    "short_time",
]

REVIEW_FILE = "review.json"
#: what the history's events read as in the app
EVENT_LABELS = {
    "analysis": "new AI draft from an analysis",
    "ai_draft_replaced": "previous AI draft kept in the history",
    "edit": "edits saved",
    "edits_replaced": "earlier edits kept in the history",
    "edits_discarded": "edits discarded",
    "sign_off": "signed off",
    "reopen": "reopened",
    "finding_dropped": "finding dropped",
    "finding_kept": "finding kept again",
}
CHAT_FILE = "chat.json"


class ReviewLockedError(RuntimeError):
    """The case is signed off: reopen it before changing the draft or running a new analysis."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def parse_time(stamp: str | None) -> _dt.datetime | None:
    """An ISO time stamp as a datetime (None when it is empty or not one)."""
    try:
        return _dt.datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        return None


def short_time(stamp: str | None) -> str:
    """An ISO time as the app shows every time: ``2026-12-06 11:40 UTC`` (unparsable text is shown as it is)."""
    t = parse_time(stamp)
    if t is None:
        return stamp or ""
    if t.tzinfo is not None:
        t = t.astimezone(_dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo is not None else "")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AIDraft(BaseModel):
    markdown: str = Field(..., description="The report as rendered from report.json (never edited).")
    sha256: str
    question: str
    report_created_at: str
    planner: str


class Edits(BaseModel):
    markdown: str = Field(..., description="The pathologist's version of the report.")
    sha256: str
    by: str
    at: str
    base_sha256: str = Field(..., description="sha256 of the AI draft these edits started from.")


class SignOff(BaseModel):
    by: str
    at: str
    signed_text: Literal["edits", "ai_draft"]
    sha256: str = Field(..., description="sha256 of the text signed.")
    ai_draft_sha256: str
    dropped_findings: list[str] = Field(default_factory=list, description="Findings the reviewer left out.")


class ReviewState(BaseModel):
    case_id: str
    ai_draft: AIDraft | None = None
    edits: Edits | None = None
    sign_off: SignOff | None = None
    history: list[dict[str, Any]] = Field(default_factory=list, description="Events, oldest first, with texts replaced.")

    @property
    def status(self) -> Literal["new", "analysed", "signed off"]:
        if self.sign_off is not None:
            return "signed off"
        return "analysed" if self.ai_draft is not None else "new"

    @property
    def final_markdown(self) -> str:
        """The text a sign-off covers: the pathologist's edits if any, else the AI draft."""
        if self.edits is not None:
            return self.edits.markdown
        return self.ai_draft.markdown if self.ai_draft else ""

    @property
    def last_change(self) -> _dt.datetime:
        """The newest time stamp of the review (naive ones read as UTC; the epoch when it has none)."""
        stamps = [str(e.get("at", "")) for e in self.history]
        stamps += [x.at for x in (self.edits, self.sign_off) if x is not None]
        stamps += [self.ai_draft.report_created_at] if self.ai_draft is not None else []
        times = [t if t.tzinfo else t.replace(tzinfo=_dt.UTC) for t in map(parse_time, stamps) if t is not None]
        return max(times, default=_dt.datetime.fromtimestamp(0, _dt.UTC))

    @property
    def edits_outdated(self) -> bool:
        return bool(self.edits and self.ai_draft and self.edits.base_sha256 != self.ai_draft.sha256)

    def record(self, event: str, by: str, **detail: Any) -> None:
        """Add an event to the history (see ``EVENT_LABELS`` for the words shown to users)."""
        self.history.append({"event": event, "by": by, "at": now(), **detail})

    _event = record

    def set_ai_draft(self, markdown: str, question: str, created_at: str, planner: str) -> None:
        if self.sign_off is not None:
            raise ReviewLockedError(f"case {self.case_id} is signed off; reopen it first")
        if self.ai_draft is not None:
            self._event("ai_draft_replaced", "assistant", previous=self.ai_draft.model_dump())
        self.ai_draft = AIDraft(
            markdown=markdown, sha256=sha256_text(markdown), question=question, report_created_at=created_at,
            planner=planner,
        )
        self._event("analysis", "assistant", question=question, ai_draft_sha256=self.ai_draft.sha256)

    def save_edits(self, markdown: str, by: str) -> None:
        if self.sign_off is not None:
            raise ReviewLockedError(f"case {self.case_id} is signed off; reopen it first")
        if self.ai_draft is None:
            raise ValueError("no AI draft yet: run an analysis first")
        if self.edits is not None:
            self._event("edits_replaced", by, previous=self.edits.model_dump())
        self.edits = Edits(
            markdown=markdown, sha256=sha256_text(markdown), by=by, at=now(), base_sha256=self.ai_draft.sha256
        )
        self._event("edit", by, sha256=self.edits.sha256)

    def discard_edits(self, by: str) -> None:
        if self.sign_off is not None:
            raise ReviewLockedError(f"case {self.case_id} is signed off; reopen it first")
        if self.edits is not None:
            self._event("edits_discarded", by, previous=self.edits.model_dump())
            self.edits = None

    def sign(self, by: str, dropped: list[str] | None = None) -> None:
        if self.sign_off is not None:
            raise ReviewLockedError(f"case {self.case_id} is already signed off by {self.sign_off.by}")
        if self.ai_draft is None:
            raise ValueError("nothing to sign: run an analysis first")
        if not by.strip():
            raise ValueError("sign-off needs the reviewer's name")
        text = self.final_markdown
        self.sign_off = SignOff(
            by=by.strip(), at=now(), signed_text="edits" if self.edits else "ai_draft", sha256=sha256_text(text),
            ai_draft_sha256=self.ai_draft.sha256, dropped_findings=list(dropped or []),
        )
        self._event("sign_off", by.strip(), sha256=self.sign_off.sha256, dropped=len(dropped or []))

    def reopen(self, by: str, reason: str) -> None:
        if self.sign_off is None:
            return
        self._event("reopen", by, reason=reason, previous=self.sign_off.model_dump())
        self.sign_off = None


class ChatTurn(BaseModel):
    question: str
    number: int | None = Field(None, description="The question's number among the case's findings (Q1, Q2...).")
    answer: str = ""
    asked_by: str = ""
    at: str = Field(default_factory=now)
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    calls: list[dict[str, Any]] = Field(default_factory=list, description="Tool call records of this turn.")
    findings: list[dict[str, Any]] = Field(default_factory=list)
    similar_cases: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float = 0.0


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _backup_dir(out_dir: Path, case_id: str) -> Path:
    return OutputLayout(Path(out_dir)).review_backup_dir(case_id)


def _path(out_dir: Path, case_id: str, name: str) -> Path:
    """The file in the case folder, or its backup when a crash left only the backup."""
    main = OutputLayout(Path(out_dir)).case_dir(case_id) / name
    if main.is_file():
        return main
    bak = _backup_dir(out_dir, case_id) / name
    return bak if bak.is_file() else main


def load_review(out_dir: Path, case_id: str) -> ReviewState:
    data = _read_json(_path(out_dir, case_id, REVIEW_FILE))
    return ReviewState.model_validate(data) if data else ReviewState(case_id=case_id)


def save_review(out_dir: Path, state: ReviewState) -> None:
    atomic_write_text(OutputLayout(Path(out_dir)).case_dir(state.case_id) / REVIEW_FILE, state.model_dump_json(indent=2))


def load_chat(out_dir: Path, case_id: str) -> list[ChatTurn]:
    data = _read_json(_path(out_dir, case_id, CHAT_FILE)) or []
    return [ChatTurn.model_validate(t) for t in data]


def save_chat(out_dir: Path, case_id: str, turns: list[ChatTurn]) -> None:
    atomic_write_text(
        OutputLayout(Path(out_dir)).case_dir(case_id) / CHAT_FILE, json.dumps([t.model_dump(mode="json") for t in turns], indent=2)
    )


def backup(out_dir: Path, case_id: str) -> None:
    """Copy the review files out of ``OUT/CASE`` before ``write_case`` replaces that folder."""
    dest = _backup_dir(out_dir, case_id)
    for name in (REVIEW_FILE, CHAT_FILE):
        src = OutputLayout(Path(out_dir)).case_dir(case_id) / name
        if src.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dest / name, src.read_text(encoding="utf-8"))


def restore(out_dir: Path, case_id: str) -> None:
    """Put backed-up review files into the (new) case folder where missing, then drop the backup."""
    src = _backup_dir(out_dir, case_id)
    if not src.is_dir():
        return
    for name in (REVIEW_FILE, CHAT_FILE):
        target = OutputLayout(Path(out_dir)).case_dir(case_id) / name
        if (src / name).is_file() and not target.is_file():
            atomic_write_text(target, (src / name).read_text(encoding="utf-8"))
    shutil.rmtree(src, ignore_errors=True)
