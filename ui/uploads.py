"""Uploads: a new case folder from files sent by the browser, checked for size, type, content and readability.

File names are reduced to a safe base name (no folders, no leading dot) and the case folder is built in a hidden
temporary folder under the cases root, validated with ``load_case``, and renamed into place only when every file
is usable, so a refused upload leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml

from pathasst.core.cases import PATCH_EXTENSIONS, SLIDE_EXTENSIONS, Case, CaseError, ensure_inside, load_case
from pathasst.core.settings import Settings

__all__ = ["CASE_ID_RE", "UPLOAD_EXTENSIONS", "UploadError", "check_upload", "create_case"]

CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: single-file formats an upload may carry (multi-file slide formats such as .mrxs need their folder)
UPLOAD_EXTENSIONS = frozenset((PATCH_EXTENSIONS | SLIDE_EXTENSIONS) - {".mrxs", ".vms", ".vmu"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # also .svs .ndpi .scn .bif .svslide
_MAGIC: dict[str, tuple[bytes, ...]] = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".bmp": (b"BM",),
}


class UploadError(ValueError):
    """An upload was refused (size, type, name); the message says why."""


def check_upload(name: str, size: int, head: bytes, max_bytes: int) -> str:
    """The safe file name for an upload of ``size`` bytes starting with ``head``, or UploadError."""
    if size > max_bytes:
        raise UploadError(f"{name}: {size} bytes exceeds the upload limit of {max_bytes // 2**20} MB")
    if size == 0:
        raise UploadError(f"{name}: empty file")
    base = Path(name.replace("\\", "/")).name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    ext = Path(safe).suffix.lower()
    if not safe or ext not in UPLOAD_EXTENSIONS:
        raise UploadError(f"{name}: unsupported file type; allowed: {', '.join(sorted(UPLOAD_EXTENSIONS))}")
    if not any(head.startswith(m) for m in _MAGIC.get(ext, _TIFF_MAGIC)):
        raise UploadError(f"{name}: the content is not a {ext} file")
    return safe


def create_case(
    root: Path,
    case_id: str,
    files: list[tuple[str, bytes]],
    meta: dict[str, Any],
    settings: Settings,
    max_bytes: int,
) -> Path:
    """Create ``root/case_id`` from ``files`` (name, content) and ``meta`` (case.yaml keys); return the folder."""
    if not CASE_ID_RE.match(case_id or ""):
        raise UploadError("case id: letters, digits, '.', '_' and '-' only (up to 100), starting with a letter or digit")
    if not files:
        raise UploadError("no files")
    final = Path(root) / case_id
    if final.exists():
        raise UploadError(f"a case {case_id!r} already exists")
    names = [check_upload(n, len(data), data[:16], max_bytes) for n, data in files]
    if len(set(names)) != len(names):
        raise UploadError("two files have the same name")
    tmp = Path(root) / f".upload-{uuid.uuid4().hex[:8]}" / case_id
    tmp.mkdir(parents=True)
    try:
        for safe, (_, data) in zip(names, files, strict=True):
            ensure_inside(tmp / safe, tmp).write_bytes(data)
        meta = {k: v for k, v in meta.items() if v}
        if meta:
            (tmp / "case.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
        try:
            case: Case = load_case(tmp, root, settings)
        except CaseError as exc:
            raise UploadError(str(exc)) from exc
        if case.problems:
            raise UploadError("; ".join(p.message for p in case.problems))
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return final
