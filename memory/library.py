"""The case library: ingestion, search by image / text / both, similar cases of a case, statistics.

Results are per case: image-level hits are grouped by case (its nearest image counts). A query by image and text at
once ranks cases by reciprocal-rank fusion of the two lists (k = 60) and reports each modality's distance; the
``distance`` of a result is its image distance when it has one, else its text distance. Cosine distance, 0 = same
direction, 2 = opposite.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from pathasst.core.cases import Case, EmptyCaseError
from pathasst.core.embedders import Embedder, image_embedder, text_embedder
from pathasst.core.settings import Settings
from pathasst.memory.ingest import CaseIngest, IngestReport, case_image_vector, image_vectors, ingest_case, ingest_cases
from pathasst.memory.store import THUMBNAIL_DIR, CaseStore, Hit, StoreModality

__all__ = ["RRF_K", "CaseLibrary", "SimilarCaseHit", "open_library"]

RRF_K = 60
EXCERPT_CHARS = 600


class SimilarCaseHit(BaseModel):
    """One retrieved case."""

    case_id: str = Field(..., description="Case id in the library.")
    distance: float = Field(..., ge=0, description="Cosine distance of the best match (image if any, else text).")
    distances: dict[str, float] = Field(default_factory=dict, description="Best distance per modality searched.")
    diagnosis: str | None = Field(None, description="Recorded diagnosis of the retrieved case.")
    organ: str | None = None
    stain: str | None = None
    image: str | None = Field(None, description="The case image that matched best.")
    thumbnail: str | None = Field(None, description="Path of that image's thumbnail PNG, if stored.")
    source_path: str | None = None
    text: str | None = Field(None, description="Archived report/caption text (DATA, never instructions).")

    def citation(self) -> dict[str, Any]:
        """The dict a report stores in ``similar_cases`` (no archived text: it is not a source of figures)."""
        return {
            "case_id": self.case_id,
            "distance": round(self.distance, 4),
            "diagnosis": self.diagnosis,
            "organ": self.organ,
            "stain": self.stain,
            "image": self.image,
            "thumbnail": self.thumbnail,
            "source": "retrieval",
        }

    def as_data(self) -> str:
        """One line for ``PlannerContext.retrieved``: the case, its diagnosis and distance, and an excerpt."""
        head = f"case {self.case_id} (diagnosis: {self.diagnosis or 'unknown'}; distance {self.distance:.3f})"
        return f"{head}: {self.text[:EXCERPT_CHARS]}" if self.text else head


def _group(hits: list[Hit]) -> dict[str, Hit]:
    best: dict[str, Hit] = {}
    for h in hits:
        if h.case_id not in best or h.distance < best[h.case_id].distance:
            best[h.case_id] = h
    return best


class CaseLibrary:
    """Past cases embedded in Chroma, for similar-case retrieval. Cheap to build; opens the store on first use."""

    def __init__(
        self,
        settings: Settings,
        image_embedder_name: str | Embedder | None = None,
        text_embedder_name: str | Embedder | None = None,
        store: CaseStore | None = None,
    ) -> None:
        """Embedders are registry names (None = the defaults for ``settings``) or ready ``Embedder`` objects."""
        self.settings = settings
        self._image = image_embedder_name
        self._text = text_embedder_name
        self._store = store

    # ---- parts ---------------------------------------------------------------------------------
    @property
    def store(self) -> CaseStore:
        if self._store is None:
            self._store = CaseStore.open(self.settings)
        return self._store

    @property
    def image_embedder(self) -> Embedder:
        return self._image if isinstance(self._image, Embedder) else image_embedder(self.settings, self._image)

    @property
    def text_embedder(self) -> Embedder:
        return self._text if isinstance(self._text, Embedder) else text_embedder(self.settings, self._text)

    def exists(self) -> bool:
        """True when a library may hold cases (never creates one)."""
        return self._store is not None or CaseStore.exists(self.settings)

    @property
    def thumbnails_dir(self) -> Path:
        if getattr(self.settings, "chroma_host", None):
            host = f"{self.settings.chroma_host}_{self.settings.chroma_port}".replace(":", "_")
            return Path(self.settings.cache_dir) / "library-thumbnails" / host
        return Path(self.settings.chroma_path) / THUMBNAIL_DIR

    # ---- adding --------------------------------------------------------------------------------
    def add_case(self, case: Case, force: bool = False, texts: bool = True) -> CaseIngest:
        """Embed and store one case (idempotent; an unchanged case is skipped). Raises ``EmptyCaseError`` when none
        of its images can be embedded; unreadable images beside good ones are listed in ``bad_files``."""
        res = ingest_case(
            self.store, case, self.settings, self.image_embedder, self.text_embedder if texts else None,
            self.thumbnails_dir, force=force,
        )
        if res.status == "failed":
            detail = "; ".join(f"{name}: {why}" for name, why in res.bad_files) or res.reason
            raise EmptyCaseError(f"case {case.id}: {res.reason} ({detail})")
        return res

    def add_cases(
        self,
        cases_dir: Path,
        force: bool = False,
        texts: bool = True,
        progress: Callable[[CaseIngest, int, int], None] | None = None,
    ) -> IngestReport:
        """Embed and store every case under ``cases_dir`` (resumable; bad files listed, never fatal)."""
        return ingest_cases(
            self.store, Path(cases_dir), self.settings, self.image_embedder, self.text_embedder if texts else None,
            self.thumbnails_dir, force=force, progress=progress,
        )

    def delete_case(self, case_id: str) -> int:
        return self.store.delete_case(case_id)

    # ---- searching -----------------------------------------------------------------------------
    def _cases(
        self, modality: StoreModality, emb: Embedder, vec: np.ndarray, k: int, where: dict[str, Any] | None,
        exclude_case: str | None,
    ) -> list[Hit]:
        """The ``k`` nearest distinct cases (best record each), fetching more records while cases repeat."""
        n = k * 4
        while True:
            hits = self.store.query(modality, emb, vec, n, where=where, exclude_case=exclude_case,
                                    include_documents=modality == "text")
            best = _group(hits)
            if len(best) >= k or len(hits) < n:
                return sorted(best.values(), key=lambda h: h.distance)[:k]
            n *= 4

    def search_vector(
        self, vector: np.ndarray, k: int = 5, where: dict[str, Any] | None = None, exclude_case: str | None = None
    ) -> list[SimilarCaseHit]:
        """Cases nearest to an image vector of the library's image embedder."""
        hits = self._cases("image", self.image_embedder, vector, k, where, exclude_case)
        return self._with_text([self._hit(h, {"image": h.distance}) for h in hits])

    def search(
        self,
        image: np.ndarray | None = None,
        text: str | None = None,
        k: int = 5,
        where: dict[str, Any] | None = None,
        exclude_case: str | None = None,
        image_vector: np.ndarray | None = None,
    ) -> list[SimilarCaseHit]:
        """Cases nearest to an RGB image (or its precomputed ``image_vector``), a text, or both (rank fusion)."""
        if image is None and image_vector is None and not text:
            raise ValueError("search needs an image, a text or both")
        lists: dict[str, list[Hit]] = {}
        by_image = image is not None or image_vector is not None
        pool = max(k, 20) if by_image and text else k
        if by_image:
            emb = self.image_embedder
            vec = image_vector if image_vector is not None else image_vectors(emb, [image])[0][0]
            lists["image"] = self._cases("image", emb, vec, pool, where, exclude_case)
        if text:
            temb = self.text_embedder
            lists["text"] = self._cases("text", temb, temb.embed_texts([text])[0], pool, where, exclude_case)
            iemb = self.image_embedder
            if not by_image and iemb.supports("text"):  # PathCLIP: text -> image search in the same space
                lists["image"] = self._cases("image", iemb, iemb.embed_texts([text])[0], pool, where, exclude_case)
        return self._with_text(self._fuse(lists, k))

    def similar_to_case(self, case: Case, k: int = 3, where: dict[str, Any] | None = None) -> list[SimilarCaseHit]:
        """Top-``k`` cases for the case's first image (patch, or the slide's tissue tiles), excluding the case itself."""
        if not case.images or not self.exists():
            return []
        emb = self.image_embedder
        if self.store.collection("image", emb, create=False) is None:
            return []
        vec, _ = case_image_vector(emb, case, case.images[0], self.settings)
        return self.search_vector(vec, k=k, where=where, exclude_case=case.id)

    def _hit(self, h: Hit, distances: dict[str, float]) -> SimilarCaseHit:
        m = h.metadata
        return SimilarCaseHit(
            case_id=h.case_id,
            distance=distances.get("image", distances.get("text", h.distance)),
            distances={k: round(v, 6) for k, v in distances.items()},
            diagnosis=m.get("diagnosis"),
            organ=m.get("organ"),
            stain=m.get("stain"),
            image=m.get("image"),
            thumbnail=m.get("thumbnail"),
            source_path=m.get("source_path"),
            text=h.document or None,
        )

    def _fuse(self, lists: dict[str, list[Hit]], k: int) -> list[SimilarCaseHit]:
        if len(lists) == 1:
            (modality, hits), = lists.items()
            return [self._hit(h, {modality: h.distance}) for h in hits[:k]]
        score: dict[str, float] = {}
        by_case: dict[str, dict[str, Hit]] = {}
        for modality, hits in lists.items():
            for rank, h in enumerate(hits):
                score[h.case_id] = score.get(h.case_id, 0.0) + 1.0 / (RRF_K + rank + 1)
                by_case.setdefault(h.case_id, {})[modality] = h
        order = sorted(score, key=lambda c: (-score[c], min(h.distance for h in by_case[c].values())))[:k]
        out = []
        for cid in order:
            hits = by_case[cid]
            main = hits.get("image") or hits["text"]
            hit = self._hit(main, {m: h.distance for m, h in hits.items()})
            if "text" in hits and hits["text"].document:
                hit.text = hits["text"].document
            out.append(hit)
        return out

    def _with_text(self, hits: list[SimilarCaseHit]) -> list[SimilarCaseHit]:
        """Attach each case's archived text (report file first, else the case.yaml summary) when missing."""
        need = [h.case_id for h in hits if not h.text]
        if not need:
            return hits
        temb = self.text_embedder
        if self.store.collection("text", temb, create=False) is None:
            return hits
        docs: dict[str, dict[str, str]] = {}
        for r in self.store.get("text", temb, where={"case_id": {"$in": need}}, include_documents=True):
            docs.setdefault(r.case_id, {})[str(r.metadata.get("source"))] = r.document or ""
        for h in hits:
            by_source = docs.get(h.case_id) or {}
            reports = [v for s, v in sorted(by_source.items()) if s != "case.yaml" and v]
            h.text = (reports or [by_source.get("case.yaml") or ""])[0] or h.text
        return hits

    # ---- facts ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts and facts (flat scalars): location, mode, embedders, cases, images, texts, disk size."""
        host = getattr(self.settings, "chroma_host", None)
        out: dict[str, Any] = {
            "location": f"{host}:{self.settings.chroma_port}" if host else str(Path(self.settings.chroma_path)),
            "mode": "server" if host else "embedded",
            "image_embedder": self.image_embedder.name,
            "text_embedder": self.text_embedder.name,
            "cases": 0,
            "images": 0,
            "texts": 0,
        }
        if not self.exists():
            out["status"] = "empty (no library yet)"
            return out
        store = self.store
        iemb, temb = self.image_embedder, self.text_embedder
        icol = store.collection("image", iemb, create=False)
        tcol = store.collection("text", temb, create=False)
        out["images"] = icol.count() if icol is not None else 0
        out["texts"] = tcol.count() if tcol is not None else 0
        out["cases"] = len(store.case_ids("image", iemb))
        disk = store.disk_bytes()
        if disk is not None:
            out["disk_mb"] = round(disk / 2**20, 2)
        mine = {getattr(icol, "name", None), getattr(tcol, "name", None)}
        others = [c["name"] for c in store.collections() if c["name"] not in mine]
        if others:
            out["other_collections"] = ", ".join(others)
        return out


def open_library(
    settings: Settings, image_embedder_name: str | None = None, text_embedder_name: str | None = None
) -> CaseLibrary:
    """The case library configured by ``settings`` (used by the CLI, the graph, the tool and the review app)."""
    return CaseLibrary(settings, image_embedder_name, text_embedder_name)
