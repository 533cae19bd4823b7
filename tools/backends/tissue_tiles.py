"""The embedded tissue network as the tools use it: the shipped weights, tissue tiles, and the domain check.

``tissue_classification``, ``tumor_segmentation`` and ``slide_classification`` answer with the shipped tissue network
(:mod:`pathasst.tools.backends.tissue_net`, ``tools/weights/tissue_net.pt``) when their deep weights are not
configured. They share one loaded network per process (:func:`shipped_tissue_net`), cut the analysed image into
tissue tiles the same way (:func:`tissue_tiles`) and judge the same way whether the image is in the network's domain
(:func:`domain_check`): an H&E stain (eosin present; :func:`pathasst.core.imaging.looks_like_he`) and tile embeddings
within the training embeddings' spread (squared Mahalanobis distance under the checkpoint's ``ood_threshold``, set
at the 99th percentile of the validation images').
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathasst.core.imaging import looks_like_he
from pathasst.core.settings import Settings
from pathasst.tools.backends.runtime import resample
from pathasst.tools.backends.tiling import tile_grid
from pathasst.tools.backends.tissue_net import TissueNet
from pathasst.tools.tissue_qc import tissue_mask

__all__ = [
    "SHIPPED_TISSUE_WEIGHTS",
    "DomainCheck",
    "TileGrid",
    "TissueNetEmbedder",
    "domain_check",
    "shipped_tissue_net",
    "tissue_tiles",
]

#: the project's tissue network, shipped with the package (model card tools/weights/TISSUE_MODEL_CARD.md)
SHIPPED_TISSUE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tissue_net.pt"
#: smallest side (pixels at the network's mpp) an image must have to be analysed
MIN_SIDE_PX = 32
_LOCK = threading.Lock()
_LOADED: dict[str, TissueNet] = {}


def shipped_tissue_net(settings: Settings = None) -> TissueNet:
    """The shipped tissue network, loaded once per process (thread-safe)."""
    key = str(SHIPPED_TISSUE_WEIGHTS)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = TissueNet.load(SHIPPED_TISSUE_WEIGHTS, "shipped tissue network", settings)
        return _LOADED[key]


@dataclass
class TileGrid:
    """Tiles of an image at the network's resolution: ``rects`` (x0, y0, x1, y1) in the pixels they were cut from,
    each tile's ``tissue`` fraction, and ``n_tissue`` = how many tiles had enough tissue before any cap."""

    rects: list[tuple[int, int, int, int]]
    tissue: list[float]
    n_tissue: int

    def crops(self, rgb: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(rgb[y0:y1, x0:x1]) for x0, y0, x1, y1 in self.rects]


def tissue_tiles(rgb: np.ndarray, tile: int, mpp: float, min_tissue: float = 0.25, max_tiles: int = 512) -> TileGrid:
    """Non-overlapping ``tile`` px tiles covering ``rgb`` (at ``mpp``; the last row / column flush with the edge; an
    image smaller than a tile is one tile of its own size) with at least ``min_tissue`` tissue (``tissue_qc``'s
    mask); at most ``max_tiles`` of them, spread evenly. A ValueError says so when a side is below
    :data:`MIN_SIDE_PX`."""
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE_PX:
        raise ValueError(f"image is {w}x{h} px at the tissue network's resolution; it needs at least "
                         f"{MIN_SIDE_PX} px on each side")
    mask = tissue_mask(rgb, mpp)
    rects, fracs = [], []
    for t in tile_grid((h, w), tile, 0):
        frac = float(mask[t.y0 : t.y1, t.x0 : t.x1].mean())
        if frac >= min_tissue:
            rects.append((t.x0, t.y0, t.x1, t.y1))
            fracs.append(frac)
    n = len(rects)
    if n > max_tiles:
        keep = np.unique(np.round(np.linspace(0, n - 1, max_tiles)).astype(int))
        rects, fracs = [rects[i] for i in keep], [fracs[i] for i in keep]
    return TileGrid(rects, fracs, n)


@dataclass
class DomainCheck:
    """Whether an image is in the tissue network's domain: ``he_stain`` (eosin present), ``ood_fraction`` (share of
    tiles whose embedding lies beyond the training spread; None without statistics), and the plain-words
    ``warning`` (None when in domain)."""

    he_stain: bool
    ood_fraction: float | None
    warning: str | None

    @property
    def in_domain(self) -> bool:
        return self.warning is None


def domain_check(net: TissueNet, rgb: np.ndarray, ood_distance: np.ndarray, what: str) -> DomainCheck:
    """Judge the image (``rgb`` at the network's resolution) and its tiles' ``ood_distance``; ``what`` names the
    trained task in the warning (e.g. "colorectal mucosa (EBHI-Seg)")."""
    he = looks_like_he(rgb)
    thr = net.config.ood_threshold
    frac = None
    if thr is not None and len(ood_distance) and np.all(np.isfinite(ood_distance)):
        frac = float(np.mean(ood_distance > thr))
    problems = []
    if not he:
        problems.append("the image is not H&E (no eosin: IHC, another stain or greyscale)")
    if frac is not None and frac > 0.5:
        problems.append(f"{frac:.0%} of its tiles look unlike the training images")
    warning = None
    if problems:
        warning = (f"out of domain: {' and '.join(problems)}; the network was trained on H&E {what} only, "
                   "so its answer here is not reliable")
    return DomainCheck(he, frac, warning)


class TissueNetEmbedder:
    """Tile embedder over the tissue network's pooled features (the ABMIL head's ``embedder: tissue_net``): tiles cut
    at ``tile_mpp`` are resampled to ``embed_mpp`` first when that is set."""

    def __init__(self, net: TissueNet, tile_mpp: float | None, embed_mpp: float | None = None) -> None:
        self.net = net
        self.factor = tile_mpp / embed_mpp if tile_mpp and embed_mpp else 1.0

    @property
    def dimension(self) -> int:
        return self.net.embedding_dim

    def embed_images(self, tiles: list[np.ndarray]) -> np.ndarray:
        tiles = [resample(np.asarray(t)[..., :3], self.factor) for t in tiles]
        return self.net.embed(tiles)
