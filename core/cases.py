"""Case folders: discovery, ``case.yaml``, image listing, and typed errors for bad input.

Format (DESIGN.md): ``CASES_DIR/CASE_ID/`` holds images (``.png .jpg .tif``) and/or whole-slide files
(``.svs .ndpi .mrxs ...``) and an optional ``case.yaml`` (stain, organ, question, mpp, notes, diagnosis).
Unknown files are ignored with a warning; unreadable ones are reported in ``Case.problems``; a case with no usable
image raises ``EmptyCaseError``. Paths (and symlinks) may not escape the cases root.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError

from pathasst.core.case_model import (
    Case,
    CaseError,
    CaseImage,
    CaseMeta,
    CaseProblem,
    CorruptImageError,
    EmptyCaseError,
    FileTooLargeError,
    ImageTooLargeError,
    InvalidCaseFileError,
    PathEscapeError,
    UnreadablePathError,
    UnsupportedFormatError,
    clip,
)
from pathasst.core.readers import SlideReader, verify_patch
from pathasst.core.settings import Settings

__all__ = [
    "PATCH_EXTENSIONS",
    "SLIDE_EXTENSIONS",
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
    "check_image",
    "classify_file",
    "clip",
    "companions",
    "ensure_companions_inside",
    "discover_cases",
    "ensure_inside",
    "load_case",
    "path_error_reason",
    "shown_path",
    "single_image_case",
]

log = logging.getLogger(__name__)

PATCH_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
SLIDE_EXTENSIONS = frozenset({".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff"})
CASE_FILE = "case.yaml"
_IGNORED_NAMES = {CASE_FILE, "case.yml", ".DS_Store", "Thumbs.db"}
#: text files a case may carry (archived reports, captions): listed in ``Case.texts``, used by the case library
TEXT_PATTERNS = ("report*.md", "report*.txt", "caption*.txt")


# --- helpers ----------------------------------------------------------------------------------------
def ensure_inside(path: Path, root: Path) -> Path:
    """Resolve ``path`` (following symlinks) and check it stays under ``root``; return the resolved path.

    The one containment check of every file the product opens for a case or a request. Its messages show the path as
    given (shortened), never where it resolves to nor the root's absolute location. A path that cannot be resolved
    (name too long, symlink loop, NUL byte) is an :class:`UnreadablePathError`."""
    real_root = Path(root).resolve()
    shown = shown_path(path, real_root)
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # Python 3.11 reports a symlink loop as RuntimeError
        raise UnreadablePathError(f"{shown}: not a usable path ({path_error_reason(exc)})") from exc
    if real != real_root and real_root not in real.parents:
        raise PathEscapeError(f"{shown} leads outside the cases root; not read")
    return real


def shown_path(path: Path | str, root: Path) -> str:
    """``path`` as a message may show it: relative to ``root`` when it lies there by name, at most 120 characters."""
    p = Path(path)
    try:
        text = p.relative_to(root).as_posix() if p.is_absolute() else p.as_posix()
    except ValueError:
        text = p.as_posix()
    return clip(text)


def path_error_reason(exc: BaseException) -> str:
    """A short reason for a failed path operation, without the path itself (it may be huge or hostile)."""
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return "symlink loop"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)[:80]


def companions(path: Path) -> list[Path]:
    """Files a slide format reads beside the named file: for MIRAX (``.mrxs``) the data folder of the same stem and
    its files. Each must pass :func:`ensure_inside` too (OpenSlide follows links without asking)."""
    if path.suffix.lower() != ".mrxs":
        return []
    folder = path.with_suffix("")
    if not (folder.exists() or folder.is_symlink()):
        return []
    found = [folder]
    if folder.is_dir():
        found += sorted(folder.iterdir())
    return found


def ensure_companions_inside(path: Path, root: Path) -> None:
    """:func:`ensure_inside` for every companion of a slide file (:func:`companions`)."""
    for extra in companions(Path(path)):
        ensure_inside(extra, root)


def classify_file(path: Path) -> Literal["patch", "wsi"] | None:
    """'patch', 'wsi' or None (not an image we read) by extension; TIFF is a slide when OpenSlide sees levels."""
    ext = path.suffix.lower()
    if ext in {".tif", ".tiff"}:
        return "wsi" if _is_pyramidal_tiff(path) else "patch"
    if ext in SLIDE_EXTENSIONS:
        return "wsi"
    if ext in PATCH_EXTENSIONS:
        return "patch"
    return None


def _is_pyramidal_tiff(path: Path) -> bool:
    try:
        import openslide

        fmt = openslide.OpenSlide.detect_format(str(path))
        if fmt is None or fmt == "generic-tiff" and path.stat().st_size < 64 * 1024**2:
            if fmt is None:
                return False
            with openslide.OpenSlide(str(path)) as s:
                return s.level_count > 1
        return True
    except (OSError, ImportError):
        return False


def _read_meta(case_dir: Path) -> CaseMeta:
    """``case.yaml`` of a case folder. It must resolve inside the folder (a link elsewhere is refused unread), and a
    parse error names the line and column only: text of a refused file never reaches a message."""
    for name in (CASE_FILE, "case.yml"):
        f = case_dir / name
        if f.is_file() or f.is_symlink():
            try:
                ensure_inside(f, case_dir)
            except PathEscapeError as exc:
                raise InvalidCaseFileError(f"{case_dir.name}/{name}: links outside its case folder; not read") from exc
            try:
                data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                raise InvalidCaseFileError(f"{case_dir.name}/{name}: not valid YAML{where}") from exc
            except UnicodeDecodeError as exc:
                raise InvalidCaseFileError(f"{case_dir.name}/{name}: not valid YAML (not UTF-8 text)") from exc
            if not isinstance(data, dict):
                raise InvalidCaseFileError(f"{case_dir.name}/{name}: expected a mapping of keys, got {type(data).__name__}")
            known = set(CaseMeta.model_fields) - {"extra"}
            core = {str(k): v for k, v in data.items() if str(k) in known}
            extra = {str(k): v for k, v in data.items() if str(k) not in known}
            for key in ("stain", "organ", "question", "notes", "diagnosis"):
                if core.get(key) is not None and not isinstance(core[key], str):
                    core[key] = str(core[key])
            try:
                return CaseMeta(**core, extra=extra)
            except ValidationError as exc:
                raise InvalidCaseFileError(f"{case_dir.name}/{name}: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    return CaseMeta()


def read_case_meta(case_dir: Path) -> CaseMeta:
    """The ``case.yaml`` of ``case_dir`` (an empty :class:`CaseMeta` when there is none); InvalidCaseFileError if bad."""
    return _read_meta(Path(case_dir))


def discover_cases(cases_dir: Path) -> list[Path]:
    """Case folders directly under ``cases_dir`` (sorted; hidden folders skipped)."""
    cases_dir = Path(cases_dir)
    if not cases_dir.is_dir():
        raise CaseError(f"cases folder not found: {cases_dir}")
    return sorted(p for p in cases_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_case(case_dir: Path, cases_root: Path | None = None, settings: Settings | None = None) -> Case:
    """Read one case folder. Raises ``CaseError`` subclasses for a bad folder; per-file problems are listed.

    Every image is checked when the case is loaded (size limits, header, decodability of patches, OpenSlide for
    slides), so a corrupt or oversized file is reported with a clear reason instead of failing a tool later.
    """
    max_file_bytes = getattr(settings, "max_file_bytes", None)
    max_pixels = getattr(settings, "max_image_pixels", None)
    case_dir = Path(case_dir)
    root = Path(cases_root) if cases_root is not None else case_dir.parent
    real_dir = ensure_inside(case_dir, root)
    if not real_dir.is_dir():
        raise EmptyCaseError(f"case folder not found: {case_dir}")
    meta = _read_meta(real_dir)
    case = Case(id=case_dir.name, root=real_dir, meta=meta)
    for f in sorted(real_dir.rglob("*")):
        rel = f.relative_to(real_dir).as_posix()
        if f.name in _IGNORED_NAMES or any(part.startswith(".") for part in Path(rel).parts):
            continue
        if f.is_dir() and not f.is_symlink():
            continue
        try:
            real = ensure_inside(f, root)
            if real.is_dir():
                continue
            kind = classify_file(f)
            if kind is None and any(f.match(pat) for pat in TEXT_PATTERNS):
                case.texts.append(rel)
                continue
            if kind is None:
                log.warning("case %s: ignoring %s (unknown file type)", case.id, rel)
                case.ignored.append(rel)
                continue
            if max_file_bytes is not None and real.stat().st_size > max_file_bytes:
                raise FileTooLargeError(f"{rel}: {real.stat().st_size} bytes exceeds the limit of {max_file_bytes}")
            if real.stat().st_size == 0:
                raise CorruptImageError(f"{rel}: empty file")
            ensure_companions_inside(f, root)
            check_image(real, kind, max_pixels)
        except CaseError as exc:
            case.problems.append(CaseProblem(name=rel, code=exc.code, message=str(exc)))
            continue
        except OSError as exc:
            case.problems.append(CaseProblem(name=rel, code="unreadable", message=f"{rel}: {path_error_reason(exc)}"))
            continue
        case.images.append(CaseImage(name=rel, path=real, kind=kind))
    if not case.images:
        detail = "; ".join(p.message for p in case.problems) or "no image or slide files found"
        raise EmptyCaseError(f"case {case.id}: no usable images ({detail})")
    return case


def check_image(path: Path, kind: str, max_pixels: int | None) -> None:
    """Validate an image without keeping its pixels: raise a ``CaseError`` subclass with a clear reason."""
    if kind == "wsi":
        SlideReader(path).close()
        return
    verify_patch(path, max_pixels)


def single_image_case(path: Path, meta: CaseMeta | None = None, settings: Settings | None = None) -> Case:
    """A one-image case for ``pathasst ask IMAGE``: the image's folder is the root, the stem is the case id."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"file not found: {path}")
    kind = classify_file(path)
    if kind is None:
        raise UnsupportedFormatError(
            f"{path.name}: unsupported file type {path.suffix!r}; "
            f"supported: {', '.join(sorted(PATCH_EXTENSIONS | SLIDE_EXTENSIONS))}"
        )
    check_image(path, kind, getattr(settings, "max_image_pixels", None))
    return Case(
        id=path.stem,
        root=path.resolve().parent,
        meta=meta or CaseMeta(),
        images=[CaseImage(name=path.name, path=path.resolve(), kind=kind)],
    )
