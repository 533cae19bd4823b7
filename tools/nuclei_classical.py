"""The classical nuclei backends of ``nuclei_segmentation`` (no downloaded weights), and the label-map helpers the
nuclei, IHC and QC tools share.

``pixel_classifier``: an ilastik-style pixel classifier. 24 hand-made colour/texture features (optical density,
colour deconvolution H and E normalised per image, Gaussian smoothings, Laplacian of Gaussian, gradient magnitude,
Hessian eigenvalues) feed a tiny two-layer perceptron (24-32-32-4, 2,000 parameters, ``tools/weights/nuclei_pixel.npz``)
that predicts background / nucleus / nucleus-border probabilities and a normalised distance to the nucleus border;
seeds are h-maxima of the smoothed distance, then a marker watershed and a size filter.
``deconvolution``: Otsu threshold of the smoothed haematoxylin channel, hole filling, opening, size filter and a
distance-transform h-maxima watershed, fully unsupervised.

Both work at :data:`MODEL_MPP` (other resolutions are resampled to it and back).
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathasst.core.imaging import by_rows, fill_holes, looks_like_he, open_disk
from pathasst.tools.backends.runtime import resample

__all__ = [
    "AUTO_AGREEMENT",
    "AUTO_MIN_NUCLEI",
    "DEFAULT_MIN_AREA_PX",
    "MODEL_MPP",
    "N_FEATURES",
    "SHIPPED_PIXEL_WEIGHTS",
    "WEIGHT_KEYS",
    "Method",
    "MethodChoice",
    "deconvolution_nuclei",
    "h_maxima_by_component",
    "load_weights",
    "nucleus_maps",
    "pixel_features",
    "remove_small_labels",
    "resample_to_model",
    "save_weights",
    "segment_nuclei",
    "weights_npz_bytes",
]

#: tiles of the pixel classifier (pixels at MODEL_MPP) and their overlap
_TILE = 768
_MARGIN = 64


#: resolution (um/px) the classifier and the default size parameters are defined at (CoNSeP, 40x)
MODEL_MPP = 0.25


#: default smallest nucleus kept, in pixels at MODEL_MPP (3.75 um^2)
DEFAULT_MIN_AREA_PX = 60


Method = Literal["pixel_classifier", "deconvolution"]


MethodChoice = Literal["auto", "pixel_classifier", "deconvolution"]


#: ``auto`` falls back to deconvolution when the classifier (or the shipped network) finds fewer than this share of
#: its nuclei ...
AUTO_AGREEMENT = 0.35


#: ... and deconvolution finds at least this many objects. On a sparse CoNSeP tile, deconvolution alone finds up to
#: 45 objects in pigment, mucin dye and fibres (training tiles with <= 20 annotated nuclei: median 2-9, max 45 per
#: 256 px tile) where the network or the classifier rightly finds few, and a ratio of two such small counts says
#: nothing about the image being out of their domain (with 20 instead, the network's guard fell back on 11 of the 336
#: training tiles and the classifier's on 20, at deconvolution F1 0-0.18)
AUTO_MIN_NUCLEI = 50


# ---- the embedded pixel classifier ---------------------------------------------------------------------------------
# tools/weights/nuclei_pixel.npz, written by ``python -m pathasst.finetune.nuclei_pixel`` (model card:
# finetune/model_cards/nuclei_pixel_classifier.md): a perceptron (mu, sd: float32 feature standardisation; w0, b0, w1,
# b1, w2, b2: float16 layers). Training: 3,000 random pixels per tile from the 336 tiles of the training source
# images, targets = background / nucleus / nucleus border (``find_boundaries(mode="inner")``) and the distance to the
# border normalised per nucleus; Adam (lr 3e-3, cosine schedule, 40 epochs, batch 8192), loss = cross-entropy + 2 x MSE
# of sigmoid(distance output). Post-processing parameters were tuned on tiles of source images 2-14 (even) with a
# model trained on the odd source images only.
SHIPPED_PIXEL_WEIGHTS = Path(__file__).resolve().parent / "weights" / "nuclei_pixel.npz"


#: arrays of the weights format (.npz): mu, sd (float32, length = number of features); w0, b0, w1, b1, w2, b2
#: (float16 Linear layers, ``w`` of shape (out, in); the last layer has 4 outputs: 3 class logits + distance)
WEIGHT_KEYS = ("mu", "sd", "w0", "b0", "w1", "b1", "w2", "b2")


N_FEATURES = 24


def load_weights(source: str | Path | bytes) -> dict[str, np.ndarray]:
    """Classifier weights from an .npz file (path) or its bytes, as float32 arrays; ValueError if malformed."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            w = {k: data[k].astype(np.float32) for k in WEIGHT_KEYS if k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a nuclei pixel-classifier .npz: {exc}") from exc
    missing = [k for k in WEIGHT_KEYS if k not in w]
    if missing:
        raise ValueError(f"not a nuclei pixel-classifier .npz: missing {missing}")
    hid = w["w0"].shape[0]
    shapes = {"mu": (N_FEATURES,), "sd": (N_FEATURES,), "w0": (hid, N_FEATURES), "b0": (hid,)}
    shapes |= {"w1": (hid, hid), "b1": (hid,), "w2": (4, hid), "b2": (4,)}
    bad = {k: w[k].shape for k in WEIGHT_KEYS if w[k].shape != shapes[k]}
    if bad:
        raise ValueError(f"nuclei pixel-classifier .npz has wrong shapes {bad}; expected {shapes}")
    return w


def weights_npz_bytes(weights: dict[str, Any]) -> bytes:
    """The .npz bytes of ``weights`` (mu, sd float32; layers float16), byte-for-byte deterministic."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for k in WEIGHT_KEYS:
            arr = np.ascontiguousarray(np.asarray(weights[k], np.float32 if k in ("mu", "sd") else np.float16))
            with zf.open(zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def save_weights(path: str | Path, weights: dict[str, Any]) -> Path:
    """Write ``weights`` in the .npz format :func:`load_weights` reads; returns the path."""
    path = Path(path)
    path.write_bytes(weights_npz_bytes(weights))
    return path


@lru_cache(maxsize=1)
def _weights() -> dict[str, np.ndarray]:
    return load_weights(SHIPPED_PIXEL_WEIGHTS)


def _norm_constants(hed: np.ndarray) -> tuple[float, float, float, float]:
    """Per-image normalisation of H and E: median and 99th percentile (floors avoid dividing by ~0 on blank images)."""
    h = hed[..., 0].ravel()[:: max(1, hed[..., 0].size // 1_000_000)]
    e = hed[..., 1].ravel()[:: max(1, hed[..., 1].size // 1_000_000)]
    hl, hh = np.percentile(h, [50, 99])
    el, eh = np.percentile(e, [50, 99])
    return float(hl), float(max(hh - hl, 0.005)), float(el), float(max(eh - el, 0.001))


def pixel_features(rgb: np.ndarray, norm: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The 24 per-pixel features of the classifier, ``(H, W, 24)`` float32 (image at MODEL_MPP)."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    rgb = np.asarray(rgb)[..., :3]
    od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)
    hed = rgb2hed(rgb).astype(np.float32)
    hl, hr, el, er = norm if norm is not None else _norm_constants(hed)
    hn = (hed[..., 0] - hl) / (hr + 1e-6)
    en = (hed[..., 1] - el) / (er + 1e-6)
    g = ndi.gaussian_filter
    f = [od[..., 0], od[..., 1], od[..., 2], hn, en]
    for s in (1, 2, 4, 8):
        f += [g(hn, s), g(en, s)]
    f += [-(s * s) * ndi.gaussian_laplace(hn, s) for s in (2, 4, 8)]
    f += [ndi.gaussian_gradient_magnitude(hn, s) for s in (1, 2)]
    f.append(hn - g(hn, 16))
    for s in (2, 4):
        ev = hessian_matrix_eigvals(hessian_matrix(hn, sigma=s, order="rc", use_gaussian_derivatives=False))
        f += [ev[0] * s * s, ev[1] * s * s]
    f.append(g(od.sum(-1), 2))
    return np.stack(f, -1).astype(np.float32)


def _mlp(x: np.ndarray, w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = (x - w["mu"]) / w["sd"]
    h = np.maximum(x @ w["w0"].T + w["b0"], 0)
    h = np.maximum(h @ w["w1"].T + w["b1"], 0)
    z = h @ w["w2"].T + w["b2"]
    c = np.exp(z[:, :3] - z[:, :3].max(1, keepdims=True))
    return c / c.sum(1, keepdims=True), 1.0 / (1.0 + np.exp(-np.clip(z[:, 3], -30.0, 30.0)))


def nucleus_maps(rgb: np.ndarray, weights: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Classifier outputs for an image at MODEL_MPP: class probabilities ``(H, W, 3)`` (background, nucleus,
    border) and the predicted normalised distance to the nucleus border ``(H, W)`` (0 at borders, 1 at centres).
    Large images are processed in overlapping tiles with image-wide normalisation. ``weights``: from
    :func:`load_weights` (default: the embedded ones)."""
    from skimage.color import rgb2hed

    w = _weights() if weights is None else weights
    rgb = np.asarray(rgb)[..., :3]
    norm = _norm_constants(rgb2hed(rgb[:: max(1, rgb.shape[0] // 1024), :: max(1, rgb.shape[1] // 1024)]))
    hgt, wid = rgb.shape[:2]
    probs = np.zeros((hgt, wid, 3), np.float32)
    dist = np.zeros((hgt, wid), np.float32)
    for y in range(0, hgt, _TILE):
        for x in range(0, wid, _TILE):
            y0, x0 = max(y - _MARGIN, 0), max(x - _MARGIN, 0)
            y1, x1 = min(y + _TILE + _MARGIN, hgt), min(x + _TILE + _MARGIN, wid)
            f = pixel_features(rgb[y0:y1, x0:x1], norm)
            p, d = _mlp(f.reshape(-1, f.shape[-1]), w)
            ys, xs = slice(y - y0, y - y0 + min(_TILE, hgt - y)), slice(x - x0, x - x0 + min(_TILE, wid - x))
            probs[y : y + _TILE, x : x + _TILE] = p.reshape(f.shape[0], f.shape[1], 3)[ys, xs]
            dist[y : y + _TILE, x : x + _TILE] = d.reshape(f.shape[:2])[ys, xs]
    return probs, dist


# ---- post-processing -------------------------------------------------------------------------------------------------
def remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Set objects smaller than ``min_area`` pixels to 0 (ids are kept)."""
    counts = np.bincount(labels.ravel())
    small = counts < min_area
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    out[small[labels]] = 0
    return out


def h_maxima_by_component(image: np.ndarray, h: float) -> np.ndarray:
    """``skimage.morphology.h_maxima(image, h)`` (bool), computed one connected component of ``image > 0`` at a time
    when ``image`` is >= 0 with zeros between its objects (a smoothed distance transform): the same result, ~3x faster
    on a nuclei image, since skimage's grey reconstruction sorts every pixel of the image.

    Why it is the same: reconstruction by dilation under ``image`` cannot rise above 0 on a zero pixel, and every
    component whose maximum reaches ``h`` floods the zero ring around it to exactly 0 by itself; so no component
    sees another, and one whose maximum stays below ``h`` holds no h-maximum (when none reaches ``h``, ``h`` exceeds
    the image's range and skimage returns no maxima either). Other images go to skimage whole."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima, reconstruction

    image = np.asarray(image)
    if h <= 0 or image.ndim != 2 or not np.issubdtype(image.dtype, np.floating) or image.size == 0 or image.min() < 0:
        return h_maxima(image, h).astype(bool)
    out = np.zeros(image.shape, bool)
    if h > np.ptp(image):
        return out
    support, _ = ndi.label(image > 0, structure=np.ones((3, 3), bool))
    zero = image.dtype.type(0)
    for i, box in enumerate(ndi.find_objects(support), 1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, image.shape))
        own = support[box] == i
        sub = np.where(own, image[box], zero)
        if sub.max() < h:
            continue
        resolution = 2 * np.finfo(sub.dtype).resolution * np.abs(sub)  # as skimage's h_maxima for floats
        rec = reconstruction(sub - h - resolution, sub, method="dilation")
        out[box] |= own & (sub - rec >= h)
    return out


def _watershed(mask: np.ndarray, energy: np.ndarray, h: float, min_area: int, floor: float = -np.inf) -> np.ndarray:
    """Seeds = h-maxima of ``energy`` inside ``mask``; marker watershed on ``-energy``; unseeded parts kept."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    seeds, _ = ndi.label(h_maxima_by_component(energy, h) & mask & (energy > floor))
    labels = watershed(-energy, seeds, mask=mask)
    rest, _ = ndi.label(mask & (labels == 0))
    labels = np.where(rest > 0, rest + labels.max(), labels)
    return remove_small_labels(labels.astype(np.int64), min_area)


def _classifier_labels(
    rgb: np.ndarray, min_area: int, seed_h: float, weights: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    from skimage.filters import gaussian

    probs, dist = nucleus_maps(rgb, weights)
    mask = gaussian(probs[..., 1] + probs[..., 2], 1.0) > 0.5
    mask = open_disk(fill_holes(mask), 1)
    return _watershed(mask, gaussian(dist, 2.0), seed_h, min_area, floor=0.3)


def deconvolution_nuclei(rgb: np.ndarray, min_area: int = DEFAULT_MIN_AREA_PX, seed_h: float = 1.0) -> np.ndarray:
    """Unsupervised nuclei at MODEL_MPP: Otsu on the smoothed haematoxylin channel (at least 0.03 OD) + distance
    h-maxima watershed."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu

    hema = gaussian(by_rows(lambda b: rgb2hed(np.clip(b, 1, 255).astype(np.uint8))[..., 0], np.asarray(rgb)[..., :3]), 1.5)
    if float(np.ptp(hema)) < 1e-3:
        return np.zeros(hema.shape, np.int64)
    mask = open_disk(fill_holes(hema > max(float(threshold_otsu(hema)), 0.03)), 2)
    mask = remove_small_labels(ndi.label(mask)[0], min_area) > 0
    dist = gaussian(ndi.distance_transform_edt(mask), 1.0)
    return _watershed(mask, dist, seed_h, min_area)


def _n_objects(labels: np.ndarray) -> int:
    return int(np.count_nonzero(np.unique(labels)))


def _looks_like_he(rgb: np.ndarray) -> bool:
    """See :func:`pathasst.core.imaging.looks_like_he`."""
    return looks_like_he(rgb)


def resample_to_model(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, float]:
    """Resample an image to MODEL_MPP (no-op within 10 %, as the deep backends' ``working_image``); returns the image
    and the factor applied."""
    factor = mpp / MODEL_MPP
    if abs(factor - 1.0) <= 0.1:
        return rgb, 1.0
    return resample(rgb, factor), factor


def segment_nuclei(
    rgb: np.ndarray,
    mpp: float = MODEL_MPP,
    method: MethodChoice = "auto",
    min_area_px: int | None = None,
    seed_h: float | None = None,
    weights: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, Method]:
    """Instance label map (uint32, 0 = background) of the nuclei in ``rgb`` (pixels of ``mpp`` um), and the method
    used. ``auto`` = the pixel classifier, falling back to ``deconvolution`` when the classifier finds no nucleus on
    an image without eosin (e.g. IHC: the classifier was trained on H&E and sees nothing there).

    ``min_area_px`` is in pixels of the input image (default: 3.75 um^2); ``seed_h`` is the h-maxima depth
    (classifier distance units, default 0.07; pixels at MODEL_MPP for ``deconvolution``, default 1.0).
    ``weights``: pixel-classifier weights from :func:`load_weights` (default: the embedded ones).
    """
    labels, used, _ = _segment_nuclei(rgb, mpp, method, min_area_px, seed_h, weights)
    return labels, used


def _segment_nuclei(
    rgb: np.ndarray,
    mpp: float,
    method: MethodChoice,
    min_area_px: int | None,
    seed_h: float | None,
    weights: dict[str, np.ndarray] | None = None,
    work: np.ndarray | None = None,
) -> tuple[np.ndarray, Method, np.ndarray]:
    """:func:`segment_nuclei`, also returning the image resampled to MODEL_MPP (the domain guard reuses it);
    ``work``: that image when the caller already has it (:func:`resample_to_model` of ``rgb``)."""
    from skimage.segmentation import relabel_sequential
    from skimage.transform import resize

    rgb = np.asarray(rgb)[..., :3]
    if work is None:
        work, factor = resample_to_model(rgb, mpp)
    else:
        factor = mpp / MODEL_MPP if work.shape[:2] != rgb.shape[:2] else 1.0
    if min_area_px is None:
        min_area = DEFAULT_MIN_AREA_PX
    else:
        min_area = max(1, int(round(min_area_px * factor * factor)))
    used: Method = "deconvolution" if method == "deconvolution" else "pixel_classifier"
    if used == "pixel_classifier":
        labels = _classifier_labels(work, min_area, 0.07 if seed_h is None else seed_h, weights)
        if method == "auto" and labels.max() == 0 and not _looks_like_he(work):
            used = "deconvolution"
        elif method == "auto":
            # domain-shift guard: the classifier learned one centre's 40x colorectal H&E. When it finds far fewer
            # nuclei than the unsupervised detector (on CoNSeP held-out tiles the ratio stays >= 0.78 for all but
            # near-empty tiles), the image is out of its distribution: use the unsupervised result instead.
            fallback = deconvolution_nuclei(work, min_area, 1.0 if seed_h is None else seed_h)
            n_cls, n_dec = _n_objects(labels), _n_objects(fallback)  # ids need not be contiguous
            if n_dec >= AUTO_MIN_NUCLEI and n_cls < AUTO_AGREEMENT * n_dec:
                labels, used = fallback, "deconvolution"
    if used == "deconvolution" and (method == "deconvolution" or labels.max() == 0):
        labels = deconvolution_nuclei(work, min_area, 1.0 if seed_h is None else seed_h)
    if factor != 1.0:
        labels = resize(labels, rgb.shape[:2], order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
        if min_area_px is not None:
            labels = remove_small_labels(labels, min_area_px)
    return relabel_sequential(labels)[0].astype(np.uint32), used, work
