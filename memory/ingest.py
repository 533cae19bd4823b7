"""Case ingestion: case folders -> image and text vectors (+ metadata, thumbnails) in the case store.

- **Images**: a patch up to twice the embedder's tile size is embedded whole; a larger patch is cut into a grid of
  tiles (native resolution, tiles with >= 50% tissue), a whole slide into tissue tiles read at 0.5 um/px (level 0
  when the slide has no mpp); at most ``MAX_TILES`` tiles, spread evenly, are embedded and their unit vectors averaged
  and re-normalised into one vector per image (the same function embeds library images and queries).
- **Texts**: ``report*.md``, ``report*.txt`` and ``caption*.txt``/``caption*.md`` files of the case folder, and a
  summary of ``case.yaml`` (diagnosis, organ, stain, notes). Retrieved text is data for the planner, never
  instructions.
- **Resumable**: every record carries a fingerprint of the case's files and of the embedders; a case whose records
  all carry the current fingerprint is skipped, a changed one is replaced. Cases are embedded and written in batches
  of 16 (one batched forward pass per model); a killed run loses at most the batch in progress.
- **Bad input is listed, never fatal**: unreadable images are skipped (the case keeps its good images); a case with
  no usable image is reported as failed and the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathasst.core.cases import Case, CaseError, CaseImage, discover_cases, load_case
from pathasst.core.embedders import Embedder, l2_normalise
from pathasst.core.imaging import tissue_mask
from pathasst.core.readers import SlideReader, read_patch
from pathasst.core.regions import Region
from pathasst.core.settings import Settings
from pathasst.memory.store import CaseStore

__all__ = [
    "MAX_TILES",
    "SLIDE_MPP",
    "CaseIngest",
    "IngestReport",
    "case_fingerprint",
    "case_image_vector",
    "case_texts",
    "case_image_tiles",
    "embed_tile_groups",
    "image_vectors",
    "ingest_case",
    "ingest_cases",
    "slide_tiles",
    "write_thumbnail",
]

log = logging.getLogger(__name__)

#: most tiles embedded per image (spread evenly over the tissue); the same for library images and queries
MAX_TILES = 16
#: resolution (microns per pixel) at which tiles of whole slides are read
SLIDE_MPP = 0.5
MIN_TISSUE = 0.5
MAX_TEXT_CHARS = 20_000
TEXT_PATTERNS = ("report*.md", "report*.txt", "caption*.txt", "caption*.md")
THUMB_SIZE = 256


# --- vectors ----------------------------------------------------------------------------------------
def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` items spread evenly over the sequence (deterministic)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def _tiles(pixels: np.ndarray, tile: int) -> list[np.ndarray]:
    """Native-resolution grid tiles of a large patch holding >= ``MIN_TISSUE`` tissue (all tiles if none do)."""
    h, w = pixels.shape[:2]
    mask = tissue_mask(pixels)
    grid = [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
    keep = [(y, x) for y, x in grid if mask[y : y + tile, x : x + tile].mean() >= MIN_TISSUE] or grid
    return [pixels[y : y + tile, x : x + tile] for y, x in _spread(keep, MAX_TILES)]


def _patch_tiles(pixels: np.ndarray, embedder: Embedder) -> list[np.ndarray]:
    """What the embedder sees of one patch: the patch itself, or its tissue tiles when it is large."""
    h, w = pixels.shape[:2]
    return [pixels] if max(h, w) <= 2 * embedder.tile_size else _tiles(pixels, embedder.tile_size)


def slide_tiles(embedder: Embedder, path: Path, mpp: float | None, max_pixels: int) -> list[np.ndarray]:
    """Up to ``MAX_TILES`` tissue tiles of a whole slide read at ``SLIDE_MPP`` (the thumbnail if no tissue is found)."""
    with SlideReader(path, mpp=mpp) as slide:
        ds = max(1.0, SLIDE_MPP / slide.mpp) if slide.mpp else 1.0
        tile0 = max(1, round(embedder.tile_size * ds))
        specs = _spread(list(slide.tissue_tiles(tile0, min_tissue=MIN_TISSUE)), MAX_TILES)
        if not specs:
            return [slide.thumbnail(max(embedder.tile_size, 512))[0]]
        return [
            slide.read_region(Region(x=t.x, y=t.y, width=t.width, height=t.height), ds, max_pixels).pixels for t in specs
        ]


def case_image_tiles(embedder: Embedder, case: Case, image: CaseImage, settings: Settings) -> list[np.ndarray]:
    """The tiles one case image (patch or slide) is embedded from. Raises ``CaseError`` for a bad file."""
    mpp = case.meta.mpp or getattr(settings, "default_mpp", None)
    if image.kind == "wsi":
        return slide_tiles(embedder, image.path, mpp, int(getattr(settings, "max_region_pixels", 16_777_216)))

    px = read_patch(image.path, int(getattr(settings, "max_image_pixels", 120_000_000)), mpp=mpp).pixels
    return _patch_tiles(px, embedder)


def embed_tile_groups(embedder: Embedder, groups: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """One unit vector per group of tiles (the re-normalised mean of its tiles), all tiles embedded in batches."""
    flat = [t for g in groups for t in g]
    if not flat:
        return np.zeros((0, embedder.dimension), np.float32)
    vecs = embedder.embed_images(flat)
    out, i = [], 0
    for g in groups:
        out.append(vecs[i : i + len(g)].mean(axis=0))
        i += len(g)
    return l2_normalise(np.stack(out))


def image_vectors(embedder: Embedder, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """One unit vector per RGB image (big images tiled and averaged) and the number of tiles behind each."""
    groups = [_patch_tiles(px, embedder) for px in images]
    return embed_tile_groups(embedder, groups), [len(g) for g in groups]


def case_image_vector(embedder: Embedder, case: Case, image: CaseImage, settings: Settings) -> tuple[np.ndarray, int]:
    """The vector of one case image (patch or slide) and its tile count. Raises ``CaseError`` for a bad file."""
    tiles = case_image_tiles(embedder, case, image, settings)
    return embed_tile_groups(embedder, [tiles])[0], len(tiles)


# --- texts, thumbnails, fingerprints ------------------------------------------------------------------
def _text_files(case: Case) -> list[Path]:
    found: dict[str, Path] = {}
    for pattern in TEXT_PATTERNS:
        for p in sorted(case.root.glob(pattern)):
            if p.is_file() and not p.is_symlink():
                found[p.name] = p
    return [found[k] for k in sorted(found)]


def case_texts(case: Case) -> list[tuple[str, str]]:
    """``(source, text)`` pairs: a summary of ``case.yaml`` and the case's report/caption files."""
    out: list[tuple[str, str]] = []
    m = case.meta
    parts = [f"{k}: {v}" for k, v in (("diagnosis", m.diagnosis), ("organ", m.organ), ("stain", m.stain), ("notes", m.notes)) if v]
    if parts:
        out.append(("case.yaml", "; ".join(parts)))
    for p in _text_files(case):
        try:
            text = p.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            log.warning("case %s: cannot read %s (%s)", case.id, p.name, exc)
            continue
        if text:
            out.append((p.name, text[:MAX_TEXT_CHARS]))
    return out


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:80] + "-" + hashlib.sha1(s.encode()).hexdigest()[:8]


def write_thumbnail(case: Case, image: CaseImage, settings: Settings, dest_dir: Path) -> Path | None:
    """A PNG thumbnail (longer side 256 px) of a case image under ``dest_dir``; None if it cannot be made."""
    from PIL import Image

    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{_safe(case.id + '/' + image.name)}.png"
    try:
        if image.kind == "wsi":
            with SlideReader(image.path) as s:
                px = s.thumbnail(THUMB_SIZE)[0]
        else:
            px = read_patch(image.path, int(getattr(settings, "max_image_pixels", 120_000_000))).pixels
        im = Image.fromarray(px)
        im.thumbnail((THUMB_SIZE, THUMB_SIZE))
        tmp = dest.with_suffix(".tmp.png")
        im.save(tmp)
        tmp.replace(dest)
    except (CaseError, OSError, ValueError) as exc:
        log.warning("case %s: no thumbnail for %s (%s)", case.id, image.name, exc)
        return None
    return dest.resolve()


def case_fingerprint(case: Case, embedders: Sequence[Embedder]) -> str:
    """Hash of the case's files (names, sizes, modification times, case.yaml) and the embedders' fingerprints."""
    h = hashlib.sha256()
    for e in embedders:
        h.update(e.fingerprint().encode())
    files = [i.path for i in case.images] + _text_files(case)
    for name in ("case.yaml", "case.yml"):
        if (case.root / name).is_file():
            files.append(case.root / name)
    for p in sorted(set(files)):
        try:
            st = p.stat()
            h.update(f"{p.relative_to(case.root) if p.is_relative_to(case.root) else p}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{p}|missing".encode())
    return h.hexdigest()[:24]


# --- ingestion --------------------------------------------------------------------------------------
@dataclass
class CaseIngest:
    case_id: str
    status: Literal["added", "unchanged", "failed"]
    images: int = 0
    texts: int = 0
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""


@dataclass
class IngestReport:
    cases: list[CaseIngest] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for c in self.cases if c.status == status)

    @property
    def images(self) -> int:
        return sum(c.images for c in self.cases)

    @property
    def bad_files(self) -> list[tuple[str, str]]:
        return [(f"{c.case_id}/{name}", why) for c in self.cases for name, why in c.bad_files]


def _base_meta(case: Case, fingerprint: str, added_at: str) -> dict[str, Any]:
    date = case.meta.extra.get("date")
    return {
        "case_id": case.id,
        "organ": case.meta.organ,
        "stain": case.meta.stain,
        "diagnosis": case.meta.diagnosis,
        "date": str(date) if date is not None else None,
        "added_at": added_at,
        "fingerprint": fingerprint,
    }


def _unchanged(store: CaseStore, case_id: str, fp: str, expected: dict[str, tuple[Embedder, set[str]]]) -> bool:
    for modality, (emb, ids) in expected.items():
        hits = store.get(modality, emb, where={"case_id": case_id})  # type: ignore[arg-type]
        if {h.id for h in hits} != ids or any(h.metadata.get("fingerprint") != fp for h in hits):
            return False
    return True


@dataclass
class _Pending:
    """A case read and tiled, waiting for the batched embedding and the write."""

    case: Case
    meta: dict[str, Any]
    images: list[tuple[CaseImage, list[np.ndarray], Path | None]]
    texts: list[tuple[str, str]]
    bad: list[tuple[str, str]]


class _Ingestor:
    """Reads cases one by one and embeds/writes them in batches (``batch_cases`` at a time)."""

    def __init__(self, store: CaseStore, settings: Settings, image_embedder: Embedder, text_embedder: Embedder | None,
                 thumbnails: Path | None, force: bool, done: Callable[[CaseIngest], None], batch_cases: int) -> None:
        self.store, self.settings, self.iemb, self.temb = store, settings, image_embedder, text_embedder
        self.thumbnails, self.force, self.done, self.batch_cases = thumbnails, force, done, batch_cases
        self.pending: list[_Pending] = []

    def add(self, case: Case) -> None:
        embedders = [self.iemb] + ([self.temb] if self.temb is not None else [])
        fp = case_fingerprint(case, embedders)
        texts = case_texts(case) if self.temb is not None else []
        bad = [(p.name, f"{p.code}: {p.message}") for p in case.problems]
        expected: dict[str, tuple[Embedder, set[str]]] = {"image": (self.iemb, {f"{case.id}/{i.name}" for i in case.images})}
        if texts and self.temb is not None:
            expected["text"] = (self.temb, {f"{case.id}/text/{src}" for src, _ in texts})
        if not self.force and _unchanged(self.store, case.id, fp, expected):
            self.done(CaseIngest(case.id, "unchanged", images=len(case.images), texts=len(texts), bad_files=bad))
            return
        images = []
        for img in case.images:
            try:
                tiles = case_image_tiles(self.iemb, case, img, self.settings)
            except CaseError as exc:
                bad.append((img.name, f"{getattr(exc, 'code', 'unreadable')}: {exc}"))
                continue
            thumb = write_thumbnail(case, img, self.settings, self.thumbnails) if self.thumbnails is not None else None
            images.append((img, tiles, thumb))
        if not images:
            self.done(CaseIngest(case.id, "failed", bad_files=bad, reason="no image could be embedded"))
            return
        added_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.pending.append(_Pending(case, _base_meta(case, fp, added_at), images, texts, bad))
        if len(self.pending) >= self.batch_cases:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        ivecs = embed_tile_groups(self.iemb, [tiles for p in batch for _, tiles, _ in p.images])
        all_texts = [t for p in batch for _, t in p.texts]
        tvecs = self.temb.embed_texts(all_texts) if self.temb is not None and all_texts else None
        ids, metas, tids, tmetas, tdocs = [], [], [], [], []
        for p in batch:
            self.store.delete_case(p.case.id)  # a changed case is replaced whole (removed images disappear)
            for img, tiles, thumb in p.images:
                ids.append(f"{p.case.id}/{img.name}")
                metas.append({**p.meta, "image": img.name, "kind": img.kind, "source_path": str(img.path),
                              "n_tiles": len(tiles), "thumbnail": str(thumb) if thumb else None, "embedder": self.iemb.name})
            for src, text in p.texts:
                tids.append(f"{p.case.id}/text/{src}")
                tmetas.append({**p.meta, "source": src, "embedder": self.temb.name if self.temb else None})
                tdocs.append(text)
        self.store.upsert("image", self.iemb, ids, ivecs, metas)
        if tvecs is not None and self.temb is not None:
            self.store.upsert("text", self.temb, tids, tvecs, tmetas, documents=tdocs)
        for p in batch:
            self.done(CaseIngest(p.case.id, "added", images=len(p.images), texts=len(p.texts), bad_files=p.bad))


class _QuietTextFiles(logging.Filter):
    """Case loading warns about unknown files; report/caption files are read here on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("ignoring" in msg and re.search(r"\b(report|caption)[^/\s]*\.(md|txt)\b", msg))


def ingest_case(
    store: CaseStore,
    case: Case,
    settings: Settings,
    image_embedder: Embedder,
    text_embedder: Embedder | None,
    thumbnails: Path | None,
    force: bool = False,
) -> CaseIngest:
    """Embed and store one loaded case (idempotent: an unchanged case is skipped unless ``force``)."""
    results: list[CaseIngest] = []
    ing = _Ingestor(store, settings, image_embedder, text_embedder, thumbnails, force, results.append, 1)
    ing.add(case)
    ing.flush()
    return results[0]


def ingest_cases(
    store: CaseStore,
    cases_dir: Path,
    settings: Settings,
    image_embedder: Embedder,
    text_embedder: Embedder | None,
    thumbnails: Path | None,
    force: bool = False,
    progress: Callable[[CaseIngest, int, int], None] | None = None,
    batch_cases: int = 16,
) -> IngestReport:
    """Ingest every case folder under ``cases_dir``; ``progress(result, done, total)`` after each case.

    Cases are embedded and written ``batch_cases`` at a time (one batched forward pass per model); a killed run
    loses at most that batch, and the next run redoes only the cases not written.
    """
    t0 = time.perf_counter()
    dirs = discover_cases(Path(cases_dir))
    report = IngestReport()

    def done(res: CaseIngest) -> None:
        report.cases.append(res)
        if progress is not None:
            progress(res, len(report.cases), len(dirs))

    ing = _Ingestor(store, settings, image_embedder, text_embedder, thumbnails, force, done, batch_cases)
    quiet = _QuietTextFiles()
    case_log = logging.getLogger("pathasst.core.cases")
    case_log.addFilter(quiet)
    try:
        for d in dirs:
            try:
                case = load_case(d, Path(cases_dir), settings)
            except CaseError as exc:
                done(CaseIngest(d.name, "failed", reason=f"{type(exc).__name__}: {exc}"))
                continue
            ing.add(case)
        ing.flush()
    finally:
        case_log.removeFilter(quiet)
    report.seconds = time.perf_counter() - t0
    return report
