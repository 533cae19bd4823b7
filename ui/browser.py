"""The case list of the review app: every case folder under the cases root with its stain, organ and review status,
filters, and the checked way from a case id to its folder (part of :class:`pathasst.ui.facade.Facade`)."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from pathasst.agent.outputs import OutputLayout
from pathasst.core.cases import (
    PATCH_EXTENSIONS,
    SLIDE_EXTENSIONS,
    Case,
    CaseError,
    discover_cases,
    ensure_inside,
    load_case,
    read_case_meta,
)
from pathasst.core.settings import Settings
from pathasst.ui import review as rv
from pathasst.ui.review import short_time

__all__ = ["CaseBrowser", "CaseRow", "CaseStatus", "filter_cases"]


CaseStatus = Literal["new", "analysed", "signed off", "failed"]


class CaseRow(BaseModel):
    id: str
    status: CaseStatus
    stain: str | None = None
    organ: str | None = None
    question: str | None = None
    diagnosis: str | None = None
    n_files: int = 0
    analysed_at: str | None = None
    signed_by: str | None = None
    signed_at: str | None = None
    problem: str | None = Field(None, description="Why the case cannot be read or why its last run failed.")


def filter_cases(
    rows: Iterable[CaseRow],
    text: str = "",
    statuses: Iterable[str] | None = None,
    stains: Iterable[str] | None = None,
    organs: Iterable[str] | None = None,
) -> list[CaseRow]:
    """Rows matching every given filter; ``text`` matches id, stain, organ, question and diagnosis (any word)."""
    words = [w for w in text.lower().split() if w]
    statuses, stains, organs = set(statuses or ()), set(stains or ()), set(organs or ())
    out = []
    for r in rows:
        hay = " ".join(str(v) for v in (r.id, r.stain, r.organ, r.question, r.diagnosis) if v).lower()
        if words and not all(w in hay for w in words):
            continue
        if statuses and r.status not in statuses:
            continue
        if stains and (r.stain or "unknown") not in stains:
            continue
        if organs and (r.organ or "unknown") not in organs:
            continue
        out.append(r)
    return out


def _read_case_yaml(case_dir: Path, root: Path) -> tuple[dict[str, Any], str | None, bool]:
    """``case.yaml`` of a listed case folder through the product's one reader, its problem, and whether the folder
    lies inside the root (a case folder or a ``case.yaml`` that links out of the root is a problem, never read)."""
    try:
        ensure_inside(case_dir, root)
    except CaseError as exc:
        return {}, str(exc), False
    try:
        meta = read_case_meta(case_dir)
    except CaseError as exc:
        return {}, str(exc), True
    return {**meta.extra, **meta.model_dump(exclude={"extra"}, exclude_none=True)}, None, True


_ERROR_NAME = re.compile(r"\b[A-Z][A-Za-z]*Error: ")


def _readable(reason: str) -> str:
    """A batch failure reason as users read it: without Python exception class names."""
    return _ERROR_NAME.sub("", reason).strip()


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


class CaseBrowser:
    """The case list of a :class:`~pathasst.ui.facade.Facade` (which sets these attributes)."""

    settings: Settings
    out_dir: Path
    layout: OutputLayout

    @property
    def cases_root(self) -> Path:
        root = self.settings.cases_root
        if root is None:
            raise CaseError("no cases folder configured: start the app with `pathasst ui --cases DIR`")
        return Path(root)

    def case_dir(self, case_id: str) -> Path:
        """The folder of ``case_id``: an existing, non-hidden folder directly under the cases root, or CaseError."""
        if not isinstance(case_id, str) or "/" in case_id or "\\" in case_id or case_id.startswith(".") or not case_id:
            raise CaseError(f"not a case id: {case_id!r}")
        names = {p.name for p in discover_cases(self.cases_root)}
        if case_id not in names:
            raise CaseError(f"no case {case_id!r} under {self.cases_root}")
        return ensure_inside(self.cases_root / case_id, self.cases_root)

    def list_cases(self) -> list[CaseRow]:
        """Every case folder under the root, with stain/organ from case.yaml and status from the output folder."""
        rows = []
        for d in discover_cases(self.cases_root):
            meta, problem, inside = _read_case_yaml(d, self.cases_root)
            n_files = 0 if not inside else sum(
                1 for f in d.rglob("*")
                if f.suffix.lower() in PATCH_EXTENSIONS | SLIDE_EXTENSIONS and not f.name.startswith(".")
            )
            review = rv.load_review(self.out_dir, d.name)
            report = self.layout.report_json(d.name)
            status: CaseStatus = "new"
            analysed_at = None
            failure = self.layout.failure_reason(d.name)
            if report.is_file():
                status = "analysed"
                analysed_at = short_time(_dt.datetime.fromtimestamp(report.stat().st_mtime, _dt.UTC).isoformat())
            elif failure is not None:
                status, problem = "failed", _readable(failure) or "last run failed"
            if review.sign_off is not None:
                status = "signed off"
            if n_files == 0 and problem is None:
                problem = "no image files"
            rows.append(
                CaseRow(
                    id=d.name, status=status, stain=_str(meta.get("stain")), organ=_str(meta.get("organ")),
                    question=_str(meta.get("question")), diagnosis=_str(meta.get("diagnosis")), n_files=n_files,
                    analysed_at=analysed_at, signed_by=review.sign_off.by if review.sign_off else None,
                    signed_at=short_time(review.sign_off.at) if review.sign_off else None, problem=problem,
                )
            )
        return rows

    def load_case(self, case_id: str) -> Case:
        return load_case(self.case_dir(case_id), self.cases_root, self.settings)
