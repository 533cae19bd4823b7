"""PathCLIP for the tools: zero-shot tissue classification, an optional linear-probe head, tile embeddings.

The PathCLIP model itself is loaded by the memory package (:class:`pathasst.core.pathclip.PathCLIPEmbedder`, open_clip
``ViT-B-16`` with QuickGELU from ``PATHASST_PATHCLIP_WEIGHTS``, cached per process and shared with the case library);
this module adds what the tools need on top of its unit-norm image and text embeddings.

* **Zero-shot**: the text of each label is ``'An image of {label}'``; probabilities are
  ``softmax(100 * image_embedding @ text_embeddings.T)`` (100 is the logit scale open_clip's zero-shot evaluation
  uses, and CLIP's learned scale saturates at it).
* **Linear probe** (optional): a linear layer on the L2-normalised 512-d image embedding, saved as
  ``torch.save({"state_dict": {"weight": (C, 512), "bias": (C,)}, "config": {"labels": [C names]}}, "probe.pt")``,
  or as a plain state dict / ``.safetensors`` with a sidecar ``probe.json`` = ``{"labels": [...]}``.
* **Tiles**: an image is embedded whole when neither side exceeds 1.5 tiles (224 px at 0.5 um/px); otherwise as a
  grid of 224-px tiles holding >= 50 % tissue (all tiles if none do), at most ``MAX_TILES`` spread evenly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.embedders import get_embedder
from pathasst.core.errors import WeightsError
from pathasst.core.imaging import tissue_mask
from pathasst.core.settings import Settings
from pathasst.core.weights import Checkpoint, check_weights_file, read_checkpoint
from pathasst.tools.backends.runtime import configure_threads

__all__ = [
    "LOGIT_SCALE",
    "MAX_TILES",
    "TILE_PX",
    "LinearProbe",
    "TileSet",
    "pathclip_embedder",
    "patch_tiles",
    "zero_shot_probabilities",
]

#: logit scale of zero-shot classification (open_clip's zero-shot evaluation)
LOGIT_SCALE = 100.0
#: side of a PathCLIP tile, pixels
TILE_PX = 224
#: most tiles embedded for one call
MAX_TILES = 256
#: a tile is tissue when this fraction of its pixels is tissue
MIN_TISSUE = 0.5
PROBE_SUFFIXES = (".pt", ".pth", ".safetensors")


def pathclip_embedder(settings: Settings) -> Any:
    """The process-wide PathCLIP embedder of the memory package for ``settings`` (loads lazily; WeightsError)."""
    configure_threads(settings)
    emb = get_embedder("pathclip", "image", settings)
    emb.load()
    return emb


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def zero_shot_probabilities(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, logit_scale: float = LOGIT_SCALE
) -> np.ndarray:
    """``(N, C)`` softmax probabilities of ``N`` unit image vectors over ``C`` unit text vectors."""
    return _softmax(logit_scale * np.asarray(image_embeddings, np.float64) @ np.asarray(text_embeddings, np.float64).T)


@dataclass
class LinearProbe:
    """A linear head on unit PathCLIP image embeddings: ``softmax(x @ weight.T + bias)`` over ``labels``."""

    weight: np.ndarray
    bias: np.ndarray
    labels: list[str]
    path: Path | None = None

    @classmethod
    def load(cls, path: Path, setting: str) -> LinearProbe:
        path = Path(path)
        fmt = check_weights_file(path, setting, PROBE_SUFFIXES)
        ckpt: Checkpoint = read_checkpoint(path, setting, fmt)
        labels = ckpt.require("labels", list)
        if len(labels) < 2 or not all(isinstance(s, str) and s.strip() for s in labels):
            raise WeightsError(f"linear probe {ckpt.where()}: 'labels' must be >= 2 non-empty strings, got {labels!r}")
        sd = ckpt.state_dict
        if set(sd) != {"weight", "bias"}:
            raise WeightsError(f"linear probe {ckpt.where()} must hold exactly 'weight' and 'bias', got {sorted(sd)[:6]}")
        w = sd["weight"].detach().float().numpy()
        b = sd["bias"].detach().float().numpy()
        if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[0] != len(labels):
            raise WeightsError(
                f"linear probe {ckpt.where()}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not fit "
                f"{len(labels)} labels"
            )
        return cls(weight=w, bias=b, labels=[s.strip() for s in labels], path=path)

    def check_dimension(self, dim: int) -> None:
        if self.weight.shape[1] != dim:
            raise WeightsError(
                f"linear probe {self.path} expects {self.weight.shape[1]}-d embeddings; PathCLIP gives {dim}-d"
            )

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        return _softmax(np.asarray(embeddings, np.float64) @ self.weight.T.astype(np.float64) + self.bias)


@dataclass
class TileSet:
    """Tiles cut from an image: pixels and their ``(x0, y0, x1, y1)`` array rectangles."""

    tiles: list[np.ndarray]
    rects: list[tuple[int, int, int, int]]
    whole: bool  # True when the image was embedded whole (one "tile" = the image)
    n_tissue: int  # tissue tiles found before the MAX_TILES cap


def _spread(n_items: int, k: int) -> np.ndarray:
    if n_items <= k:
        return np.arange(n_items)
    return np.unique(np.round(np.linspace(0, n_items - 1, k)).astype(int))


def patch_tiles(rgb: np.ndarray, tile: int = TILE_PX, max_tiles: int = MAX_TILES, min_tissue: float = MIN_TISSUE) -> TileSet:
    """The image itself when small, else its tissue tiles (see the module docstring)."""
    h, w = rgb.shape[:2]
    if max(h, w) <= int(1.5 * tile):
        return TileSet([rgb], [(0, 0, w, h)], whole=True, n_tissue=1)
    ys = list(range(0, max(h - tile, 0) + 1, tile)) or [0]
    xs = list(range(0, max(w - tile, 0) + 1, tile)) or [0]
    rects = [(x, y, min(x + tile, w), min(y + tile, h)) for y in ys for x in xs]
    mask = tissue_mask(rgb)
    keep = [r for r in rects if mask[r[1] : r[3], r[0] : r[2]].mean() >= min_tissue] or rects
    n = len(keep)
    keep = [keep[i] for i in _spread(len(keep), max_tiles)]
    return TileSet([rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in keep], keep, whole=False, n_tissue=n)


def embed_tiles(embedder: Any, tiles: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, 512)`` unit embeddings of the tiles (batched by the embedder)."""
    return np.asarray(embedder.embed_images(list(tiles)), dtype=np.float32)
