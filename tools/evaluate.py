"""Accuracy of the tools against real ground truth, in the layouts of ``shared/data`` (see its README).

* :func:`evaluate_nuclei` - ``consep_train`` layout: ``images/NAME.(jpg|png)`` and ``instances/NAME.png`` (16-bit
  instance label map, non-contiguous ids). Object F1 / precision / recall at IoU > 0.5, PQ, AJI, pixel Dice: mean
  over tiles, plus AJI and PQ aggregated over all tiles.
* :func:`evaluate_ihc` - ``deepliif_ki67`` layout: ``NAME_ihc.png`` and ``NAME_groundtruth.png`` (red = Ki-67
  positive nuclei, blue = negative, green = boundaries). Ground-truth cells are the connected components of the red
  and blue masks; per image: true vs predicted positivity index, absolute error, per-class point F1.
* :func:`baseline_nuclei` - the naive baseline of the data README (colour deconvolution + Otsu + distance-transform
  watershed), so that tests and benchmarks can compare against it in-process.

``tool`` is either a ``PathologyTool`` (called with its default arguments through ``analyze``) or any callable
``rgb -> label map`` (nuclei) / ``rgb -> (xy, positive)`` (IHC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.imaging import ImageData
from pathasst.core.readers import read_patch
from pathasst.core.settings import Settings
from pathasst.tools.backends.runtime import resample
from pathasst.tools.base import PathologyTool
from pathasst.tools.metrics import aji_counts, dice, match_points, match_points_by_class, object_f1, panoptic_quality

__all__ = [
    "CONSEP_MPP",
    "DEEPLIIF_MPP",
    "baseline_nuclei",
    "evaluate_ihc",
    "evaluate_nuclei",
    "ihc_ground_truth",
    "nuclei_tiles",
    "rescale_tile",
]

#: microns per pixel of the CoNSeP tiles (40x scans)
CONSEP_MPP = 0.25
#: microns per pixel of the DeepLIIF Ki-67 images (40x)
DEEPLIIF_MPP = 0.25


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


def _read_rgb(path: Path) -> np.ndarray:
    """An image decoded as the product decodes case images (``read_patch``: uint8 RGB from grey, palette, RGBA or
    TIFF files, the pixel limit of the default settings); ``[..., :3]`` would cut a grey image's columns."""
    return read_patch(path, Settings.model_fields["max_image_pixels"].default).pixels


def baseline_nuclei(rgb: np.ndarray, min_distance: int = 6, min_area_px: int = 30) -> np.ndarray:
    """The README's naive baseline: haematoxylin by colour deconvolution (``rgb2hed``), Otsu threshold, objects
    below ``min_area_px`` removed, distance-transform watershed seeded by ``peak_local_max(min_distance)``.

    With the defaults it scores F1 0.21 / AJI 0.26 / PQ 0.15 on every 8th consep_train tile, the figures quoted in
    the data README. Returns an int32 instance label map (0 = background).
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    h = rgb2hed(np.asarray(rgb)[..., :3])[..., 0]
    comps, _ = ndi.label(h > threshold_otsu(h))
    sizes = np.bincount(comps.ravel())
    keep = sizes >= min_area_px
    keep[0] = False
    mask = keep[comps]
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(mask)[0], exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


#: CoNSeP source images never used to train or tune the project's nuclei models: the held-out test set
CONSEP_HELD_OUT_SOURCES = frozenset({16, 18, 20, 22, 24, 26})


def consep_held_out_tiles(data_dir: Path | str, every: int = 2) -> list[str]:
    """Held-out CoNSeP tiles (sources 16-26, even); ``every=2``: every 2nd, the 48 tiles the README reports."""
    held = [n for n in nuclei_tiles(data_dir) if int(n.split("_")[1]) in CONSEP_HELD_OUT_SOURCES]
    return held[::every]


def nuclei_tiles(data_dir: Path | str, limit: int | None = None, names: Iterable[str] | None = None) -> list[str]:
    """Sorted tile names of a consep_train-layout folder (optionally only ``names``, at most ``limit``)."""
    data_dir = Path(data_dir)
    found = sorted(p.stem for p in (data_dir / "instances").glob("*.png"))
    if names is not None:
        wanted = set(names)
        found = [n for n in found if n in wanted]
    return found[:limit] if limit is not None else found


def _image_path(folder: Path, name: str) -> Path:
    for ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no image for {name} in {folder}")


def _nuclei_predictor(tool: Any, mpp: float) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(tool, PathologyTool):
        tool.load()

        def predict(rgb: np.ndarray) -> np.ndarray:
            args = tool.input_model(image="tile")
            result = tool.analyze(ImageData(rgb, name="tile", mpp=mpp), args)
            if result.labels is None:
                raise ValueError(f"tool {tool.name} returned no label map")
            return result.labels

        return predict
    return tool


def rescale_tile(rgb: np.ndarray, labels: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A tile as a scan at another resolution: RGB resampled with antialiasing, instance labels by nearest neighbour
    (``scale`` 0.5 turns a 40x tile into a 20x one; a nucleus of under a pixel there disappears)."""
    if scale == 1.0:
        return rgb, labels
    small = resample(rgb, scale)
    h, w = small.shape[:2]
    ys = np.minimum(((np.arange(h) + 0.5) / scale).astype(np.int64), labels.shape[0] - 1)
    xs = np.minimum(((np.arange(w) + 0.5) / scale).astype(np.int64), labels.shape[1] - 1)
    return small, labels[np.ix_(ys, xs)]


def evaluate_nuclei(
    tool: Any,
    data_dir: Path | str,
    limit: int | None = None,
    names: Iterable[str] | None = None,
    mpp: float = CONSEP_MPP,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Score a nuclei segmenter on a consep_train-layout folder.

    Returns ``n_tiles``, mean-over-tiles ``f1``, ``precision``, ``recall``, ``pq``, ``dq``, ``sq``, ``aji``,
    ``dice``; ``aji_aggregate`` (intersections and unions summed over all tiles), ``pq_aggregate`` (tp/fp/fn and
    IoUs summed over all tiles), ``by_image`` (F1 and AJI pooled per source image, then averaged over images, when
    the tiles are named ``IMAGE_INDEX``), ``ci95`` (bootstrap 95 % intervals of the mean-over-tiles F1 and AJI, see
    :func:`bootstrap_ci`) and ``per_tile`` rows. ``scale`` != 1 scores the tiles as a scan at ``mpp / scale``
    (:func:`rescale_tile`: 0.5 = CoNSeP as a 20x slide), against the labels resampled alike.
    """
    data_dir = Path(data_dir)
    predict = _nuclei_predictor(tool, mpp / scale)
    rows: list[dict[str, Any]] = []
    inter_sum = union_sum = iou_sum = 0.0
    tp = fp = fn = 0
    for name in nuclei_tiles(data_dir, limit, names):
        rgb, true = rescale_tile(_read_rgb(_image_path(data_dir / "images", name)),
                                 _read(data_dir / "instances" / f"{name}.png"), scale)
        pred = np.asarray(predict(rgb))
        f = object_f1(true, pred)
        pq = panoptic_quality(true, pred)
        inter, union = aji_counts(true, pred)
        inter_sum += inter
        union_sum += union
        iou_sum += pq["iou_sum"]
        tp, fp, fn = tp + pq["tp"], fp + pq["fp"], fn + pq["fn"]
        rows.append(
            {
                "name": name,
                "f1": f["f1"],
                "precision": f["precision"],
                "recall": f["recall"],
                "pq": pq["pq"],
                "dq": pq["dq"],
                "sq": pq["sq"],
                "aji": inter / union if union else 1.0,
                "dice": dice(true, pred),
                "n_true": int(f["tp"] + f["fn"]),
                "n_pred": int(f["tp"] + f["fp"]),
                "tp": int(f["tp"]),
                "inter": float(inter),
                "union": float(union),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no tiles found in {data_dir}")
    keys = ("f1", "precision", "recall", "pq", "dq", "sq", "aji", "dice")
    out: dict[str, Any] = {"n_tiles": len(rows)}
    out.update({k: float(np.mean([r[k] for r in rows])) for k in keys})
    out["aji_aggregate"] = inter_sum / union_sum if union_sum else 1.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    out["pq_aggregate"] = dq * (iou_sum / tp if tp else 0.0)
    out["f1_aggregate"] = dq
    by_image = _by_source_image(rows)
    if by_image is not None:
        out["by_image"] = by_image
    out["ci95"] = bootstrap_ci(rows, ("f1", "aji"), (lambda n: str(_source_image(n))) if by_image is not None else None)
    out["per_tile"] = rows
    return out


def _source_image(name: str) -> str | None:
    """``train_16_003`` -> ``train_16`` (the source image a tile was cut from); None for a name without that form."""
    stem, _, index = name.rpartition("_")
    return stem if stem and index.isdigit() else None


def bootstrap_ci(
    rows: list[dict[str, Any]],
    keys: Iterable[str],
    cluster: Callable[[str], str] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile-bootstrap 95 % intervals of the mean over ``rows`` of each of ``keys``.

    With ``cluster`` (row name -> group, e.g. the source image of a tile), whole groups are resampled with
    replacement and the mean is taken over the tiles of the drawn groups: tiles of one image are not independent
    (same patient, stain and tissue), so resampling tiles alone would make the interval too narrow. Without it, rows
    are resampled. Fixed ``seed``: the same rows give the same interval.
    """
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(cluster(r["name"]) if cluster else str(i), []).append(i)
    members = list(groups.values())
    rng = np.random.default_rng(seed)
    values = {k: np.array([float(r[k]) for r in rows]) for k in keys}
    sums = {k: np.array([v[m].sum() for m in members]) for k, v in values.items()}
    sizes = np.array([len(m) for m in members], dtype=float)
    draws = rng.integers(0, len(members), size=(resamples, len(members)))
    n = sizes[draws].sum(axis=1)
    out: dict[str, Any] = {"resampled": "source images" if cluster else "tiles", "units": len(members),
                           "resamples": resamples}
    for k in values:
        means = sums[k][draws].sum(axis=1) / n
        out[k] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    return out


def _by_source_image(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """F1 and AJI pooled over the tiles of each source image (tiles named ``IMAGE_INDEX``, e.g. ``train_16_003``),
    then averaged over images: the protocol of figures published for whole images (HoVer-Net's CoNSeP results are
    means over 1000 px test images). None unless every name has that form and some image has several tiles."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        image = _source_image(r["name"])
        if image is None:
            return None
        groups.setdefault(image, []).append(r)
    if len(groups) == len(rows):
        return None
    images = []
    for image, rs in groups.items():
        tp = sum(r["tp"] for r in rs)
        n_true, n_pred = sum(r["n_true"] for r in rs), sum(r["n_pred"] for r in rs)
        union = sum(r["union"] for r in rs)
        images.append({"image": image, "tiles": len(rs), "n_true": n_true,
                       "f1": 2 * tp / (n_true + n_pred) if n_true + n_pred else 1.0,
                       "aji": sum(r["inter"] for r in rs) / union if union else 1.0})
    return {"n_images": len(images), "f1": float(np.mean([i["f1"] for i in images])),
            "aji": float(np.mean([i["aji"] for i in images])), "images": images}


def ihc_ground_truth(gt_rgb: np.ndarray, min_area_px: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth cells of a DeepLIIF mask: centroids ``(N, 2)`` (x, y) and ``positive`` flags ``(N,)``.

    Cells are the 4-connected components of the red (positive) and blue (negative) pixels of at least
    ``min_area_px`` pixels; green boundaries separate touching cells.
    """
    from scipy import ndimage as ndi

    rgb = np.asarray(gt_rgb)[..., :3].astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    xy: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    for flag, m in ((True, (r > 127) & (g < 100) & (b < 100)), (False, (b > 127) & (r < 100) & (g < 100))):
        lab, n = ndi.label(m)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(lab), lab, idx)
        keep = idx[areas >= min_area_px]
        if keep.size == 0:
            continue
        cy_cx = np.array(ndi.center_of_mass(m, lab, keep), dtype=float).reshape(-1, 2)
        xy.append(cy_cx[:, ::-1])
        pos.append(np.full(len(keep), flag))
    if not xy:
        return np.zeros((0, 2)), np.zeros(0, dtype=bool)
    return np.concatenate(xy), np.concatenate(pos)


def _ihc_predictor(tool: Any, mpp: float) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if isinstance(tool, PathologyTool):
        tool.load()

        def predict(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            args = tool.input_model(image="ihc")
            out = tool.analyze(ImageData(rgb, name="ihc", mpp=mpp), args).output
            cells = getattr(out, "cells", [])
            xy = np.array([[c.x, c.y] for c in cells], dtype=float).reshape(-1, 2)
            return xy, np.array([c.positive for c in cells], dtype=bool)

        return predict
    return tool


def evaluate_ihc(
    tool: Any, data_dir: Path | str, match_radius_px: float = 12.0, mpp: float = DEEPLIIF_MPP
) -> dict[str, Any]:
    """Score a Ki-67 cell classifier on a deepliif_ki67-layout folder.

    Per image: ``true_index`` / ``pred_index`` (percent positive), ``abs_error`` (points), true and predicted
    counts, and point-matching scores within ``match_radius_px``: ``detection_f1`` (all cells), ``positive_f1`` and
    ``negative_f1`` (cells matched within their own class). Also the means over images.
    """
    data_dir = Path(data_dir)
    predict = _ihc_predictor(tool, mpp)

    rows: list[dict[str, Any]] = []
    for ihc_path in sorted(data_dir.glob("*_ihc.png")):
        name = ihc_path.name[: -len("_ihc.png")]
        gt_path = data_dir / f"{name}_groundtruth.png"
        if not gt_path.is_file():
            continue
        true_xy, true_pos = ihc_ground_truth(_read(gt_path))
        pred_xy, pred_pos = predict(_read_rgb(ihc_path))
        per_class = match_points_by_class(true_xy, true_pos, pred_xy, pred_pos, match_radius_px)
        det = match_points(true_xy, pred_xy, match_radius_px)
        true_index = 100.0 * float(true_pos.mean()) if len(true_pos) else 0.0
        pred_index = 100.0 * float(pred_pos.mean()) if len(pred_pos) else 0.0
        rows.append(
            {
                "name": name,
                "true_index": true_index,
                "pred_index": pred_index,
                "abs_error": abs(true_index - pred_index),
                "true_positive_cells": int(true_pos.sum()),
                "true_negative_cells": int((~true_pos).sum()),
                "pred_positive_cells": int(pred_pos.sum()),
                "pred_negative_cells": int((~pred_pos).sum()),
                "detection_f1": det["f1"],
                "positive_f1": per_class.get(True, {"f1": 0.0})["f1"],
                "negative_f1": per_class.get(False, {"f1": 0.0})["f1"],
            }
        )
    if not rows:
        raise FileNotFoundError(f"no NAME_ihc.png / NAME_groundtruth.png pairs in {data_dir}")
    keys = ("abs_error", "detection_f1", "positive_f1", "negative_f1")
    means = {f"mean_{k}": float(np.mean([r[k] for r in rows])) for k in keys}
    return {"n_images": len(rows), **means, "per_image": rows}
