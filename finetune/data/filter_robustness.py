"""Robustness sweep of the pathology image filter (``pathasst-train data filter-eval DATA [WEIGHTS] --perturb``).

Scores fixed weights on one split (default: the held-out ``test`` split) of a
:mod:`~pathasst.finetune.data.filter_data` folder after applying the same deterministic perturbation to every image,
pathology or not (so each label stays what it was):

=====================  ==========================================================================================
setting                what every image gets before the model's own resize to its input size
=====================  ==========================================================================================
``clean``              nothing (the reference: the plain ``filter-eval`` numbers)
``stain_x0.5``         haematoxylin and eosin optical densities times 0.5 (faded / under-stained)
``stain_x1.5``         the same times 1.5 (over-stained)
``blur_sigma1``        Gaussian blur, sigma 1 px at the stored resolution (longer side at most 192 px)
``blur_sigma2``        Gaussian blur, sigma 2 px
``jpeg_q75``           JPEG round trip at quality 75
``jpeg_q50``           JPEG round trip at quality 50
``downscale_x0.5``     resized to half its width and height (antialiased bilinear)
``upscale_x2``         resized to twice its width and height (bicubic)
``grayscale``          ITU-R 601 luma copied to the three channels
=====================  ==========================================================================================

Stain strength (:func:`stain_scale`): colour deconvolution with scikit-image's ``rgb2hed`` / ``hed2rgb``
(Ruifrok-Johnston H, E, DAB vectors); the H and E densities are scaled, DAB is kept, and the part of each pixel's
optical density that the clipped HED decomposition does not represent (a chart's green, say) is kept too: the output
is ``rgb * hed2rgb(scaled) / hed2rgb(hed)``, i.e. optical density plus ``(s - 1)`` times the H and E density, so a
scale of 1.0 is the identity up to rounding.

Nothing here chooses or changes the model: the weights and their threshold (chosen on the validation split) are
used as loaded. Per setting: n, accuracy, pathology recall (sensitivity), non-pathology specificity, each with a
95 % interval from the same cluster bootstrap as ``filter-eval`` (resampling split units: case, slide, source image,
render seed; 2.5-97.5 percentiles), ROC AUC, and the accuracy of each source.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from pathasst.finetune.data.filter_train import split_scores

__all__ = ["PERTURBATIONS", "blur", "grayscale", "jpeg", "perturbation_sweep", "rescale", "stain_scale"]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def stain_scale(rgb: np.ndarray, h: float = 1.0, e: float = 1.0) -> np.ndarray:
    """``rgb`` (uint8) with its haematoxylin optical density times ``h`` and its eosin density times ``e`` (module
    docstring); uint8."""
    from skimage.color import hed2rgb, rgb2hed

    x = np.asarray(rgb, dtype=np.float64) / 255.0
    hed = rgb2hed(x)
    base = hed2rgb(hed)  # in (0, 1]: the clipped stain densities are >= 0 and rgb_from_hed is positive
    scaled = hed * np.array([h, e, 1.0])
    out = np.clip(x, 1e-6, 1.0) * hed2rgb(scaled) / np.maximum(base, 1e-12)
    return _to_uint8(out * 255.0)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel (``sigma`` in pixels, reflected borders); uint8."""
    from scipy import ndimage as ndi

    return _to_uint8(ndi.gaussian_filter(np.asarray(rgb, dtype=np.float32), (sigma, sigma, 0)))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG round trip at ``quality``; uint8."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=int(quality))
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"))


def rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Width and height times ``factor`` (at least 1 px): antialiased bilinear down, bicubic up; uint8."""
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    method = Image.BILINEAR if factor < 1 else Image.BICUBIC
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, method))


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (PIL's ``L``) in all three channels; uint8."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L").convert("RGB"))


#: the settings of the sweep, in report order: name -> uint8 RGB -> uint8 RGB
PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda x: x,
    "stain_x0.5": lambda x: stain_scale(x, 0.5, 0.5),
    "stain_x1.5": lambda x: stain_scale(x, 1.5, 1.5),
    "blur_sigma1": lambda x: blur(x, 1.0),
    "blur_sigma2": lambda x: blur(x, 2.0),
    "jpeg_q75": lambda x: jpeg(x, 75),
    "jpeg_q50": lambda x: jpeg(x, 50),
    "downscale_x0.5": lambda x: rescale(x, 0.5),
    "upscale_x2": lambda x: rescale(x, 2.0),
    "grayscale": grayscale,
}


def _setting_scores(rows: list[Any], p: np.ndarray, thr: float, reps: int, seed: int) -> dict[str, Any]:
    """``filter-eval``'s scores with their cluster-bootstrap intervals, plus the accuracy of each source."""
    out = split_scores(rows, p, thr, reps, seed)
    y, pred = np.array([r.label for r in rows]).astype(bool), p >= thr
    out["per_source_accuracy"] = {}
    for source in sorted({r.source for r in rows}):
        m = np.array([r.source == source for r in rows])
        out["per_source_accuracy"][source] = round(float((pred[m] == y[m]).mean()), 4)
    return out


def perturbation_sweep(data: Any, weights: Any = None, split: str = "test", threshold: float | None = None,
                       settings: list[str] | None = None, bootstrap: int = 1000, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score weights (default: the shipped ones) on ``split`` of a data set folder under each of ``settings``
    (default: every entry of :data:`PERTURBATIONS`), with the weights' own threshold unless ``threshold`` is given.
    Returns ``{"split", "weights", "threshold", "bootstrap", "settings": {name: scores}}`` (module docstring)."""
    from pathlib import Path

    from pathasst.finetune.data.filter_data import read_manifest
    from pathasst.finetune.data.image_filter import load_filter
    from pathasst.finetune.data.image_io import load_image

    names = list(PERTURBATIONS) if not settings else list(settings)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {unknown}; known: {', '.join(PERTURBATIONS)}")
    model = load_filter(weights)
    thr = model.threshold if threshold is None else float(threshold)
    rows = [r for r in read_manifest(Path(data)) if r.split == split]
    if not rows:
        raise ValueError(f"{data}: no images in split {split!r}")
    images = [load_image(Path(data) / r.image) for r in rows]
    result: dict[str, Any] = {
        "split": split, "weights": str(model.path), "threshold": thr,
        "bootstrap": f"{bootstrap} resamples of the split units (case, slide, source image, render seed), "
                     "2.5-97.5 percentiles",
        "note": "the same perturbation is applied to every image, pathology or not; the model and its threshold are "
                "fixed (chosen on the validation split), nothing here is tuned",
        "settings": {},
    }
    for name in names:
        f = PERTURBATIONS[name]
        p = model.probabilities([f(im) for im in images])
        result["settings"][name] = _setting_scores(rows, p, thr, bootstrap, seed)
        if log is not None:
            s = result["settings"][name]
            log(f"{name}: accuracy {s['accuracy']} recall {s['recall']} specificity {s['specificity']} n {s['n']}")
    return result
