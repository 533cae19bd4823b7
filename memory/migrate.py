"""Copy the case library from one Chroma database to another: an embedded folder to a server, or back.

``pathasst library migrate`` calls :func:`migrate`. Every PathAsst collection (``pathasst-...``) of the source is
copied with its ids, embeddings, documents and metadatas, and created in the target with the source's collection
metadata (embedder, fingerprint, dimension) and HNSW configuration (cosine space). Records are read in pages
(``get(limit=, offset=)``); each page is compared with what the target already holds and only new or changed records
are upserted, so the copy is idempotent: a rerun writes nothing, and a rerun after an interruption completes it.
Before anything is written every target collection that already exists is checked: one built with another embedder,
fingerprint, dimension or distance space is refused (:class:`~pathasst.memory.store.MixedEmbeddersError`, naming the
collection). At the end the record counts of source and target are compared per collection.

Thumbnails are files, not Chroma records: the copied metadata keeps the source's thumbnail paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, computed_field, model_validator

from pathasst.memory.store import CaseStore, LibraryUnavailableError, MixedEmbeddersError, StoreError

__all__ = ["CollectionMigration", "Endpoint", "MigrationError", "MigrationReport", "migrate"]

#: collection metadata that must agree between source and an existing target collection
IDENTITY_KEYS = ("embedder", "fingerprint", "dimension", "modality")
#: tolerance when deciding whether a stored vector already equals the source's (Chroma stores float32)
EMBEDDING_ATOL = 1e-6
INCLUDE = ["embeddings", "documents", "metadatas"]

#: ``progress(collection name, records read so far, records in the source collection)``
Progress = Callable[[str, int, int], None]


class MigrationError(StoreError):
    """The migration cannot start: bad endpoints, a missing source library."""


class Endpoint(BaseModel):
    """One Chroma database: an embedded library folder or a server."""

    path: Path | None = Field(None, description="Embedded library folder (PersistentClient); None for a server.")
    host: str | None = Field(None, description="Chroma server host; None for an embedded folder.")
    port: int = Field(8000, description="Chroma server port.")

    @model_validator(mode="after")
    def _one_kind(self) -> Endpoint:
        if (self.path is None) == (self.host is None):
            raise ValueError("a library is either a folder (path) or a server (host), not both or neither")
        return self

    @property
    def label(self) -> str:
        return f"http://{self.host}:{self.port}" if self.host else str(Path(self.path or ".").resolve())

    def same_as(self, other: Endpoint) -> bool:
        if self.host or other.host:
            return (str(self.host).lower(), self.port) == (str(other.host).lower(), other.port)
        return Path(self.path or ".").resolve() == Path(other.path or ".").resolve()

    def _settings(self) -> SimpleNamespace:
        return SimpleNamespace(chroma_path=self.path, chroma_host=self.host, chroma_port=self.port)

    def exists(self) -> bool:
        """A server, or a folder that holds a Chroma database (checked without creating anything)."""
        return CaseStore.exists(self._settings())

    def open(self, create: bool) -> CaseStore:
        """The store at this endpoint; an embedded source that holds no library is an error, not a new folder."""
        if not create and not self.exists():
            raise MigrationError(f"no case library at {self.label} (no chroma.sqlite3 in that folder)")
        return CaseStore.open(self._settings())


class CollectionMigration(BaseModel):
    """What the migration did to one collection."""

    name: str = Field(description="Collection name, e.g. pathasst-img-hed-texture-v1.")
    embedder: str | None = Field(None, description="Embedder fingerprint recorded in the collection metadata.")
    dimension: int | None = Field(None, description="Vector dimension recorded in the collection metadata.")
    space: str | None = Field(None, description="HNSW distance space (cosine for PathAsst collections).")
    created: bool = Field(description="The target collection did not exist (in a dry run: would be created).")
    source_count: int = Field(description="Records in the source collection.")
    target_before: int = Field(description="Records in the target collection before the migration.")
    copied: int = Field(description="Records written (new or changed); in a dry run, records that would be written.")
    unchanged: int = Field(description="Records already present in the target with equal contents.")
    target_after: int = Field(description="Records in the target collection at the end (unchanged by a dry run).")
    status: Literal["ok", "mismatch", "dry-run"] = Field(
        description="ok: counts equal after copying; mismatch: they differ (the target holds other records too); "
        "dry-run: nothing written, nothing verified."
    )


class MigrationReport(BaseModel):
    """The outcome of one ``pathasst library migrate``."""

    source: str = Field(description="Source library (folder or server URL).")
    target: str = Field(description="Target library (folder or server URL).")
    dry_run: bool = Field(description="Nothing was written.")
    batch: int = Field(description="Records read per page.")
    seconds: float = Field(description="Wall time of the migration.")
    collections: list[CollectionMigration] = Field(description="One entry per PathAsst collection of the source.")

    @computed_field(description="Every collection's record count is equal in source and target (never in a dry run).")
    @property
    def verified(self) -> bool:
        return not self.dry_run and all(c.status == "ok" for c in self.collections)

    @computed_field(description="Records written (or, in a dry run, to write) over all collections.")
    @property
    def copied(self) -> int:
        return sum(c.copied for c in self.collections)


def _space(col: Any) -> str | None:
    hnsw = (getattr(col, "configuration_json", None) or {}).get("hnsw")
    return (hnsw or {}).get("space") or (col.metadata or {}).get("hnsw:space")


def _configuration(col: Any) -> dict[str, Any] | None:
    """The source's index configuration (HNSW parameters, cosine space) in a form ``create_collection`` accepts."""
    hnsw = (getattr(col, "configuration_json", None) or {}).get("hnsw")
    if hnsw:
        return {"hnsw": {k: v for k, v in hnsw.items() if v is not None}}
    space = _space(col)
    return {"hnsw": {"space": space}} if space else None


def _refuse_mismatch(src: Any, dst: Any) -> None:
    have, want = dict(dst.metadata or {}), dict(src.metadata or {})
    diff = {k: (have.get(k), want.get(k)) for k in IDENTITY_KEYS if have.get(k) != want.get(k)}
    if _space(dst) != _space(src):
        diff["space"] = (_space(dst), _space(src))
    if diff:
        detail = "; ".join(f"{k}: target {t!r}, source {s!r}" for k, (t, s) in diff.items())
        raise MixedEmbeddersError(
            f"target collection {dst.name!r} was built differently from the source ({detail}); refusing to mix "
            f"them. Drop it on the target (`pathasst library delete --collection {dst.name}` with "
            "PATHASST_CHROMA_HOST/PATH pointing at the target) or migrate into another target."
        )


def _same(a: Any, b: Any) -> bool:
    return a == b or (not a and not b)  # None and {} / "" read back alike


def _changed(page: dict[str, Any], held: dict[str, Any]) -> list[int]:
    """Indices of the page's records that the target lacks or holds with other contents."""
    have = {i: k for k, i in enumerate(held["ids"])}
    out = []
    for k, rid in enumerate(page["ids"]):
        j = have.get(rid)
        if (
            j is None
            or not _same(page["documents"][k], held["documents"][j])
            or not _same(page["metadatas"][k], held["metadatas"][j])
            or not np.allclose(page["embeddings"][k], held["embeddings"][j], rtol=0, atol=EMBEDDING_ATOL)
        ):
            out.append(k)
    return out


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from chromadb.errors import ChromaError

    return (httpx.TransportError, ChromaError)


def _copy(
    src: Any, dst: Any | None, batch: int, write: bool, write_step: int, progress: Progress | None
) -> tuple[int, int]:
    """Page through ``src`` and upsert what ``dst`` lacks; (copied or to copy, unchanged)."""
    total, offset, copied, unchanged = src.count(), 0, 0, 0
    dimension = (src.metadata or {}).get("dimension")
    while offset < total:
        page = src.get(limit=batch, offset=offset, include=INCLUDE)
        ids = page["ids"]
        if not ids:
            break
        emb = np.asarray(page["embeddings"], dtype=np.float32)
        if dimension is not None and emb.shape[1] != int(dimension):
            raise MixedEmbeddersError(
                f"source collection {src.name!r} records dimension {dimension} but holds vectors of {emb.shape[1]}"
            )
        page["embeddings"] = emb
        page["documents"] = page.get("documents") or [None] * len(ids)
        page["metadatas"] = page.get("metadatas") or [None] * len(ids)
        todo = list(range(len(ids)))
        if dst is not None:
            held = dst.get(ids=ids, include=INCLUDE)
            held["documents"] = held.get("documents") or [None] * len(held["ids"])
            held["metadatas"] = held.get("metadatas") or [None] * len(held["ids"])
            todo = _changed(page, held)
        if write and todo:
            for i in range(0, len(todo), write_step):
                sel = todo[i : i + write_step]
                dst.upsert(
                    ids=[ids[k] for k in sel],
                    embeddings=emb[sel],
                    documents=[page["documents"][k] for k in sel],
                    metadatas=[page["metadatas"][k] or None for k in sel],
                )
        copied += len(todo)
        unchanged += len(ids) - len(todo)
        offset += len(ids)
        if progress is not None:
            progress(src.name, offset, total)
    return copied, unchanged


def _migrate_collections(
    src_store: CaseStore, dst_store: CaseStore | None, batch: int, dry_run: bool, progress: Progress | None
) -> list[CollectionMigration]:
    sources = src_store.library_collections()
    existing = {c.name: c for c in dst_store.library_collections()} if dst_store is not None else {}
    for col in sources:  # refuse before writing anything
        if col.name in existing:
            _refuse_mismatch(col, existing[col.name])
    step = max(1, int(dst_store.client.get_max_batch_size())) if dst_store is not None else batch
    results = []
    for col in sources:
        dst = existing.get(col.name)
        before = dst.count() if dst is not None else 0
        if dst is None and not dry_run:
            dst = dst_store.client.create_collection(
                col.name, metadata=dict(col.metadata or {}), configuration=_configuration(col), embedding_function=None
            )
        copied, unchanged = _copy(col, dst, batch, not dry_run, step, progress)
        n_src, after = col.count(), (dst.count() if dst is not None else 0)
        meta = dict(col.metadata or {})
        results.append(CollectionMigration(
            name=col.name, embedder=meta.get("fingerprint") or meta.get("embedder"), dimension=meta.get("dimension"),
            space=_space(col), created=col.name not in existing, source_count=n_src, target_before=before,
            copied=copied, unchanged=unchanged, target_after=after,
            status="dry-run" if dry_run else ("ok" if after == n_src else "mismatch"),
        ))
    return results


def migrate(
    source: Endpoint,
    target: Endpoint,
    batch: int = 1000,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy every PathAsst collection of ``source`` into ``target`` (idempotent, resumable) and verify the counts.

    Raises :class:`MigrationError` for bad endpoints, :class:`~pathasst.memory.store.LibraryUnavailableError` when
    either side cannot be opened, and :class:`~pathasst.memory.store.MixedEmbeddersError` (before writing anything)
    when a target collection exists with another embedder, dimension or space.
    """
    if batch < 1:
        raise MigrationError(f"batch must be at least 1, not {batch}")
    if source.same_as(target):
        raise MigrationError(f"source and target are the same library ({source.label})")
    t0 = time.perf_counter()
    src_store = source.open(create=False)
    # a dry run into a folder that holds no library yet creates nothing: every collection would be new
    dst_store = target.open(create=True) if not dry_run or target.exists() else None
    try:
        results = _migrate_collections(src_store, dst_store, batch, dry_run, progress)
    except _transport_errors() as exc:
        raise LibraryUnavailableError(
            f"the migration stopped: {exc or type(exc).__name__}. Records already copied stay: once the cause is "
            "fixed, rerun the same command to complete it (they are skipped)."
        ) from exc
    return MigrationReport(source=source.label, target=target.label, dry_run=dry_run, batch=batch,
                           seconds=round(time.perf_counter() - t0, 3), collections=results)
