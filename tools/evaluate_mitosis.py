"""Accuracy of ``mitosis_detection`` on an AMi-Br folder (``shared/data/mitosis_amibr``).

Every crop (128 px at 40x, centred on one mitotic figure) is analysed exactly as ``pathasst tools predict
mitosis_detection DIR --mpp 0.25`` does (:func:`pathasst.tools.evaluate_tissue.run_on_file`). Scores:

* **recall**: the share of crops whose centred figure has a detection within 8 um of its centre;
* **false detections per crop**: detections farther than 8 um from every known figure of the crop (the centred one
  and the others of the same slide that ``AMI-BR.csv`` places inside it);
* **atypical balanced accuracy**: over the found centred figures, atypical (probability > 0.5) vs normal against the
  majority of three experts;

next to a trivial baseline in the same run (one detection per crop at the darkest haematoxylin blob; every figure
called normal), with 95 % intervals by resampling whole slides. ``held_out=True`` scores only the held-out slides of
the fixed split (:func:`pathasst.tools.datasets.amibr_split`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.readers import read_patch
from pathasst.core.settings import Settings
from pathasst.tools.datasets import AMIBR_MPP, amibr_items
from pathasst.tools.evaluate_tissue import case_bootstrap, run_on_file

__all__ = ["MATCH_UM", "darkest_blob", "evaluate_mitosis", "match_crop", "score_figures"]

#: a detection within this distance of a figure's centre finds it
MATCH_UM = 8.0


def match_crop(xy: np.ndarray, figures: np.ndarray, radius_px: float) -> tuple[int | None, int]:
    """For one crop: the index of the detection nearest the centred figure (``figures[0]``) within ``radius_px``
    (None: missed) and the number of false detections (farther than ``radius_px`` from every known figure)."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if len(xy) == 0:
        return None, 0
    d = np.linalg.norm(xy[:, None, :] - np.asarray(figures, float)[None, :, :], axis=2)
    centre = np.where(d[:, 0] <= radius_px)[0]
    hit = int(centre[np.argmin(d[centre, 0])]) if len(centre) else None
    return hit, int((d.min(1) > radius_px).sum())


def score_figures(detections: list[tuple[np.ndarray, np.ndarray]], figures: list[np.ndarray],
                  atypical: list[bool], radius_px: float) -> dict[str, Any]:
    """``detections[i]`` = (xy (N, 2), atypical probability (N,)) of crop i; ``figures[i]`` its known figures (row 0
    the centred one); ``atypical[i]`` the centred figure's label. Recall, false detections per crop, atypical
    balanced accuracy over the found figures, and per-crop rows (``found``, ``fp``, ``atypical_pred``)."""
    rows = []
    for (xy, aty), figs, truth in zip(detections, figures, atypical):
        hit, fp = match_crop(xy, figs, radius_px)
        rows.append({"found": hit is not None, "fp": fp, "atypical": bool(truth),
                     "atypical_pred": None if hit is None else bool(np.asarray(aty)[hit] > 0.5)})
    found = [r for r in rows if r["found"]]
    recalls = [float(np.mean([r["atypical_pred"] == v for r in found if r["atypical"] == v]))
               for v in (True, False) if any(r["atypical"] == v for r in found)]
    n = max(1, len(rows))
    return {"n_crops": len(rows), "recall": len(found) / n, "fp_per_crop": sum(r["fp"] for r in rows) / n,
            "atypical_balanced_accuracy": float(np.mean(recalls)) if len(recalls) == 2 else None, "rows": rows}


def darkest_blob(rgb: np.ndarray, mpp: float = AMIBR_MPP) -> np.ndarray:
    """The trivial detector: the single darkest point of the haematoxylin optical density smoothed over ~2 um."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    h = ndi.gaussian_filter(rgb2hed(np.asarray(rgb)[..., :3])[..., 0], 2.0 / mpp)
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    return np.array([[float(x), float(y)]])


def evaluate_mitosis(tool: Any, data_dir: Path | str, settings: Settings, held_out: bool = False, limit: int | None = None,
                     mpp: float | None = None) -> dict[str, Any]:
    """Score ``mitosis_detection`` on AMi-Br crops (see the module docstring)."""
    data_dir = Path(data_dir)
    mpp = mpp or AMIBR_MPP
    items = amibr_items(data_dir, ("held_out",) if held_out else None)[:limit]
    if not items:
        raise FileNotFoundError(f"no {'held-out ' if held_out else ''}AMi-Br crops in {data_dir}")
    dets, base, figures, truth, statuses = [], [], [], [], []
    for it in items:
        record, _ = run_on_file(tool, it.image, settings, mpp)
        out = record.output or {}
        figs = out.get("figures") or []
        dets.append((np.array([[f["x"], f["y"]] for f in figs]).reshape(-1, 2),
                     np.array([f.get("atypical_probability") or 0.0 for f in figs])))
        rgb = read_patch(it.image, settings.max_image_pixels).pixels
        base.append((darkest_blob(rgb, mpp), np.zeros(1)))
        h, w = rgb.shape[:2]
        figures.append(np.array([[w / 2.0, h / 2.0], *[[w / 2.0 + dx, h / 2.0 + dy] for dx, dy, _ in it.others]]))
        truth.append(it.atypical)
        statuses.append(record.status)
    radius = MATCH_UM / mpp
    sc = score_figures(dets, figures, truth, radius)
    bl = score_figures(base, figures, truth, radius)
    rows = sc.pop("rows")
    bl.pop("rows")
    slides = [it.slide for it in items]
    found = np.array([r["found"] for r in rows], float)
    fps = np.array([r["fp"] for r in rows], float)

    def atypical_bacc(idx: np.ndarray) -> float:
        hits = [rows[i] for i in idx if rows[i]["found"]]
        recalls = [np.mean([r["atypical_pred"] == v for r in hits if r["atypical"] == v])
                   for v in (True, False) if any(r["atypical"] == v for r in hits)]
        return float(np.mean(recalls)) if len(recalls) == 2 else float("nan")

    return {
        **sc,
        "n_slides": len(set(slides)),
        "split": "held_out" if held_out else "all",
        "match_radius_um": MATCH_UM,
        "ci95": {"resampled": "slides", "recall": case_bootstrap(slides, lambda i: float(found[i].mean())),
                 "fp_per_crop": case_bootstrap(slides, lambda i: float(fps[i].mean())),
                 "atypical_balanced_accuracy": case_bootstrap(slides, atypical_bacc)},
        "failed": sum(s != "ok" for s in statuses),
        "baseline_darkest_blob_all_normal": {"recall": bl["recall"], "fp_per_crop": bl["fp_per_crop"],
                                             "atypical_balanced_accuracy": 0.5},
        "per_image": [{"image": it.name, "slide": it.slide, **r} for it, r in zip(items, rows)],
    }
