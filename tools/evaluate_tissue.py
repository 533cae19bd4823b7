"""Accuracy of ``tissue_classification`` and ``tumor_segmentation`` on an EBHI-Seg folder (``shared/data/ebhi_seg``).

Each image is read and analysed exactly as ``pathasst tools predict TOOL DIR`` does for a user who passes no
``--mpp`` (:func:`pathasst.core.readers.read_patch`, then :func:`pathasst.tools.base.call_tool`), so ``predict`` on
the same files reproduces every figure here. ``held_out=True`` scores only the held-out cases of the fixed split
(:func:`pathasst.tools.datasets.ebhi_split`); otherwise every image in the folder (another cohort: all of it is
unseen).

* classification: accuracy, balanced accuracy, macro F1, per-class scores and the confusion matrix, next to the
  majority-class baseline (the most frequent class of the training cases) in the same run; 95 % intervals by
  resampling whole cases; the share of images the tool flagged as out of its domain;
* segmentation: mean Dice and IoU of the lesion map (label map > 0) against the pathologists' masks over the images
  that have one, per class too, next to a colour-threshold baseline (Otsu on the smoothed haematoxylin optical
  density) in the same run; 95 % intervals by case.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import ToolCallError
from pathasst.core.readers import read_patch
from pathasst.core.settings import Settings
from pathasst.tools.base import call_tool
from pathasst.tools.datasets import EbhiItem, ebhi_items
from pathasst.tools.metrics import classification_scores, dice, mask_iou

__all__ = ["baseline_lesion_mask", "case_bootstrap", "evaluate_tissue_classification", "evaluate_tumor_segmentation",
           "run_on_file"]


def run_on_file(tool: Any, path: Path, settings: Settings, mpp: float | None = None, arguments: dict | None = None) -> Any:
    """The tool's call record and result on one image file, read as ``tools predict`` reads it."""
    image = read_patch(path, settings.max_image_pixels, mpp=mpp or settings.default_mpp)

    def resolver(name: str, region: Any, working_mpp: float | None) -> Any:
        if name != image.name:
            raise ToolCallError(f"unknown image {name!r}")
        return image

    return call_tool(tool, {**(arguments or {}), "image": image.name}, resolver)


def case_bootstrap(cases: list[str], metric: Callable[[np.ndarray], float], resamples: int = 1000,
                   seed: int = 0) -> list[float]:
    """Percentile 95 % interval of ``metric(indices)`` when whole cases are resampled with replacement (images of
    one case are near-duplicates, so resampling images would make the interval too narrow)."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault(c, []).append(i)
    members = list(groups.values())
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        draw = rng.integers(0, len(members), len(members))
        values.append(metric(np.concatenate([members[j] for j in draw])))
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def _items(data_dir: Path, held_out: bool, limit: int | None) -> list[EbhiItem]:
    items = ebhi_items(data_dir, ("held_out",) if held_out else None)
    if not items:
        raise FileNotFoundError(f"no {'held-out ' if held_out else ''}EBHI-Seg images in {data_dir}")
    return items[:limit]


def _majority(data_dir: Path, labels: list[str]) -> str:
    train = [it.label for it in ebhi_items(data_dir, ("train",))] or labels
    values, counts = np.unique(train, return_counts=True)
    return str(values[int(np.argmax(counts))])


def evaluate_tissue_classification(tool: Any, data_dir: Path | str, settings: Settings, held_out: bool = False,
                                   limit: int | None = None, mpp: float | None = None) -> dict[str, Any]:
    """Score ``tissue_classification`` (see the module docstring); ``per_image`` rows carry the predictions."""
    data_dir = Path(data_dir)
    items = _items(data_dir, held_out, limit)
    classes = list(dict.fromkeys(["Normal", "Polyp", "Low-grade IN", "High-grade IN", "Adenocarcinoma",
                                  "Serrated adenoma", *(it.label for it in items)]))
    rows = []
    for it in items:
        record, _ = run_on_file(tool, it.image, settings, mpp)
        out = record.output or {}
        rows.append({"image": it.name, "case": it.case, "label": it.label, "pred": out.get("top_label"),
                     "probability": out.get("top_probability"), "in_domain": out.get("in_domain"),
                     "status": record.status})
    failed = [r for r in rows if r["status"] != "ok" or r["pred"] is None]
    true = [r["label"] for r in rows]
    pred = [r["pred"] if r["pred"] in classes else "(none)" for r in rows]
    labels = classes + (["(none)"] if failed else [])
    scores = classification_scores(true, pred, labels)
    t, p = np.array(true), np.array(pred)

    def bal(idx: np.ndarray) -> float:
        return classification_scores(list(t[idx]), list(p[idx]), labels)["balanced_accuracy"]

    def mf1(idx: np.ndarray) -> float:
        return classification_scores(list(t[idx]), list(p[idx]), labels)["macro_f1"]

    cases = [r["case"] for r in rows]
    majority = _majority(data_dir, true)
    base = classification_scores(true, [majority] * len(true), labels)
    flagged = [r for r in rows if r["in_domain"] is False]
    return {
        "n_images": len(rows),
        "n_cases": len(set(cases)),
        "split": "held_out" if held_out else "all",
        **{k: scores[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        "ci95": {"resampled": "cases", "balanced_accuracy": case_bootstrap(cases, bal), "macro_f1": case_bootstrap(cases, mf1)},
        "per_class": scores["per_class"],
        "labels": scores["labels"],
        "confusion": scores["confusion"],
        "failed": len(failed),
        "flagged_out_of_domain": len(flagged) / len(rows),
        "baseline_majority_class": {"label": majority, **{k: base[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}},
        "per_image": rows,
    }


def baseline_lesion_mask(rgb: np.ndarray) -> np.ndarray:
    """The trivial lesion mask: Otsu threshold of the haematoxylin optical density (``rgb2hed``) smoothed with a
    Gaussian of sigma 3 px (nucleus-dense epithelium is darker in haematoxylin than stroma and lumen)."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    h = ndi.gaussian_filter(rgb2hed(np.asarray(rgb)[..., :3])[..., 0], 3)
    return h > threshold_otsu(h) if np.ptp(h) > 0 else np.zeros(h.shape, bool)


def evaluate_tumor_segmentation(tool: Any, data_dir: Path | str, settings: Settings, held_out: bool = False,
                                limit: int | None = None, mpp: float | None = None) -> dict[str, Any]:
    """Score ``tumor_segmentation``'s lesion map (label map > 0) against the EBHI-Seg masks."""
    from PIL import Image

    data_dir = Path(data_dir)
    items = [it for it in _items(data_dir, held_out, None) if it.mask is not None][:limit]
    rows = []
    for it in items:
        record, result = run_on_file(tool, it.image, settings, mpp)
        with Image.open(it.mask) as im:
            truth = np.asarray(im.convert("L")) > 127
        if result is None or result.labels is None:
            pred = np.zeros_like(truth)
        else:
            pred = result.labels > 0
        rgb = read_patch(it.image, settings.max_image_pixels).pixels
        base = baseline_lesion_mask(rgb)
        rows.append({"image": it.name, "case": it.case, "label": it.label, "status": record.status,
                     "dice": dice(truth, pred), "iou": mask_iou(truth, pred),
                     "baseline_dice": dice(truth, base), "baseline_iou": mask_iou(truth, base),
                     "lesion_fraction": (record.output or {}).get("lesion_fraction")})
    if not rows:
        raise FileNotFoundError(f"no EBHI-Seg images with masks in {data_dir}")
    cases = [r["case"] for r in rows]
    d = np.array([r["dice"] for r in rows])
    per_class = {}
    for lab in dict.fromkeys(r["label"] for r in rows):
        sel = [r for r in rows if r["label"] == lab]
        per_class[lab] = {"n": len(sel), "dice": float(np.mean([r["dice"] for r in sel])),
                          "iou": float(np.mean([r["iou"] for r in sel]))}
    return {
        "n_images": len(rows),
        "n_cases": len(set(cases)),
        "split": "held_out" if held_out else "all",
        "dice": float(d.mean()),
        "iou": float(np.mean([r["iou"] for r in rows])),
        "ci95": {"resampled": "cases", "dice": case_bootstrap(cases, lambda idx: float(d[idx].mean()))},
        "per_class": per_class,
        "failed": sum(r["status"] != "ok" for r in rows),
        "baseline_otsu_haematoxylin": {"dice": float(np.mean([r["baseline_dice"] for r in rows])),
                                       "iou": float(np.mean([r["baseline_iou"] for r in rows]))},
        "per_image": rows,
    }
