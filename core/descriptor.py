"""``hed-texture``: the embedded image descriptor (no weights, no download).

What it measures, in ten blocks, each a normalised histogram (so no constants are fitted to any data set):

1-3. **Stain amounts**: histograms (16 bins, square-root spaced over 0..0.3 optical-density units) of the
     haematoxylin, eosin and DAB channels after Ruifrok-Johnston colour deconvolution (``skimage.color.rgb2hed``).
4.   **Stain mixture**: the joint haematoxylin x eosin histogram (8 x 8).
5-6. **Texture**: rotation-invariant uniform local binary patterns of the haematoxylin channel at radius 1 (8
     neighbours, 10 codes) and radius 2 (16 neighbours, 18 codes).
7.   **Orientation coherence**: histogram (8 bins) of the structure-tensor coherence (sigma 2 px), weighted by
     gradient energy: high for aligned, spindle-like texture, low for round nuclei and isotropic texture.
8.   **Edge strength**: histogram (8 bins) of the haematoxylin gradient magnitude.
9-10. **Nuclear morphology**: haematoxylin-dense objects (Otsu threshold, small specks removed): area histogram (9
     log2 bins, 8..2048 px, weighted by area) and minor/major axis-ratio histogram (6 bins, weighted by area).

Each histogram is turned into a unit vector by the Hellinger map (square root of the probabilities), the ten blocks
are concatenated with equal weights and L2-normalised, so the cosine similarity of two descriptors is the mean
Bhattacharyya coefficient of their ten histograms. 171 dimensions, ~10-20 ms for a 256 px tile on one core.

How well it retrieves is measured, not assumed: see ``bench/eval_consep.py`` (CoNSeP tiles labelled by their dominant
nucleus type, library and queries from different source images).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pathasst.core.embedding import Embedder
from pathasst.core.imaging import as_rgb_uint8

__all__ = ["BLOCKS", "HEDTextureEmbedder", "hed_texture_descriptor"]

_OD_MAX = 0.3
_OD_EDGES = np.linspace(0.0, np.sqrt(_OD_MAX), 17) ** 2
_OD_EDGES[-1] = np.inf
_JOINT_EDGES = np.linspace(0.0, np.sqrt(_OD_MAX), 9) ** 2
_JOINT_EDGES[-1] = np.inf
_AREA_EDGES = 2.0 ** np.arange(3, 13)  # 8 .. 4096 px: 9 bins of a factor two
_AREA_EDGES[-1] = np.inf
_RATIO_EDGES = np.array([0.0, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0001])
_COH_EDGES = np.linspace(0.0, 1.0001, 9)
_GRAD_EDGES = np.array([0.0, 0.002, 0.004, 0.007, 0.011, 0.017, 0.026, 0.04, np.inf])

#: block name -> length
BLOCKS: dict[str, int] = {
    "haematoxylin": 16,
    "eosin": 16,
    "dab": 16,
    "haematoxylin_x_eosin": 64,
    "lbp_r1": 10,
    "lbp_r2": 18,
    "coherence": 8,
    "gradient": 8,
    "nuclear_area": 9,
    "nuclear_axis_ratio": 6,
}
_MAX_SIDE = 1024  # larger inputs are downsampled (callers tile big images; this only bounds the cost)


def _hist(values: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    h, _ = np.histogram(values, bins=edges, weights=weights)
    return h.astype(np.float64)


def _hellinger(h: np.ndarray) -> np.ndarray:
    """sqrt of the normalised histogram (unit L2 norm); an empty histogram maps to a fixed 'nothing' vector."""
    h = np.asarray(h, dtype=np.float64).ravel()
    s = h.sum()
    if s <= 0:
        out = np.zeros_like(h)
        out[0] = 1.0  # "no mass" is its own, consistent signature
        return out
    return np.sqrt(h / s)


def _downsample(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    f = int(np.ceil(max(h, w) / _MAX_SIDE))
    if f <= 1:
        return rgb
    hh, ww = (h // f) * f, (w // f) * f
    return rgb[:hh, :ww].reshape(hh // f, f, ww // f, f, 3).mean(axis=(1, 3)).astype(np.uint8)


def _area_and_axis_ratio(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area and minor/major axis ratio (from second central moments) of each labelled object, vectorised."""
    n = int(labels.max()) + 1
    ys, xs = np.indices(labels.shape, dtype=np.float64)
    lab = labels.ravel()

    def s(v: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(lab, weights=None if v is None else v.ravel(), minlength=n)[1:]

    area = s()
    keep = area > 0
    area = np.maximum(area, 1)
    mx, my = s(xs) / area, s(ys) / area
    cxx = s(xs * xs) / area - mx * mx
    cyy = s(ys * ys) / area - my * my
    cxy = s(xs * ys) / area - mx * my
    half_trace = (cxx + cyy) / 2
    root = np.sqrt(np.maximum(((cxx - cyy) / 2) ** 2 + cxy**2, 0))
    lmax, lmin = half_trace + root, np.maximum(half_trace - root, 0)
    ratio = np.sqrt(lmin / np.maximum(lmax, 1e-12))
    ratio[lmax <= 1e-12] = 1.0  # a single pixel is round
    return area[keep], ratio[keep]


def hed_texture_descriptor(rgb: np.ndarray, weights: dict[str, float] | None = None) -> np.ndarray:
    """The descriptor of one RGB image, as a unit float32 vector of ``sum(BLOCKS.values())`` = 171 values.

    ``weights`` (block name -> weight, default 1 each) is for ablations; a weight of 0 drops a block.
    """
    from scipy import ndimage as ndi
    from skimage import color, feature, filters, measure, morphology

    rgb = _downsample(as_rgb_uint8(rgb))
    hed = np.clip(color.rgb2hed(rgb), 0.0, None)
    H, E, D = hed[..., 0], hed[..., 1], hed[..., 2]
    blocks: dict[str, np.ndarray] = {
        "haematoxylin": _hist(H, _OD_EDGES),
        "eosin": _hist(E, _OD_EDGES),
        "dab": _hist(D, _OD_EDGES),
        "haematoxylin_x_eosin": np.histogram2d(H.ravel(), E.ravel(), bins=(_JOINT_EDGES, _JOINT_EDGES))[0],
    }
    # texture on the haematoxylin channel, scaled to 8 bits over a fixed range (LBP is invariant to the scale)
    h8 = (np.clip(H / _OD_MAX, 0, 1) * 255).astype(np.uint8)
    lbp1 = feature.local_binary_pattern(h8, 8, 1, method="uniform")
    lbp2 = feature.local_binary_pattern(h8, 16, 2, method="uniform")
    blocks["lbp_r1"] = _hist(lbp1, np.arange(11) - 0.5)
    blocks["lbp_r2"] = _hist(lbp2, np.arange(19) - 0.5)
    # structure tensor coherence, weighted by gradient energy
    gy, gx = np.gradient(ndi.gaussian_filter(H, 1.0))
    jxx, jyy, jxy = (ndi.gaussian_filter(a, 2.0) for a in (gx * gx, gy * gy, gx * gy))
    trace = jxx + jyy
    disc = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)
    coherence = np.where(trace > 1e-12, disc / np.maximum(trace, 1e-12), 0.0)
    blocks["coherence"] = _hist(coherence, _COH_EDGES, weights=trace)
    blocks["gradient"] = _hist(np.hypot(gx, gy), _GRAD_EDGES)
    # nuclear morphology: haematoxylin-dense objects
    area_h = np.zeros(len(_AREA_EDGES) - 1)
    ratio_h = np.zeros(len(_RATIO_EDGES) - 1)
    if float(H.max() - H.min()) > 0.01:
        thr = max(float(filters.threshold_otsu(H)), 0.02)
        mask = morphology.remove_small_objects(H > thr, max_size=7)
        labels = measure.label(mask)
        if labels.max() > 0:
            area, ratio = _area_and_axis_ratio(labels)
            area_h = _hist(np.clip(area, 8, None), _AREA_EDGES, weights=area)
            ratio_h = _hist(np.clip(ratio, 0, 1), _RATIO_EDGES, weights=area)
    blocks["nuclear_area"] = area_h
    blocks["nuclear_axis_ratio"] = ratio_h
    w = weights or {}
    parts = [_hellinger(blocks[name]) * float(w.get(name, 1.0)) for name in BLOCKS]
    vec = np.concatenate(parts).astype(np.float64)
    n = np.linalg.norm(vec)
    return (vec / n if n > 0 else vec).astype(np.float32)


class HEDTextureEmbedder(Embedder):
    """The ``hed-texture`` descriptor as an :class:`Embedder` (images only, 171-d, no weights)."""

    name: ClassVar[str] = "hed-texture-v1"
    dimension: ClassVar[int] = sum(BLOCKS.values())
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    tile_size: ClassVar[int] = 256

    def __init__(self, batch_size: int = 64, weights: dict[str, float] | None = None) -> None:
        super().__init__(batch_size)
        self.weights = dict(weights or {})
        unknown = set(self.weights) - set(BLOCKS)
        if unknown:
            raise ValueError(f"unknown descriptor blocks {sorted(unknown)}; valid: {', '.join(BLOCKS)}")

    def fingerprint(self) -> str:
        if not self.weights:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in sorted(self.weights.items()))

    def _embed_image_batch(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack([hed_texture_descriptor(im, self.weights or None) for im in images])
