"""Nuclei and their DAB on immunohistochemistry images, independent of counterstain and DAB strength.

Both IHC tools read nuclei this way, so ``nuclei_segmentation`` and ``ihc_quantification`` find the same nuclei on
the same image:

1. Colour deconvolution (``skimage.color.rgb2hed``) gives haematoxylin ``h`` and DAB ``d`` optical densities; the
   DAB's median (the background tint colour deconvolution leaves on most images) is subtracted.
2. Each is divided by its own robust scale (99.5th percentile; DAB's at least 0.6 x haematoxylin's, so an image
   without DAB does not blow its noise up), so a pale or a dark counterstain, a weak or a strong DAB, look alike.
3. The nuclear stain, ``max(h / s_h, d / s_d)``, is drawn as a standard haematoxylin image with a faint eosin
   ("pseudo-H&E") and the project's nuclei network segments it: negative (blue) and positive (brown) nuclei are
   found by the same network that was trained on H&E nuclei.
4. A nucleus is DAB-positive when its **normalised DAB fraction** ``(d / s_d) / (d / s_d + h / s_h)``, averaged over
   the nucleus, exceeds a threshold (tool argument; the default was chosen leave-one-image-out on the DeepLIIF Ki-67
   images, see the README's IHC section).

On a large region or slide, :func:`hot_spot` finds the highest index over neighbourhoods of 500 nuclei and
:func:`index_heatmap` maps the index.

Scaling haematoxylin or DAB by a constant scales their percentile by the same constant, so steps 2-4 do not depend
on stain strength (the robustness sweep of ``tools eval ihc_quantification`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HotSpot", "StainMaps", "dab_fraction", "dab_outside_nuclei", "dab_sheet_share", "has_dab", "hot_spot",
           "index_heatmap", "pseudo_he", "stain_maps"]

#: percentile used as each stain's scale
SCALE_PERCENTILE = 99.5
#: DAB's scale is at least this times haematoxylin's (an image without DAB keeps its DAB noise small)
DAB_SCALE_FLOOR = 0.6
#: haematoxylin optical density (rgb2hed units) of the darkest nuclei in the pseudo-H&E image
PSEUDO_H_OD = 0.08
#: eosin optical density of the pseudo-H&E background (enough for the nuclei network's H&E guard)
PSEUDO_E_OD = 0.02


@dataclass
class StainMaps:
    """Haematoxylin and DAB optical densities (``rgb2hed`` units, negatives clipped) and their robust scales."""

    h: np.ndarray
    d: np.ndarray
    h_scale: float
    d_scale: float
    d_background: float = 0.0  # the median DAB optical density subtracted from ``d``

    def dab_dominant(self, min_level: float = 0.35) -> np.ndarray:
        """Pixels where the normalised DAB exceeds ``min_level`` and the normalised haematoxylin."""
        dn = self.d / self.d_scale
        return (dn > min_level) & (dn > self.h / self.h_scale)

    @property
    def nuclear(self) -> np.ndarray:
        """The nuclear stain in [0, ~1]: the larger of the normalised haematoxylin and DAB."""
        return np.maximum(self.h / self.h_scale, self.d / self.d_scale)


def stain_maps(rgb: np.ndarray) -> StainMaps:
    """Colour-deconvolved haematoxylin and DAB of an RGB image, with their scales (see the module docstring)."""
    from skimage.color import rgb2hed

    hed = rgb2hed(np.clip(np.asarray(rgb)[..., :3], 1, 255).astype(np.uint8))
    h = np.clip(hed[..., 0], 0, None).astype(np.float32)
    d = hed[..., 2].astype(np.float32)
    background = float(np.median(d))
    d = np.clip(d - background, 0, None)  # DAB above the image's background tint (rgb2hed leaks into it on H&E)
    h_scale = max(float(np.percentile(h, SCALE_PERCENTILE)), 1e-3)
    d_scale = max(float(np.percentile(d, SCALE_PERCENTILE)), DAB_SCALE_FLOOR * h_scale, 1e-3)
    return StainMaps(h, d, h_scale, d_scale, background)


def pseudo_he(maps: StainMaps) -> np.ndarray:
    """An H&E-looking uint8 RGB image whose haematoxylin is the nuclear stain of ``maps`` (input of the nuclei
    network)."""
    from skimage.color import hed2rgb

    hed = np.zeros((*maps.h.shape, 3), np.float32)
    hed[..., 0] = np.clip(maps.nuclear, 0, 1.5) * PSEUDO_H_OD
    hed[..., 1] = PSEUDO_E_OD
    return (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)


def dab_fraction(labels: np.ndarray, maps: StainMaps) -> np.ndarray:
    """Per nucleus ``1..labels.max()``: mean normalised DAB / (normalised DAB + normalised haematoxylin)."""
    from scipy import ndimage as ndi

    n = int(labels.max())
    if n == 0:
        return np.zeros(0)
    ids = np.arange(1, n + 1)
    dn = np.asarray(ndi.mean(maps.d / maps.d_scale, labels, ids), float)
    hn = np.asarray(ndi.mean(maps.h / maps.h_scale, labels, ids), float)
    return np.nan_to_num(dn / np.maximum(dn + hn, 1e-6))


def has_dab(maps: StainMaps, min_od: float = 0.05, min_fraction: float = 0.002) -> bool:
    """True when at least ``min_fraction`` of the pixels carry DAB (optical density > ``min_od``): one stained
    nucleus in a 512 px field at 40x is about 0.3 %."""
    return float((maps.d > min_od).mean()) >= min_fraction


def dab_outside_nuclei(labels: np.ndarray, maps: StainMaps, min_level: float = 0.35) -> tuple[float, float]:
    """Where the DAB lies: of the DAB-dominant pixels (normalised DAB > ``min_level`` and > normalised
    haematoxylin), the share farther than 3 px from every nucleus, and the fraction of the image they cover.
    Nuclear markers (Ki-67, ER, PR) keep both small (DeepLIIF Ki-67: share <= 0.15, cover <= 0.03 under the stain
    sweep); membrane or cytoplasm stains (HER2, PD-L1, cytokeratin; scikit-image's sample: 0.34, 0.10) do not."""
    from scipy import ndimage as ndi

    dab = maps.dab_dominant(min_level)
    outside = dab & ~ndi.binary_dilation(labels > 0, iterations=3)
    return float(outside.sum() / max(int(dab.sum()), 1)), float(outside.mean())


def dab_sheet_share(maps: StainMaps, mpp: float, min_area_um2: float = 200.0) -> float:
    """Of the DAB-dominant pixels (as in :func:`dab_outside_nuclei`), the share in connected areas larger than
    ``min_area_um2`` (about three large nuclei). Nuclear DAB forms separate nuclei (DeepLIIF Ki-67: 0 under the whole
    stain sweep); membranous or cytoplasmic DAB forms sheets (scikit-image's sample: 0.18, 0.40, 0.65 read at 0.25,
    0.5, 1 um/px). Unlike :func:`dab_outside_nuclei` it needs no nuclei, so a detector that outlines stained
    cytoplasm as nuclei does not hide it."""
    from scipy import ndimage as ndi

    dab = maps.dab_dominant()
    total = int(dab.sum())
    if total == 0:
        return 0.0
    labels, _ = ndi.label(dab)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return float(sizes[sizes * mpp * mpp > min_area_um2].sum() / total)


@dataclass
class HotSpot:
    """The densest-positive neighbourhood: the ``k`` nuclei nearest one centre, their index and bounding box
    ``(x0, y0, x1, y1)`` (pixels of the analysed image)."""

    index: float
    k: int
    box: tuple[float, float, float, float]


def hot_spot(xy: np.ndarray, positive: np.ndarray, k: int, max_centres: int = 4000) -> HotSpot | None:
    """The highest positivity index over neighbourhoods of exactly ``k`` nuclei (each nucleus, up to
    ``max_centres`` of them spread evenly, is a candidate centre; its neighbourhood is its ``k`` nearest nuclei,
    itself included): the clinical hot spot, a field holding at least ``k`` (500) tumour nuclei. None when there
    are fewer than ``k`` nuclei."""
    from scipy.spatial import cKDTree

    n = len(xy)
    if n < k or k < 1:
        return None
    centres = xy[:: max(1, int(np.ceil(n / max_centres)))]
    _, idx = cKDTree(xy).query(centres, k=k)
    idx = np.asarray(idx).reshape(len(centres), k)
    share = positive[idx].mean(1)
    best = idx[int(np.argmax(share))]
    pts = xy[best]
    return HotSpot(100.0 * float(share.max()), k, (float(pts[:, 0].min()), float(pts[:, 1].min()),
                                                     float(pts[:, 0].max()), float(pts[:, 1].max())))


def index_heatmap(xy: np.ndarray, positive: np.ndarray, shape: tuple[int, int], k: int, step: int = 32) -> np.ndarray:
    """``(H, W)`` float map of the positivity index (0-100) of the ``k`` nuclei nearest each point, evaluated every
    ``step`` px and interpolated; NaN-free (``k`` is capped at the number of nuclei)."""
    from scipy.spatial import cKDTree
    from skimage.transform import resize

    h, w = shape
    gy, gx = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    k = max(1, min(k, len(xy)))
    _, idx = cKDTree(xy).query(np.stack([gx.ravel(), gy.ravel()], 1), k=k)
    grid = 100.0 * positive[np.asarray(idx).reshape(-1, k)].mean(1).reshape(gy.shape)
    return resize(grid, (h, w), order=1, mode="edge", anti_aliasing=False)
