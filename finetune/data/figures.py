"""Figure and caption extraction for the training data (issue 29, item 3): sources in, image-caption pairs out.

:func:`extract_figures` reads a PubMed Central JATS article (``.nxml`` / ``.xml``, images next to it), a PMC
open-access package (a folder, or a ``.tar.gz``), a ``.docx``, a ``.pdf``, or a folder of any of these (searched
recursively, one source at a time). It writes ``<article-id>__<figure-id>.<ext>`` images and one JSON line per
figure to ``out_dir/pairs.jsonl``::

    {"id", "image" (relative to out_dir, or null with a "problem"), "label", "caption", "problem" (only when one),
     "source": {"file", "format": "jats"|"docx"|"pdf", "article_id", "figure_id", "licence", "licence_url"}}

Resumable: ids already in ``pairs.jsonl`` are skipped; the rows of one source are appended in one write followed by
flush + fsync, after its images were written (each to a temp file, then ``os.replace``). A run killed half way
therefore loses nothing already written and a rerun finishes the rest; a torn last line (a kill inside the write) is
cut off and reported. Parsers: :mod:`pathasst.finetune.data.figures_xml` (JATS, DOCX) and
:mod:`pathasst.finetune.data.figures_pdf` (PDF, with its limits). Tar members are never extracted to disk: they are
read in memory, and a package with an absolute, ``..``, link or special-file member is refused whole.

Bad input never stops a folder run: each unreadable source is a ``problems`` entry of the summary. A single ``src``
that cannot be read raises :class:`~pathasst.finetune.data.readers.DataError`.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import zlib
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import Any

from pathasst.core.files import atomic_write_bytes, cut_torn_tail
from pathasst.finetune.data.figures_pdf import parse_pdf
from pathasst.finetune.data.figures_xml import ZIP_ERRORS, ImageFinder, ParsedDoc, parse_docx, parse_jats
from pathasst.finetune.data.readers import DataError, RecordProblem

__all__ = ["DEFAULT_MAX_BYTES", "IMAGE_EXTS", "PAIRS_FILE", "extract_figures", "find_sources", "source_kind"]

DEFAULT_MAX_BYTES = 500 * 1024 * 1024
PAIRS_FILE = "pairs.jsonl"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def source_kind(path: Path) -> str | None:
    """"jats" | "tar" | "docx" | "pdf" from the file name, or None for an unsupported file."""
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "tar"
    return {".nxml": "jats", ".xml": "jats", ".docx": "docx", ".pdf": "pdf"}.get(path.suffix.lower())


def find_sources(folder: Path, skip: Path | None = None) -> list[Path]:
    """Supported source files under ``folder`` (recursive, sorted; hidden entries and ``skip`` left out)."""
    skip = skip.resolve() if skip is not None else None
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or (skip is not None and skip in path.resolve().parents):
            continue
        if path.is_file() and source_kind(path) is not None:
            found.append(path)
    return found


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._") or "x"


def _fail(source: Path | str, reason: str) -> DataError:
    return DataError(source, [RecordProblem("file", reason)])


# --------------------------------------------------------------------------------------------------- image lookup
def _finder(names: dict[str, Any], read) -> ImageFinder:
    """Look a graphic href up among ``names`` (lower-case base name -> handle), trying the usual extensions."""

    def find(href: str):
        base = PurePosixPath(href.replace("\\", "/")).name.lower()
        candidates = [base] if base.endswith(IMAGE_EXTS) else []
        candidates += [base + ext for ext in IMAGE_EXTS]
        for cand in candidates:
            if cand in names:
                handle = names[cand]
                return os.path.splitext(cand)[1], (lambda h=handle: read(h))
        return None

    return find


def _load_jats_file(path: Path) -> list[ParsedDoc]:
    names = {p.name.lower(): p for p in path.parent.iterdir() if p.is_file()}
    return [parse_jats(path.read_bytes(), path, path.stem, _finder(names, Path.read_bytes))]


def _tar_problem(m: tarfile.TarInfo) -> str | None:
    name = m.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return f"absolute member path '{m.name}'"
    if ".." in PurePosixPath(name).parts:
        return f"member path escapes the package: '{m.name}'"
    if m.issym() or m.islnk():
        return f"link member '{m.name}' -> '{m.linkname}'"
    if not (m.isfile() or m.isdir()):
        return f"special-file member '{m.name}'"
    return None


def _load_tar(path: Path, max_bytes: int, stack: ExitStack) -> list[ParsedDoc]:
    try:
        tf = stack.enter_context(tarfile.open(path, "r:*"))
        members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _fail(path, f"not a readable tar.gz package: {exc}") from None
    bad = [p for p in (_tar_problem(m) for m in members) if p]
    if bad:
        raise DataError(path, [RecordProblem("file", f"refused unsafe package: {b}") for b in bad])
    files = [m for m in members if m.isfile()]
    total = sum(m.size for m in files)
    if total > max_bytes:
        raise _fail(path, f"package unpacks to {total} bytes, over the max_bytes cap {max_bytes}")
    articles = [m for m in files if m.name.lower().endswith(".nxml")] or [
        m for m in files if m.name.lower().endswith(".xml")]
    if not articles:
        raise _fail(path, "no .nxml/.xml article in the package")

    def read(m: tarfile.TarInfo) -> bytes:
        fh = tf.extractfile(m)
        return fh.read() if fh is not None else b""

    docs = []
    for art in articles:
        folder = PurePosixPath(art.name).parent
        names = {PurePosixPath(m.name).name.lower(): m for m in files if PurePosixPath(m.name).parent == folder}
        source = f"{path}!{art.name}"
        docs.append(parse_jats(read(art), source, PurePosixPath(art.name).stem, _finder(names, read)))
    return docs


def _load(path: Path, kind: str, max_bytes: int, stack: ExitStack) -> list[ParsedDoc]:
    size = path.stat().st_size
    if size > max_bytes:
        raise _fail(path, f"file is {size} bytes, over the max_bytes cap {max_bytes}")
    if kind == "jats":
        return _load_jats_file(path)
    if kind == "tar":
        return _load_tar(path, max_bytes, stack)
    if kind == "docx":
        return [parse_docx(path, max_bytes, stack)]
    return [parse_pdf(path)]


# --------------------------------------------------------------------------------------------------- output
class _PairsFile:
    """``pairs.jsonl``: the ids already there, and whole-line appends made durable with flush + fsync."""

    def __init__(self, path: Path, problems: list[dict[str, Any]]) -> None:
        self.path = path
        self.ids: set[str] = set()
        if not path.exists():
            return
        cut = cut_torn_tail(path)
        if cut:
            problems.append({"file": str(path), "figure": None,
                             "reason": f"cut a torn last line ({cut} bytes) left by an interrupted run"})
        data = path.read_bytes()
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            try:
                row = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:
                problems.append({"file": str(path), "figure": None, "reason": f"line {n} is not JSON; ignored"})
                continue
            if isinstance(row, dict) and row.get("id"):
                self.ids.add(str(row["id"]))

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())
        self.ids.update(r["id"] for r in rows)


# --------------------------------------------------------------------------------------------------- driver
def _new_summary(pairs: Path) -> dict[str, Any]:
    return {"pairs_file": str(pairs), "files": 0, "files_failed": 0, "figures": 0, "written": 0,
            "skipped_existing": 0, "missing_images": 0, "no_caption": 0, "limit_reached": False,
            "by_format": {}, "problems": []}


def _rows(doc: ParsedDoc, file: str, out_dir: Path, pairs: _PairsFile, summary: dict, budget: int | None) -> list:
    """The new rows of one parsed source, with their images written; stops at ``budget`` rows."""
    fmt = summary["by_format"].setdefault(doc.format, {"files": 0, "figures": 0})
    fmt["files"] += 1
    fmt["figures"] += len(doc.figures)
    summary["figures"] += len(doc.figures)
    for reason in doc.problems:
        summary["problems"].append({"file": file, "figure": None, "reason": reason})
    rows: list[dict[str, Any]] = []
    fresh: set[str] = set()
    for fig in doc.figures:
        rid = f"{_safe(doc.article_id)}__{_safe(fig.figure_id)}"
        if rid in pairs.ids or rid in fresh:
            summary["skipped_existing"] += 1
            if rid in fresh:
                summary["problems"].append({"file": file, "figure": rid, "reason": "duplicate figure id; skipped"})
            continue
        if budget is not None and len(rows) >= budget:
            summary["limit_reached"] = True
            break
        problems = list(fig.problems)
        image = None
        if fig.read_image is not None:
            image = f"{rid}{fig.image_ext or ''}"
            try:
                atomic_write_bytes(out_dir / image, fig.read_image())
            except (OSError, tarfile.TarError, DataError, *ZIP_ERRORS) as exc:
                image = None
                problems.append(f"image not readable: {exc}")
        if image is None:
            summary["missing_images"] += 1
        if not fig.caption:
            summary["no_caption"] += 1
            problems.append("no caption")
        row = {"id": rid, "image": image, "label": fig.label, "caption": fig.caption,
               "source": {"file": file, "format": doc.format, "article_id": doc.article_id,
                          "figure_id": fig.figure_id, "licence": fig.licence or doc.licence,
                          "licence_url": fig.licence_url or doc.licence_url}}
        if problems:
            row["problem"] = "; ".join(problems)
            summary["problems"].extend({"file": file, "figure": rid, "reason": p} for p in problems)
        rows.append(row)
        fresh.add(rid)
    return rows


def extract_figures(src: Path, out_dir: Path, limit: int | None = None, *,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Extract figure images and captions from ``src`` into ``out_dir`` (see the module docstring); the summary.

    ``limit`` stops the run after that many new pairs (a rerun goes on from there); ``max_bytes`` refuses larger
    sources (and tar / docx members). Raises :class:`DataError` when a single-file ``src`` cannot be read, or when
    ``src`` is missing, unsupported or a folder holding no supported file.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise _fail(src, "no such file or folder")
    if src.is_dir():
        sources = find_sources(src, skip=out_dir)
        if not sources:
            raise _fail(src, "no .nxml, .xml, .tar.gz, .docx or .pdf file in the folder")
    elif source_kind(src) is None:
        raise _fail(src, "unsupported format (expected .nxml, .xml, .tar.gz, .tgz, .docx or .pdf)")
    else:
        sources = [src]
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _new_summary(out_dir / PAIRS_FILE)
    pairs = _PairsFile(out_dir / PAIRS_FILE, summary["problems"])
    for path in sources:
        if limit is not None and summary["written"] >= limit:
            summary["limit_reached"] = True
            break
        summary["files"] += 1
        with ExitStack() as stack:
            try:
                docs = _load(path, source_kind(path) or "", max_bytes, stack)
            except (DataError, OSError) as exc:
                if not src.is_dir():
                    raise exc if isinstance(exc, DataError) else _fail(path, f"cannot read: {exc}") from None
                summary["files_failed"] += 1
                reasons = ([p.reason if p.record == "file" else str(p) for p in exc.problems]
                           if isinstance(exc, DataError) else [f"cannot read: {exc}"])
                summary["problems"].extend({"file": str(path), "figure": None, "reason": r} for r in reasons)
                continue
            rows: list[dict[str, Any]] = []
            for doc in docs:
                file = str(path) if doc.format != "jats" or len(docs) == 1 else f"{path}!{doc.article_id}"
                budget = None if limit is None else limit - summary["written"] - len(rows)
                rows += _rows(doc, file, out_dir, pairs, summary, budget)
            pairs.append(rows)
            summary["written"] += len(rows)
    return summary
