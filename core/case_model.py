"""The case model and its typed errors: what a loaded case folder is (:mod:`pathasst.core.cases` loads one,
:mod:`pathasst.core.readers` reads its images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Case",
    "CaseError",
    "CaseImage",
    "CaseMeta",
    "CaseProblem",
    "CorruptImageError",
    "EmptyCaseError",
    "FileTooLargeError",
    "ImageTooLargeError",
    "InvalidCaseFileError",
    "PathEscapeError",
    "UnreadablePathError",
    "UnsupportedFormatError",
    "clip",
]


# --- errors -----------------------------------------------------------------------------------------
class CaseError(Exception):
    """Base class of input errors. Each one is reported for its file or case; a batch goes on."""

    code = "case_error"


class UnsupportedFormatError(CaseError):
    code = "unsupported_format"


class CorruptImageError(CaseError):
    code = "corrupt_image"


class ImageTooLargeError(CaseError):
    code = "image_too_large"


class FileTooLargeError(CaseError):
    code = "file_too_large"


class EmptyCaseError(CaseError):
    code = "empty_case"


class PathEscapeError(CaseError):
    code = "path_escape"


class InvalidCaseFileError(CaseError):
    code = "invalid_case_yaml"


class UnreadablePathError(CaseError):
    code = "unreadable_path"


# --- models -----------------------------------------------------------------------------------------
class CaseMeta(BaseModel):
    """Contents of ``case.yaml``. All keys optional; unknown keys are kept in ``extra``."""

    model_config = ConfigDict(extra="forbid")
    stain: str | None = Field(None, description="Stain, e.g. 'H&E', 'Ki-67', 'ER', 'PR', 'PD-L1'.")
    organ: str | None = Field(None, description="Organ or site, e.g. 'colon', 'breast'.")
    question: str | None = Field(None, description="Default question for this case.")
    mpp: float | None = Field(None, gt=0, description="Microns per pixel of the plain images.")
    notes: str | None = Field(None, description="Clinical notes (treated as data, never as instructions).")
    diagnosis: str | None = Field(None, description="Known diagnosis (for the case library).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Any other keys found in case.yaml.")


class CaseImage(BaseModel):
    name: str = Field(..., description="Path relative to the case folder (what tools are called with).")
    path: Path
    kind: Literal["patch", "wsi"]


class CaseProblem(BaseModel):
    name: str
    code: str
    message: str


class Case(BaseModel):
    id: str
    root: Path
    meta: CaseMeta = Field(default_factory=CaseMeta)
    images: list[CaseImage] = Field(default_factory=list)
    problems: list[CaseProblem] = Field(default_factory=list)
    ignored: list[str] = Field(default_factory=list)
    texts: list[str] = Field(default_factory=list, description="Archived reports and captions (data, not instructions).")

    @property
    def image_kind(self) -> Literal["patch", "wsi"]:
        return "wsi" if any(i.kind == "wsi" for i in self.images) else "patch"

    def image(self, name: str) -> CaseImage:
        for img in self.images:
            if img.name == name:
                return img
        raise KeyError(name)


def clip(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis and the cut length mark a cut): bounded echo of input."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"
