"""Retrieval evaluation: Acc@1, Acc@5 and majority vote at 5, as used by RetCCL, SISH and Yottixel.

For each query the library returns its ``k`` nearest items (the query itself never among them):

- **Acc@1**: the nearest item has the query's label.
- **Acc@5**: at least one of the 5 nearest items has the query's label.
- **mMV@5**: the majority label of the 5 nearest items is the query's label (a tie is won by the tied label that
  ranks first), averaged over queries. ``macro mMV@5`` averages the per-class values instead (class-balanced).

Two baselines are printed with them so a figure can be read: ``majority class`` (always answer the library's most
frequent label) and ``chance Acc@1`` (the expected Acc@1 of a random ranking: sum over classes of the query share times
the library share).
"""

from __future__ import annotations

import csv
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from pathasst.core.cases import PATCH_EXTENSIONS, CaseError, discover_cases, load_case
from pathasst.core.embedders import Embedder
from pathasst.core.readers import read_patch
from pathasst.core.settings import Settings
from pathasst.memory.ingest import case_image_vector, image_vectors
from pathasst.memory.store import CaseStore

__all__ = ["EvalResult", "evaluate_folders", "evaluate_vectors", "majority_vote", "read_labels", "retrieval_metrics"]


def majority_vote(ranked: Sequence[str]) -> str:
    """Most frequent label; a tie goes to the tied label that appears first in the ranking."""
    counts = Counter(ranked)
    top = max(counts.values())
    return next(lab for lab in ranked if counts[lab] == top)


def retrieval_metrics(query_labels: Sequence[str], neighbour_labels: Sequence[Sequence[str]], k: int = 5) -> dict[str, Any]:
    """Acc@1, Acc@k, mMV@k (over queries) and macro mMV@k (over classes) from ranked neighbour labels."""
    if len(query_labels) != len(neighbour_labels):
        raise ValueError("one ranked list of neighbour labels is needed per query")
    if not query_labels:
        raise ValueError("no queries")
    acc1, acck, mv = [], [], []
    for q, ranked in zip(query_labels, neighbour_labels, strict=True):
        top = list(ranked)[:k]
        acc1.append(bool(top) and top[0] == q)
        acck.append(q in top)
        mv.append(bool(top) and majority_vote(top) == q)
    mv_arr, ql = np.array(mv, dtype=float), np.array(query_labels, dtype=object)
    per_class = {str(c): float(mv_arr[ql == c].mean()) for c in sorted(set(query_labels))}
    return {
        "n_queries": len(query_labels),
        "acc@1": float(np.mean(acc1)),
        f"acc@{k}": float(np.mean(acck)),
        f"mmv@{k}": float(mv_arr.mean()),
        f"macro_mmv@{k}": float(np.mean(list(per_class.values()))),
        f"mv@{k}_per_class": per_class,
    }


class EvalResult(BaseModel):
    embedder: str
    n_library: int
    n_queries: int
    metrics: dict[str, Any]
    baselines: dict[str, float] = Field(default_factory=dict)
    skipped: list[str] = Field(default_factory=list, description="Items without a label or unreadable, and why.")
    seconds: dict[str, float] = Field(default_factory=dict)


def read_labels(path: Path) -> dict[str, str]:
    """``id -> label`` from a CSV with a header: an id column (``id``, ``case_id``, ``image`` or ``name``; file
    extensions are dropped) and a ``label`` column."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        id_col = next((c for c in ("id", "case_id", "image", "name") if c in cols), None)
        if id_col is None or "label" not in cols:
            raise ValueError(f"{path}: needs a header with an id column (id, case_id, image or name) and 'label'; got {cols}")
        out = {}
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if row.get(id_col) and row.get("label"):
                out[Path(row[id_col]).stem if Path(row[id_col]).suffix.lower() in PATCH_EXTENSIONS else row[id_col]] = row["label"]
    return out


def _items(folder: Path) -> list[tuple[str, Path | None]]:
    """``(id, image path)`` for a flat folder of images, or ``(case id, None)`` for a folder of case folders."""
    folder = Path(folder)
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PATCH_EXTENSIONS)
    if images:
        return [(p.stem, p) for p in images]
    return [(d.name, None) for d in discover_cases(folder)]


def _labelled(items: list[tuple[str, Path | None]], labels: dict[str, str], skipped: list[str]) -> list[tuple[str, Path | None]]:
    out = []
    for item_id, path in items:
        if item_id in labels:
            out.append((item_id, path))
        else:
            skipped.append(f"{item_id}: no label")
    return out


def _vectors(
    embedder: Embedder, folder: Path, ids: list[tuple[str, Path | None]], settings: Settings, skipped: list[str],
    progress: Callable[[int], None] | None,
) -> tuple[list[str], np.ndarray]:
    max_px = int(getattr(settings, "max_image_pixels", 120_000_000))
    keep, vecs = [], []
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if batch:
            v, _ = image_vectors(embedder, [px for _, px in batch])
            keep.extend(i for i, _ in batch)
            vecs.extend(v)
            if progress:
                progress(len(batch))
            batch.clear()

    for item_id, path in ids:
        try:
            if path is not None:
                batch.append((item_id, read_patch(path, max_px).pixels))
                if len(batch) >= embedder.batch_size:
                    flush()
            else:
                case = load_case(folder / item_id, folder, settings)
                v, _ = case_image_vector(embedder, case, case.images[0], settings)
                keep.append(item_id)
                vecs.append(v)
                if progress:
                    progress(1)
        except CaseError as exc:
            skipped.append(f"{item_id}: {exc}")
    flush()
    return keep, np.asarray(vecs, dtype=np.float32).reshape(len(keep), embedder.dimension)


def evaluate_vectors(
    embedder: Embedder,
    lib_ids: list[str],
    lib_vecs: np.ndarray,
    query_ids: list[str],
    query_vecs: np.ndarray,
    labels: dict[str, str],
    k: int = 5,
    store_dir: Path | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Store the library vectors in a real (embedded) Chroma store, query it, and score the rankings."""
    if set(lib_ids) & set(query_ids):
        raise ValueError(f"queries also in the library (leakage): {sorted(set(lib_ids) & set(query_ids))[:5]}")
    with tempfile.TemporaryDirectory(prefix="pathasst-eval-") as tmp:
        settings = SimpleNamespace(chroma_host=None, chroma_path=Path(store_dir or tmp))
        store = CaseStore.open(settings)
        name = f"pathasst-img-{embedder.name}"
        if name in {c["name"] for c in store.collections()}:
            store.drop_collection(name)
        store.upsert("image", embedder, lib_ids, lib_vecs, [{"case_id": i, "label": labels[i]} for i in lib_ids])
        ranked = [[h.metadata["label"] for h in store.query("image", embedder, v, k)] for v in query_vecs]
    metrics = retrieval_metrics([labels[q] for q in query_ids], ranked, k=k)
    lib_counts, q_counts = Counter(labels[i] for i in lib_ids), Counter(labels[q] for q in query_ids)
    majority = lib_counts.most_common(1)[0][0]
    baselines = {
        "majority_class": q_counts[majority] / len(query_ids),
        "chance_acc@1": sum(q_counts[c] / len(query_ids) * lib_counts[c] / len(lib_ids) for c in q_counts),
    }
    return metrics, baselines


def evaluate_folders(
    embedder: Embedder,
    library: Path,
    queries: Path,
    labels_csv: Path,
    settings: Settings,
    k: int = 5,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Embed a library folder and a query folder (images or case folders), retrieve, and compute the metrics."""
    labels = read_labels(labels_csv)
    skipped: list[str] = []
    lib_items, q_items = _labelled(_items(library), labels, skipped), _labelled(_items(queries), labels, skipped)
    if not lib_items or not q_items:
        raise ValueError(f"nothing to evaluate: {len(lib_items)} labelled library items, {len(q_items)} labelled queries")
    t0 = time.perf_counter()
    lib_ids, lib_vecs = _vectors(embedder, Path(library), lib_items, settings, skipped, progress)
    t1 = time.perf_counter()
    q_ids, q_vecs = _vectors(embedder, Path(queries), q_items, settings, skipped, progress)
    t2 = time.perf_counter()
    metrics, baselines = evaluate_vectors(embedder, lib_ids, lib_vecs, q_ids, q_vecs, labels, k=k)
    t3 = time.perf_counter()
    return EvalResult(
        embedder=embedder.fingerprint(),
        n_library=len(lib_ids),
        n_queries=len(q_ids),
        metrics=metrics,
        baselines=baselines,
        skipped=skipped,
        seconds={"embed": t2 - t0, "embed_per_image": (t2 - t0) / max(1, len(lib_ids) + len(q_ids)), "search": t3 - t2,
                 "library_embed": t1 - t0},
    )
