"""H&E nuclei instance segmentation: the project's own nuclei network, or classical methods (no downloaded weights).

Methods, all at the model resolution of 0.25 um/px (40x; other resolutions are resampled to it and back):

``nuclei_net`` (through ``auto``)
    The project's own small HoVer-Net-style networks (:mod:`pathasst.tools.backends.nuclei_net`; the shipped file
    is an ensemble of two, 1.3 M and 3.2 M parameters, whose maps are averaged: nucleus
    probability, horizontal/vertical centre-distance maps and a nucleus-type head; marker watershed on the Sobel
    gradients of the HV maps; per-nucleus type by majority vote), shipped as ``tools/weights/nuclei_net.pt``
    (model card ``tools/weights/NUCLEI_MODEL_CARD.md``) and trained on CoNSeP training source images only. It is
    what ``auto`` runs when PATHASST_NUCLEI_WEIGHTS is unset and :data:`SHIPPED_NET_IS_DEFAULT` is true (it measured
    better than the pixel classifier on the held-out tiles). PATHASST_NUCLEI_WEIGHTS may name another checkpoint of
    this network, an ultralytics YOLO-seg checkpoint (``method`` then reads ``yolo_seg``) or a segment-anything
    checkpoint, which outlines the nuclei the shipped network finds (box prompts; ``method`` reads ``sam``).

``pixel_classifier``
    An ilastik-style pixel classifier: 24 hand-made colour/texture features (optical density, colour
    deconvolution H and E (``skimage.color.rgb2hed``) normalised per image, Gaussian smoothings, Laplacian of
    Gaussian, gradient magnitude, Hessian eigenvalues) feed a tiny two-layer perceptron (24-32-32-4, 2,000
    parameters, embedded below) that predicts background / nucleus / nucleus-border probabilities and a normalised
    distance to the nucleus border. Nuclei = foreground probability > 0.5 (hole-filled, opened); seeds = h-maxima of
    the smoothed distance map; marker watershed; size filter.
    The perceptron was trained on CoNSeP training tiles of source images 1-14 and all odd-numbered ones
    (``train_1`` ... ``train_27``); tiles of source images 16, 18, ... 26 were never used for training or tuning
    and are the held-out test set of ``tests/test_tools_accuracy.py``.
``deconvolution``
    Fully unsupervised: Otsu threshold of the smoothed haematoxylin channel, hole filling, opening, size filter and a
    distance-transform h-maxima watershed. Use it for stains far from CoNSeP-like H&E.
``auto`` (default)
    The deep backend (the shipped network or PATHASST_NUCLEI_WEIGHTS), else the pixel classifier; when the image
    has no eosin (e.g. DAB IHC; both learned methods were trained on H&E), or the learned method finds far fewer
    nuclei than the deconvolution method (out of its domain), the deconvolution method (user-configured weights are
    always used as they are; for the shipped network, an image without eosin falls back only when deconvolution finds
    nuclei densely enough, so a near-empty field keeps the network's answer). The output's ``method`` says which one
    ran.

Known limits: trained on one centre's colorectal H&E (CoNSeP); very large vesicular nuclei (> ~10 um across, pale
interior) are under-detected, and touching nuclei in dense epithelium are often merged.
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from pydantic import Field

from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult
from pathasst.tools.geojson import label_map_to_features
from pathasst.tools.imaging import ImageData, by_rows
from pathasst.tools.planning import PlanExample, PlanningHints

if TYPE_CHECKING:
    from pathasst.agent.settings import Settings

__all__ = [
    "MODEL_MPP",
    "SHIPPED_NET_IS_DEFAULT",
    "SHIPPED_NET_WEIGHTS",
    "Method",
    "MethodChoice",
    "NucleiSegmentationInput",
    "NucleiSegmentationOutput",
    "NucleiSegmentationTool",
    "deconvolution_nuclei",
    "h_maxima_by_component",
    "load_weights",
    "nucleus_maps",
    "outline_overlay",
    "pixel_features",
    "remove_small_labels",
    "resample_to_model",
    "save_weights",
    "segment_nuclei",
    "sig",
    "weights_npz_bytes",
]

#: resolution (um/px) the classifier and the default size parameters are defined at (CoNSeP, 40x)
MODEL_MPP = 0.25
#: default smallest nucleus kept, in pixels at MODEL_MPP (3.75 um^2)
DEFAULT_MIN_AREA_PX = 60
_TILE = 768
#: the project's own nuclei network, shipped with the package (see tools/weights/NUCLEI_MODEL_CARD.md)
SHIPPED_NET_WEIGHTS = Path(__file__).resolve().parent / "weights" / "nuclei_net.pt"
#: whether ``auto`` runs the shipped network when PATHASST_NUCLEI_WEIGHTS is unset (it beat the pixel classifier on
#: the held-out CoNSeP tiles; see the model card)
SHIPPED_NET_IS_DEFAULT = True
_MARGIN = 64

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
#: the shipped network's guard falls back on an image without eosin only when deconvolution finds at least this many
#: nuclei per mm^2 (near-empty CoNSeP tiles without eosin: <= 977; IHC crops of 64-128 px: median 9,000-14,000)
AUTO_MIN_DENSITY_MM2 = 2000.0


def sig(x: float | None, digits: int = 4) -> float | None:
    """Round to ``digits`` significant digits and return a plain float (None stays None)."""
    if x is None:
        return None
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


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
    from skimage.morphology import h_maxima
    from skimage.morphology import reconstruction

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
    from scipy import ndimage as ndi
    from skimage.filters import gaussian
    from skimage.morphology import disk

    probs, dist = nucleus_maps(rgb, weights)
    mask = gaussian(probs[..., 1] + probs[..., 2], 1.0) > 0.5
    mask = ndi.binary_opening(ndi.binary_fill_holes(mask), disk(1))
    return _watershed(mask, gaussian(dist, 2.0), seed_h, min_area, floor=0.3)


def deconvolution_nuclei(rgb: np.ndarray, min_area: int = DEFAULT_MIN_AREA_PX, seed_h: float = 1.0) -> np.ndarray:
    """Unsupervised nuclei at MODEL_MPP: Otsu on the smoothed haematoxylin channel (at least 0.03 OD) + distance
    h-maxima watershed."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk

    hema = gaussian(by_rows(lambda b: rgb2hed(np.clip(b, 1, 255).astype(np.uint8))[..., 0], np.asarray(rgb)[..., :3]), 1.5)
    if float(np.ptp(hema)) < 1e-3:
        return np.zeros(hema.shape, np.int64)
    mask = ndi.binary_opening(ndi.binary_fill_holes(hema > max(float(threshold_otsu(hema)), 0.03)), disk(2))
    mask = remove_small_labels(ndi.label(mask)[0], min_area) > 0
    dist = gaussian(ndi.distance_transform_edt(mask), 1.0)
    return _watershed(mask, dist, seed_h, min_area)


def _n_objects(labels: np.ndarray) -> int:
    return int(np.count_nonzero(np.unique(labels)))


def _looks_like_he(rgb: np.ndarray) -> bool:
    """See :func:`pathasst.tools.imaging.looks_like_he`."""
    from pathasst.tools.imaging import looks_like_he

    return looks_like_he(rgb)


def _with_mpp(image: ImageData, mpp: float) -> ImageData:
    """``image`` with an assumed resolution (the deep backends resample by mpp)."""
    return ImageData(pixels=image.pixels, name=image.name, mpp=mpp, origin=image.origin, scale=image.scale,
                     notes=list(image.notes))


def _domain_fallback(
    rgb: np.ndarray, mpp: float, labels: np.ndarray, min_area_px: int | None, seed_h: float | None,
    work: np.ndarray | None = None,
) -> np.ndarray | None:
    """The shipped network's domain guard: the deconvolution labels when the image has no eosin (IHC, other stains)
    and deconvolution finds at least AUTO_MIN_DENSITY_MM2 nuclei per mm^2, or when deconvolution finds at least
    AUTO_MIN_NUCLEI and the network under AUTO_AGREEMENT of them (out of its domain); None when the network's
    answer stands. A near-empty field without eosin (lumen, fat, a pale edge of tissue) keeps the network's answer:
    there, deconvolution's few objects are mostly stain noise (two such tiles among the 70 post-processing tuning
    tiles; falling back on them had cost the tool's mean object F1 there 0.014), while a small IHC crop is dense in
    nuclei. So does a sparse H&E tile with pigment or dye (the count floor AUTO_MIN_NUCLEI: 11 of the 336 CoNSeP
    training tiles fell back without it, at object F1 0; the tool's mean F1 on all 336 rose from 0.682 to 0.698).
    ``work``: ``rgb`` already resampled to MODEL_MPP (the network's input), so that it is not resampled twice."""
    fallback, _, work = _segment_nuclei(rgb, mpp, "deconvolution", min_area_px, seed_h, work=work)
    n_net, n_dec = _n_objects(labels), _n_objects(fallback)
    if not _looks_like_he(work):
        area_mm2 = rgb.shape[0] * rgb.shape[1] * mpp * mpp / 1e6
        return fallback if n_dec > 0 and n_dec >= AUTO_MIN_DENSITY_MM2 * area_mm2 else None
    return fallback if n_dec >= AUTO_MIN_NUCLEI and n_net < AUTO_AGREEMENT * n_dec else None


def ihc_network_input(work: ImageData) -> tuple[ImageData, bool]:
    """The shipped network's input for ``work`` (already at MODEL_MPP): on a DAB immunostain (no eosin, clear DAB)
    the pseudo-H&E of its normalised nuclear stain (:mod:`pathasst.tools.ihc_nuclei`) and True; otherwise ``work``
    unchanged and False. ``ihc_quantification`` reads its nuclei through the same path."""
    from pathasst.tools.ihc_nuclei import has_dab, pseudo_he, stain_maps

    if _looks_like_he(work.pixels):
        return work, False
    maps = stain_maps(work.pixels)
    if not has_dab(maps):
        return work, False
    return ImageData(pseudo_he(maps), work.name, work.mpp, work.origin, work.scale, work.notes, work.slide), True


def resample_to_model(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, float]:
    """Resample an image to MODEL_MPP (no-op within 10 %, as the deep backends' ``working_image``); returns the image
    and the factor applied."""
    from pathasst.tools.backends.runtime import resample

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


_Color = tuple[int, int, int]


def outline_overlay(rgb: np.ndarray, labels: np.ndarray, colors: dict[int, _Color] | _Color) -> np.ndarray:
    """RGB copy of ``rgb`` with object outlines drawn (one colour, or ``{label: colour}``)."""
    from skimage.segmentation import find_boundaries

    out = np.array(rgb[..., :3], dtype=np.uint8, copy=True)
    edges = find_boundaries(labels, mode="inner")
    if isinstance(colors, tuple):
        out[edges] = colors
        return out
    lut = np.zeros((int(labels.max()) + 1, 3), np.uint8)
    for lab, col in colors.items():
        lut[lab] = col
    out[edges] = lut[labels[edges]]
    return out


# ---- the tool -----------------------------------------------------------------------------------------------------
class NucleiSegmentationInput(ToolInput):
    """Arguments of ``nuclei_segmentation``."""

    method: MethodChoice = Field(
        "auto",
        description="'pixel_classifier': colour/texture pixel classifier + watershed (best on H&E); "
        "'deconvolution': unsupervised haematoxylin Otsu threshold + watershed; "
        "'auto' (best on H&E): the deep nuclei network (the project's shipped one, or PATHASST_NUCLEI_WEIGHTS: "
        "a nuclei-net, segment-anything or YOLO-seg checkpoint), with per-nucleus types when the network has a "
        "type head; falls "
        "back to deconvolution on non-H&E stains.",
    )
    min_area_px: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Smallest nucleus kept, in pixels of the analysed image (default 3.75 um^2).",
    )
    seed_h: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Seed depth for splitting touching nuclei (h-maxima); lower splits more. Default: 0.07 "
        "(pixel_classifier) or 1.0 (deconvolution).",
    )
    assumed_mpp: float = Field(
        0.25, gt=0.05, le=4.0, description="Microns per pixel assumed when the image's resolution is unknown."
    )


class NucleiSegmentationOutput(ToolOutput):
    """Counts and morphometry of the segmented nuclei."""

    count: int = Field(..., ge=0, description="Number of nuclei found.")
    density_per_mm2: float | None = Field(None, description="Nuclei per mm^2 of analysed image; None when mpp unknown.")
    analysed_area_mm2: float | None = Field(None, description="Analysed image area, mm^2; None when mpp unknown.")
    mean_area_px: float | None = Field(None, description="Mean nucleus area in pixels; None when no nuclei.")
    mean_area_um2: float | None = Field(None, description="Mean nucleus area, um^2; None w/o mpp or nuclei.")
    area_um2_p10: float | None = Field(None, description="10th percentile of nucleus area, um^2 (None w/o mpp).")
    area_um2_p50: float | None = Field(None, description="Median nucleus area, um^2 (None w/o mpp).")
    area_um2_p90: float | None = Field(None, description="90th percentile of nucleus area, um^2 (None w/o mpp).")
    mean_eccentricity: float | None = Field(
        None, description="Mean eccentricity of the fitted ellipses (0 = round, 1 = line)."
    )
    mean_solidity: float | None = Field(None, description="Mean solidity (area / convex hull area); low = irregular.")
    nuclear_area_fraction: float = Field(..., ge=0, le=1, description="Fraction of the image covered by nuclei.")
    mpp: float = Field(..., description="Microns per pixel used for the size parameters.")
    mpp_assumed: bool = Field(..., description="True when the image had no mpp and assumed_mpp was used.")
    method: Method | Literal["yolo_seg", "nuclei_net", "sam"] = Field(
        ...,
        description="Segmentation method used ('nuclei_net': the project's nuclei network, shipped or from "
        "PATHASST_NUCLEI_WEIGHTS; 'yolo_seg': a YOLO-seg checkpoint from PATHASST_NUCLEI_WEIGHTS; 'sam': a "
        "segment-anything checkpoint from PATHASST_NUCLEI_WEIGHTS outlining the nuclei the network finds).",
    )
    type_counts: dict[str, int] | None = Field(
        None,
        description="Nuclei per type (CoNSeP classes 'Other', 'Inflammatory', 'Epithelial', 'Spindle') when the "
        "method classifies nuclei ('nuclei_net'); None otherwise.",
    )


class NucleiSegmentationTool(PathologyTool):
    """H&E nuclei instance segmentation (own nuclei network or classical) with counts, types and morphometry."""

    name = "nuclei_segmentation"
    planning = PlanningHints(
        order=20, examples=(PlanExample(question="Segment the nuclei and report their mean area.", stain="H&E", image="patch"),)
    )
    description = (
        "Segment cell nuclei in an H&E image (a small HoVer-Net-style network, or a classical pixel classifier + "
        "watershed); returns the nucleus count, density per mm^2, counts per nucleus type (other, inflammatory, "
        "epithelial, spindle) when the network runs, area statistics (um^2), eccentricity and solidity, with an "
        "outline overlay and one polygon per nucleus."
    )
    version = "0.7.0"
    input_model = NucleiSegmentationInput
    output_model = NucleiSegmentationOutput
    headline_fields = ("count", "density_per_mm2", "mean_area_um2", "mean_eccentricity")
    working_mpp = MODEL_MPP
    segmentation = True
    #: deep backend (method 'auto'): the project's nuclei network or ultralytics YOLO-seg weights, see
    #: pathasst.tools.backends.nuclei_yolo.load_nuclei_backend; unset: the shipped network
    weights_setting = "nuclei_weights"

    def _shipped(self) -> Path | None:
        return SHIPPED_NET_WEIGHTS if SHIPPED_NET_IS_DEFAULT and SHIPPED_NET_WEIGHTS.is_file() else None

    def _load(self) -> None:
        path = self.weights_path()
        if path is not None:
            from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

            self._deep = load_nuclei_backend(path, self.settings)
        elif self._shipped() is not None:
            from pathasst.tools.backends.nuclei_net import NucleiNet

            self._deep = NucleiNet.load(SHIPPED_NET_WEIGHTS, self.weights_setting, self.settings)

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        if info["weights"] is None and self._shipped() is not None:  # 'weights' stays the user's setting
            from pathasst.tools.base import file_sha256

            info["shipped_weights"] = f"pathasst/tools/weights/{SHIPPED_NET_WEIGHTS.name}"
            info["shipped_weights_sha256"] = file_sha256(SHIPPED_NET_WEIGHTS)
        if getattr(self, "_deep", None) is not None:
            info["model"] = self._deep.describe()
        return info

    def __init__(self, settings: Settings, pixel_weights: str | Path | dict[str, Any] | None = None) -> None:
        """``pixel_weights``: a retrained classifier (.npz path from ``pathasst.finetune.nuclei_pixel``, or
        :func:`load_weights` arrays) instead of the embedded one."""
        super().__init__(settings)
        if isinstance(pixel_weights, (str, Path)):
            pixel_weights = load_weights(pixel_weights)
        self.pixel_weights = pixel_weights

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        from skimage.measure import regionprops_table

        args = cast(NucleiSegmentationInput, args)
        mpp = image.mpp if image.mpp is not None else args.assumed_mpp
        configured = self.weights_path() is not None
        deep = args.method == "auto" and (configured or self._shipped() is not None)
        used: str
        types: dict[int, str] | None = None
        type_names: list[str] = []
        if deep:
            from pathasst.tools.backends.nuclei_net import NucleiNet, to_image_labels
            from pathasst.tools.backends.nuclei_sam import NucleiSam
            from pathasst.tools.backends.runtime import working_image

            self.load()
            work = image if image.mpp is not None else _with_mpp(image, mpp)
            shared = None  # the shipped network and its domain guard both work at MODEL_MPP: resample once for both
            ihc = False
            if not configured and isinstance(self._deep, NucleiNet) and self._deep.config.mpp == MODEL_MPP:
                shared = working_image(work, MODEL_MPP)
                shared, ihc = ihc_network_input(shared)
            if isinstance(self._deep, (NucleiNet, NucleiSam)):
                pred = self._deep.segment(work if shared is None else shared)
                if shared is not None:  # labels at the working resolution: back to the image's
                    pred = to_image_labels(pred.labels, pred.types, image.shape, pred.type_classes)
                labels, used = pred.labels, "nuclei_net" if isinstance(self._deep, NucleiNet) else "sam"
                type_names = pred.type_classes
                types = {lab: pred.type_classes[t - 1] for lab, t in pred.types.items() if 1 <= t <= len(type_names)}
            else:
                labels, used = self._deep.segment(work), "yolo_seg"
            fallback = None if configured or ihc else _domain_fallback(
                image.pixels, mpp, labels, args.min_area_px, args.seed_h,
                work=None if shared is None else shared.pixels)
            if fallback is not None:
                labels, used, types, type_names = fallback, "deconvolution", None, []
            if ihc:  # the type head learned H&E colours: on an immunostain it names no type
                types, type_names = None, []
                image.notes.append("nuclei_segmentation: DAB immunostain, nuclei read on its normalised nuclear stain")
        else:
            labels, used = segment_nuclei(
                image.pixels, mpp, args.method, args.min_area_px, args.seed_h, weights=self.pixel_weights
            )
        props = regionprops_table(labels, properties=("label", "area", "eccentricity", "solidity"))
        areas = np.asarray(props["area"], dtype=float)
        n = int(areas.size)
        known = image.mpp is not None
        um2 = areas * image.mpp**2 if known else None
        area_mm2 = image.area_mm2
        out = NucleiSegmentationOutput(
            count=n,
            density_per_mm2=sig(n / area_mm2) if area_mm2 else None,
            analysed_area_mm2=sig(area_mm2),
            mean_area_px=sig(areas.mean()) if n else None,
            mean_area_um2=sig(um2.mean()) if n and um2 is not None else None,
            area_um2_p10=sig(np.percentile(um2, 10)) if n and um2 is not None else None,
            area_um2_p50=sig(np.percentile(um2, 50)) if n and um2 is not None else None,
            area_um2_p90=sig(np.percentile(um2, 90)) if n and um2 is not None else None,
            mean_eccentricity=sig(np.mean(props["eccentricity"])) if n else None,
            mean_solidity=sig(np.mean(props["solidity"])) if n else None,
            nuclear_area_fraction=sig(float((labels > 0).mean())),
            mpp=sig(mpp),
            mpp_assumed=not known,
            method=used,  # type: ignore[arg-type]
            type_counts={name: sum(1 for t in types.values() if t == name) for name in type_names}
            if types is not None
            else None,
            backend={"nuclei_net": "nuclei_net", "yolo_seg": "yolo", "sam": "sam"}.get(used, "classical"),
        )
        measurements = {
            int(lab): {"Area px": float(a), **({"Area um^2": sig(a * image.mpp**2)} if known else {})}
            for lab, a in zip(props["label"], areas)
        }
        names: str | dict[int, str] = "Nucleus"
        if types is not None:  # QuPath classification = the nucleus type ("Nucleus" where the vote found none)
            names = {int(lab): types.get(int(lab), "Nucleus") for lab in props["label"]}
        features = label_map_to_features(labels, image, names, measurements=measurements)
        overlay = outline_overlay(image.pixels, labels, (0, 255, 0))
        return ToolResult(output=out, labels=labels, mask=labels > 0, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        output = cast(NucleiSegmentationOutput, output)
        if output.status != "ok":
            return super().summarize(output)
        parts = [f"{output.count} nuclei"]
        if output.density_per_mm2 is not None:
            parts.append(f"{output.density_per_mm2:g}/mm²")
        if output.mean_area_um2 is not None:
            parts.append(f"mean area {output.mean_area_um2:g} µm²")
        elif output.mean_area_px is not None:
            parts.append(f"mean area {output.mean_area_px:g} px (mpp unknown)")
        if output.mean_eccentricity is not None:
            parts.append(f"mean eccentricity {output.mean_eccentricity:g}")
        parts.append(f"nuclear area fraction {output.nuclear_area_fraction:g}")
        if output.type_counts and any(output.type_counts.values()):  # counts are in the output; order only here
            ranked = sorted((k for k, v in output.type_counts.items() if v), key=lambda k: -output.type_counts[k])
            parts.append("types by count " + " > ".join(ranked))
        parts.append(f"method {output.method}")
        return f"{self.name}: " + ", ".join(parts)
