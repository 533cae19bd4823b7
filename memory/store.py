"""The Chroma case store: one collection per (modality, embedder), embedded on disk or on a Chroma server.

- **Client**: ``chromadb.PersistentClient(path=Settings.chroma_path)`` by default; ``chromadb.HttpClient`` when
  ``Settings.chroma_host`` is set (``chroma run --path DIR --host H --port P`` on the server). Telemetry is off and
  every client of a process uses the same ``chromadb.Settings``. ``pathasst library migrate`` (``memory/migrate.py``)
  copies a library from one to the other.
- **Collections**: ``pathasst-img-<embedder>`` and ``pathasst-txt-<embedder>``, cosine space, created with no
  embedding function: vectors are always computed by PathAsst and passed explicitly (Chroma's default embedder would
  try to download a model). The collection metadata records the embedder's name, dimension and fingerprint; opening a
  collection with a different embedder, or upserting vectors of another dimension, raises
  :class:`MixedEmbeddersError`.
- **Records**: id ``CASE_ID/IMAGE_NAME`` (images) or ``CASE_ID/text/SOURCE`` (texts); upsert is idempotent by id;
  metadata holds ``case_id``, ``organ``, ``stain``, ``diagnosis``, ``source_path``, ``date``, ``added_at`` ...;
  ``where`` filters use Chroma's syntax (a plain ``{"organ": "colon", "stain": "H&E"}`` is read as an AND).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathasst.core.embedders import Embedder
from pathasst.core.settings import Settings

__all__ = [
    "COLLECTION_PREFIX",
    "CaseStore",
    "Hit",
    "LibraryUnavailableError",
    "MixedEmbeddersError",
    "StoreError",
    "chroma_settings",
    "collection_name",
    "normalise_where",
]

log = logging.getLogger(__name__)

COLLECTION_PREFIX = "pathasst"
SCHEMA = "pathasst-case-library/1"
#: extra records fetched when a case is excluded from a query (more than a case usually has images)
EXCLUDE_MARGIN = 16
#: seconds to wait for a Chroma server to accept a connection before calling it unreachable (the HTTP client has none)
CONNECT_TIMEOUT_S = 5.0
#: folder (inside an embedded library, or under the cache for a server) holding the case thumbnails
THUMBNAIL_DIR = "thumbnails"
StoreModality = Literal["image", "text"]
MetadataValue = str | int | float | bool


class StoreError(RuntimeError):
    """The case store cannot do what was asked."""


class MixedEmbeddersError(StoreError):
    """A collection would receive, or be queried with, vectors of another embedder."""


class LibraryUnavailableError(StoreError):
    """The Chroma server cannot be reached, or the embedded library folder cannot be opened."""


def chroma_settings() -> Any:
    """The one ``chromadb.Settings`` used by every client: telemetry off, no reset."""
    import chromadb

    return chromadb.Settings(anonymized_telemetry=False, allow_reset=False)


def collection_name(modality: StoreModality, embedder: Embedder) -> str:
    """``pathasst-img-<embedder name>`` / ``pathasst-txt-<embedder name>``."""
    return f"{COLLECTION_PREFIX}-{'img' if modality == 'image' else 'txt'}-{embedder.name}"


def normalise_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chroma ``where``: a plain dict of several ``field: value`` pairs becomes an ``$and`` of them."""
    if not where:
        return None
    if len(where) > 1 and not any(str(k).startswith("$") for k in where):
        return {"$and": [{k: v} for k, v in where.items()]}
    return dict(where)


def _and(*clauses: dict[str, Any] | None) -> dict[str, Any] | None:
    parts = [c for c in clauses if c]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _clean_metadata(meta: dict[str, Any]) -> dict[str, MetadataValue]:
    out: dict[str, MetadataValue] = {}
    for k, v in meta.items():
        if v is None:
            continue
        if isinstance(v, (str, int, float, bool)):
            out[str(k)] = v
        else:
            out[str(k)] = str(v)
    return out


@dataclass
class Hit:
    """One stored record returned by a query."""

    id: str
    distance: float
    metadata: dict[str, Any] = field(default_factory=dict)
    document: str | None = None

    @property
    def case_id(self) -> str:
        return str(self.metadata.get("case_id") or self.id.split("/", 1)[0])


class CaseStore:
    """Collections of case vectors in one Chroma database (embedded folder or server)."""

    def __init__(self, client: Any, location: str, mode: Literal["embedded", "server"]) -> None:
        self.client = client
        self.location = location
        self.mode = mode
        self._collections: dict[str, Any] = {}

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings) -> CaseStore:
        """Connect to the server named by ``chroma_host``/``chroma_port``, or open (creating) ``chroma_path``."""
        import chromadb

        host = getattr(settings, "chroma_host", None)
        if host:
            port = int(getattr(settings, "chroma_port", 8000))
            try:
                # Chroma's HTTP client waits forever on a host that drops packets: probe the port with a timeout first
                socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
                client = chromadb.HttpClient(host=host, port=port, settings=chroma_settings())
                client.heartbeat()
            except Exception as exc:  # noqa: BLE001 - socket/httpx/chromadb raise many connection error types
                raise LibraryUnavailableError(
                    f"Chroma server at {host}:{port} is not reachable (PATHASST_CHROMA_HOST/PORT): "
                    f"{exc or type(exc).__name__}"
                ) from exc
            return cls(client, f"http://{host}:{port}", "server")
        path = Path(getattr(settings, "chroma_path"))
        try:
            path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(path), settings=chroma_settings())
        except (OSError, ValueError, RuntimeError) as exc:
            raise LibraryUnavailableError(f"cannot open the case library at {path} (PATHASST_CHROMA_PATH): {exc}") from exc
        return cls(client, str(path.resolve()), "embedded")

    @staticmethod
    def exists(settings: Settings) -> bool:
        """True when a library may exist without creating one: a server is configured or the folder has a database."""
        if getattr(settings, "chroma_host", None):
            return True
        return (Path(getattr(settings, "chroma_path")) / "chroma.sqlite3").is_file()

    # ---- collections ---------------------------------------------------------------------------
    def library_collections(self) -> list[Any]:
        """The Chroma collection objects of every PathAsst collection (name ``pathasst-...``), sorted by name."""
        out = []
        for c in self.client.list_collections():
            name = c if isinstance(c, str) else c.name
            if name.startswith(COLLECTION_PREFIX + "-"):
                out.append(self.client.get_collection(name, embedding_function=None))
        return sorted(out, key=lambda c: c.name)

    def collections(self) -> list[dict[str, Any]]:
        """Name, metadata and record count of every PathAsst collection."""
        return [
            {"name": c.name, "metadata": dict(c.metadata or {}), "count": c.count()} for c in self.library_collections()
        ]

    def collection(self, modality: StoreModality, embedder: Embedder, create: bool = True) -> Any | None:
        """The collection of ``embedder`` for ``modality`` (None if absent and not ``create``); checks the embedder."""
        name = collection_name(modality, embedder)
        col = self._collections.get(name)
        if col is None:
            existing = {c.name if not isinstance(c, str) else c for c in self.client.list_collections()}
            if name in existing:
                col = self.client.get_collection(name, embedding_function=None)
            elif create:
                col = self.client.get_or_create_collection(
                    name,
                    metadata={
                        "schema": SCHEMA,
                        "modality": modality,
                        "embedder": embedder.name,
                        "fingerprint": embedder.fingerprint(),
                        "dimension": int(embedder.dimension),
                    },
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=None,
                )
            else:
                return None
            self._check(col, modality, embedder)
            self._collections[name] = col
        return col

    @staticmethod
    def _check(col: Any, modality: str, embedder: Embedder) -> None:
        meta = dict(col.metadata or {})
        want = {"embedder": embedder.name, "fingerprint": embedder.fingerprint(), "dimension": int(embedder.dimension)}
        have = {k: meta.get(k) for k in want}
        if have != want or meta.get("modality") not in (None, modality):
            raise MixedEmbeddersError(
                f"collection {col.name!r} holds {meta.get('modality')} vectors of embedder {have['embedder']!r} "
                f"(fingerprint {have['fingerprint']!r}, dimension {have['dimension']}); refusing to mix it with "
                f"{embedder.name!r} (fingerprint {want['fingerprint']!r}, dimension {want['dimension']}). Use another "
                "library folder (PATHASST_CHROMA_PATH) or rebuild it: `pathasst library delete --collection NAME`."
            )

    def drop_collection(self, name: str) -> None:
        if not name.startswith(COLLECTION_PREFIX + "-"):
            raise StoreError(f"{name!r} is not a PathAsst collection")
        self.client.delete_collection(name)
        self._collections.pop(name, None)

    # ---- records -------------------------------------------------------------------------------
    def upsert(
        self,
        modality: StoreModality,
        embedder: Embedder,
        ids: Sequence[str],
        embeddings: np.ndarray,
        metadatas: Sequence[dict[str, Any]],
        documents: Sequence[str | None] | None = None,
    ) -> int:
        """Insert or replace records by id (idempotent). Returns the number written."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(ids) or len(metadatas) != len(ids):
            raise StoreError(f"upsert: {len(ids)} ids, {len(metadatas)} metadatas and embeddings of shape {emb.shape}")
        if emb.shape[1] != embedder.dimension:
            raise MixedEmbeddersError(
                f"vectors of dimension {emb.shape[1]} cannot go into the {embedder.name!r} collection "
                f"(dimension {embedder.dimension})"
            )
        if not np.isfinite(emb).all():
            raise StoreError("upsert: embeddings contain NaN or infinity")
        if not len(ids):
            return 0
        col = self.collection(modality, embedder)
        step = max(1, int(self.client.get_max_batch_size()))
        for i in range(0, len(ids), step):
            kwargs: dict[str, Any] = {
                "ids": list(ids[i : i + step]),
                "embeddings": emb[i : i + step],
                "metadatas": [_clean_metadata(m) for m in metadatas[i : i + step]],
            }
            if documents is not None:
                kwargs["documents"] = [d if d is not None else "" for d in documents[i : i + step]]
            col.upsert(**kwargs)
        return len(ids)

    def query(
        self,
        modality: StoreModality,
        embedder: Embedder,
        vector: np.ndarray,
        k: int,
        where: dict[str, Any] | None = None,
        exclude_case: str | None = None,
        include_documents: bool = False,
    ) -> list[Hit]:
        """The ``k`` nearest records to ``vector`` (cosine distance), filtered; [] when the collection is absent/empty."""
        col = self.collection(modality, embedder, create=False)
        if col is None or k < 1:
            return []
        n = col.count()
        if n == 0:
            return []
        vec = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vec.shape[1] != embedder.dimension:
            raise MixedEmbeddersError(
                f"query vector of dimension {vec.shape[1]} for embedder {embedder.name!r} ({embedder.dimension})"
            )
        flt = normalise_where(where)
        include = ["metadatas", "distances"] + (["documents"] if include_documents else [])
        # The excluded case is dropped after the search, not with a ``$ne`` filter: a filter that matches nearly
        # every record makes Chroma list all their ids for each query (tens of ms at 10k records). Over-fetch instead.
        fetch = min(int(k) + (EXCLUDE_MARGIN if exclude_case else 0), n)
        while True:
            res = col.query(query_embeddings=vec, n_results=fetch, where=flt, include=include)
            docs = (res.get("documents") or [[None] * len(res["ids"][0])])[0]
            hits = [
                Hit(id=i, distance=max(0.0, float(d)), metadata=dict(m or {}), document=doc)
                for i, d, m, doc in zip(res["ids"][0], res["distances"][0], res["metadatas"][0], docs, strict=True)
            ]
            kept = [h for h in hits if not exclude_case or h.case_id != exclude_case]
            if len(kept) >= k or len(hits) < fetch or fetch >= n:
                return kept[: int(k)]
            fetch = min(fetch * 4, n)

    def get(
        self,
        modality: StoreModality,
        embedder: Embedder,
        ids: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        include_documents: bool = False,
        limit: int | None = None,
    ) -> list[Hit]:
        """Stored records by id and/or filter (distance 0)."""
        col = self.collection(modality, embedder, create=False)
        if col is None:
            return []
        include = ["metadatas"] + (["documents"] if include_documents else [])
        res = col.get(
            ids=list(ids) if ids is not None else None, where=normalise_where(where), include=include, limit=limit
        )
        docs = res.get("documents") or [None] * len(res["ids"])
        return [
            Hit(id=i, distance=0.0, metadata=dict(m or {}), document=d)
            for i, m, d in zip(res["ids"], res["metadatas"], docs, strict=True)
        ]

    def delete(self, where: dict[str, Any] | None = None, ids: Iterable[str] | None = None) -> int:
        """Delete matching records from every PathAsst collection; returns how many were deleted."""
        if not where and ids is None:
            raise StoreError("delete needs a filter or ids (refusing to empty the library)")
        n = 0
        for col in self.library_collections():
            found = col.get(ids=list(ids) if ids is not None else None, where=normalise_where(where), include=[])
            if found["ids"]:
                col.delete(ids=found["ids"])
                n += len(found["ids"])
        return n

    def delete_case(self, case_id: str) -> int:
        return self.delete(where={"case_id": case_id})

    def case_ids(self, modality: StoreModality, embedder: Embedder, page: int = 5000) -> set[str]:
        """Distinct case ids in a collection (paged reads of metadata)."""
        col = self.collection(modality, embedder, create=False)
        if col is None:
            return set()
        out: set[str] = set()
        offset, total = 0, col.count()
        while offset < total:
            res = col.get(include=["metadatas"], limit=page, offset=offset)
            out.update(str((m or {}).get("case_id")) for m in res["metadatas"])
            offset += page
        return out

    def disk_bytes(self) -> int | None:
        """Bytes on disk of an embedded library (None for a server)."""
        if self.mode != "embedded":
            return None
        root = Path(self.location)
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and THUMBNAIL_DIR not in p.relative_to(root).parts)
