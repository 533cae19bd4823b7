"""Leave-one-image-out evaluation of the embedded Ki-67 reading on DeepLIIF images, with a stain-strength sweep.

``pathasst tools eval ihc_quantification ../shared/data/deepliif_ki67`` runs this for the embedded backend:

* every image is read once by the tool; its nuclei keep their normalised DAB fraction;
* for each image, the positivity threshold is the one of ``THRESHOLD_GRID`` with the smallest mean index error on
  the **other** images (ties: the one nearest the shipped default); that image is scored with it: true and measured
  index, cell detection F1 and positive / negative F1 (matching within 12 px, the Hungarian matching of
  :func:`pathasst.tools.metrics.match_points`);
* the sweep: each image with its haematoxylin optical density scaled by 0.3, 0.5, 1.5 and its DAB by 0.5, 1.5
  (colour deconvolution and back), read again with that image's leave-one-out threshold; index error per setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.imaging import ImageData
from pathasst.tools.evaluate import ihc_ground_truth
from pathasst.tools.metrics import match_points, match_points_by_class

__all__ = ["STAIN_SWEEP", "THRESHOLD_GRID", "evaluate_ihc_leave_one_out", "scale_stains"]

THRESHOLD_GRID = tuple(round(0.30 + 0.05 * i, 2) for i in range(9))  # 0.30 .. 0.70
#: (name, haematoxylin factor, DAB factor)
STAIN_SWEEP = (("haematoxylin x0.3", 0.3, 1.0), ("haematoxylin x0.5", 0.5, 1.0), ("haematoxylin x1.5", 1.5, 1.0),
               ("DAB x0.5", 1.0, 0.5), ("DAB x1.5", 1.0, 1.5))


def scale_stains(rgb: np.ndarray, h: float = 1.0, d: float = 1.0) -> np.ndarray:
    """``rgb`` with its haematoxylin and DAB optical densities scaled (``rgb2hed``, scale, ``hed2rgb``)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(np.asarray(rgb)[..., :3], 1, 255).astype(np.uint8))
    hed[..., 0] *= h
    hed[..., 2] *= d
    return (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)


def _read(tool: Any, rgb: np.ndarray, mpp: float, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (N, 2) and normalised DAB fractions (N,) of one image read by ``tool``."""
    args = tool.input_model(image="ihc", **({"dab_fraction_threshold": threshold} if threshold else {}))
    out = tool.analyze(ImageData(rgb, name="ihc", mpp=mpp), args).output
    xy = np.array([[c.x, c.y] for c in out.cells], dtype=float).reshape(-1, 2)
    return xy, np.array([c.dab_fraction for c in out.cells], dtype=float)


def _index(positive: np.ndarray) -> float:
    return 100.0 * float(np.mean(positive)) if len(positive) else 0.0


def evaluate_ihc_leave_one_out(tool: Any, data_dir: Path | str, mpp: float, match_radius_px: float = 12.0,
                               sweep: bool = True) -> dict[str, Any]:
    """Score the embedded ``ihc_quantification`` on a deepliif_ki67-layout folder (see the module docstring)."""
    from PIL import Image

    data_dir = Path(data_dir)
    names = sorted(p.name[: -len("_ihc.png")] for p in data_dir.glob("*_ihc.png")
                   if (data_dir / p.name.replace("_ihc.png", "_groundtruth.png")).is_file())
    if len(names) < 2:
        raise FileNotFoundError(f"leave-one-image-out needs at least two NAME_ihc.png / NAME_groundtruth.png pairs in {data_dir}")
    tool.load()
    default = float(tool.input_model(image="x").dab_fraction_threshold)
    images, truth, reads = {}, {}, {}
    for n in names:
        images[n] = np.asarray(Image.open(data_dir / f"{n}_ihc.png").convert("RGB"))
        truth[n] = ihc_ground_truth(np.asarray(Image.open(data_dir / f"{n}_groundtruth.png").convert("RGB")))
        reads[n] = _read(tool, images[n], mpp)

    def error(n: str, t: float) -> float:
        return abs(_index(reads[n][1] > t) - _index(truth[n][1]))

    rows, sweep_rows = [], []
    for n in names:
        others = [m for m in names if m != n]
        t = min(THRESHOLD_GRID, key=lambda g: (np.mean([error(m, g) for m in others]), abs(g - default)))
        (txy, tpos), (xy, frac) = truth[n], reads[n]
        pos = frac > t
        det = match_points(txy, xy, match_radius_px)
        per_class = match_points_by_class(txy, tpos, xy, pos, match_radius_px)
        rows.append({"name": n, "loo_threshold": t, "true_index": _index(tpos), "pred_index": _index(pos),
                     "abs_error": error(n, t), "true_cells": len(txy), "pred_cells": len(xy),
                     "detection_f1": det["f1"], "positive_f1": per_class.get(True, {"f1": 0.0})["f1"],
                     "negative_f1": per_class.get(False, {"f1": 0.0})["f1"]})
        if sweep:
            for label, h, d in STAIN_SWEEP:
                _, f = _read(tool, scale_stains(images[n], h, d), mpp, t)
                sweep_rows.append({"name": n, "setting": label, "pred_index": _index(f > t),
                                   "abs_error": abs(_index(f > t) - _index(tpos))})
    keys = ("abs_error", "detection_f1", "positive_f1", "negative_f1")
    out: dict[str, Any] = {
        "n_images": len(rows), "protocol": "leave-one-image-out (threshold chosen on the other images)",
        "threshold_grid": list(THRESHOLD_GRID), "shipped_threshold": default, "match_radius_px": match_radius_px,
        **{f"mean_{k}": float(np.mean([r[k] for r in rows])) for k in keys},
        "max_abs_error": float(max(r["abs_error"] for r in rows)),
        "per_image": rows,
    }
    if sweep:
        out["sweep"] = sweep_rows
        out["sweep_max_abs_error"] = float(max(r["abs_error"] for r in sweep_rows))
    return out
