"""The ``Embedder`` interface: images and/or texts -> L2-normalised float32 vectors (the implementations are
:mod:`pathasst.core.descriptor`, :mod:`pathasst.core.minilm` and :mod:`pathasst.core.pathclip`; the registry that
builds them by name is :mod:`pathasst.core.embedders`)."""

from __future__ import annotations

import threading
from abc import ABC
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

__all__ = ["Embedder", "EmbedderError", "Modality", "l2_normalise"]

Modality = Literal["image", "text"]


class EmbedderError(ValueError):
    """An embedder cannot be built or used (unknown name, unsupported modality, bad weights)."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class Embedder(ABC):
    """Images and/or texts -> L2-normalised float32 vectors, in batches.

    Subclasses set ``name``, ``dimension``, ``modalities`` and implement ``_embed_image_batch`` and/or
    ``_embed_text_batch`` (one batch of at most ``batch_size`` items, returning raw vectors); ``_load`` loads models.
    """

    name: ClassVar[str]
    dimension: ClassVar[int]
    modalities: ClassVar[frozenset[str]]
    #: side in pixels of the square tiles the embedder sees best (slides and large patches are tiled to it)
    tile_size: ClassVar[int] = 224

    def __init__(self, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise EmbedderError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._loaded = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dimension={self.dimension})"

    # ---- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load models on first use (idempotent, thread-safe)."""
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def _load(self) -> None:
        """Override to load weights."""

    def fingerprint(self) -> str:
        """Identifies the embedding space exactly (name, version and weights). Override when weights vary."""
        return self.name

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "dimension": self.dimension, "modalities": sorted(self.modalities)}

    # ---- the work ------------------------------------------------------------------------------
    def supports(self, modality: Modality) -> bool:
        return modality in self.modalities

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, dimension)`` float32 unit vectors for ``N`` RGB uint8 images (any sizes)."""
        return self._batched("image", list(images), self._embed_image_batch)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dimension)`` float32 unit vectors for ``N`` texts."""
        texts = [str(t) for t in texts]
        return self._batched("text", texts, self._embed_text_batch)

    def _batched(self, modality: Modality, items: list[Any], fn: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        if not self.supports(modality):
            raise EmbedderError(
                f"embedder {self.name!r} does not embed {modality}s (it embeds: {', '.join(sorted(self.modalities))})"
            )
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        self.load()
        out = [np.asarray(fn(items[i : i + self.batch_size]), dtype=np.float32) for i in range(0, len(items), self.batch_size)]
        vecs = np.concatenate(out, axis=0)
        if vecs.shape != (len(items), self.dimension):
            raise EmbedderError(f"embedder {self.name!r} returned shape {vecs.shape}, expected ({len(items)}, {self.dimension})")
        return l2_normalise(vecs)

    def _embed_image_batch(self, images: list[np.ndarray]) -> np.ndarray:  # pragma: no cover - per modality
        raise NotImplementedError

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - per modality
        raise NotImplementedError
