"""Accuracy of ``slide_classification`` on a bisque_breast-layout folder (``labels.csv``: image, label, group;
``images/NAME.jpg``), benign vs malignant.

Every image is analysed exactly as ``pathasst tools predict slide_classification DIR`` does with no ``--mpp``
(:func:`pathasst.tools.evaluate_tissue.run_on_file`). Without ``held_out`` the tool as configured (the shipped head)
scores every image: on the 40 training images these figures are in-sample; on another cohort, all of it is unseen.
With ``held_out`` each image is scored by the fold head of the shipped (nested) leave-one-TMA-group-out
cross-validation that never saw its group (``tools/weights/slide_abmil_cv.pt``: a single head or a seed ensemble per
fold, configured in turn as ``PATHASST_SLIDE_MIL_WEIGHTS``), so the figures are the cross-validated ones. Scores:
accuracy, ROC AUC of P(malignant), next to the majority-class baseline (AUC 0.5) in the same run, and a 95 % interval of the AUC by resampling whole groups.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.settings import Settings
from pathasst.core.weights import load_torch_file
from pathasst.tools.datasets import read_csv_rows
from pathasst.tools.evaluate_tissue import case_bootstrap, run_on_file
from pathasst.tools.metrics import binary_auc
from pathasst.tools.slide_classification import SlideClassificationTool

__all__ = ["CV_HEADS", "evaluate_slide_classification"]

#: the fold heads of the shipped head's cross-validation
CV_HEADS = Path(__file__).resolve().parent / "weights" / "slide_abmil_cv.pt"
POSITIVE = "malignant"


def _rows(data_dir: Path) -> list[dict[str, str]]:
    rows = read_csv_rows(data_dir / "labels.csv")
    if not rows or {"image", "label"} - set(rows[0]):
        raise FileNotFoundError(f"{data_dir / 'labels.csv'} needs the columns image, label (and group)")
    return rows


def _image(data_dir: Path, name: str) -> Path:
    for p in sorted((data_dir / "images").glob(f"{name}.*")):
        return p
    raise FileNotFoundError(f"no image file for {name} in {data_dir / 'images'}")


def _fold_tools(settings: Settings, groups: set[str], tmp: Path) -> dict[str, Any]:
    """group -> a ``slide_classification`` tool configured with the fold head that never saw that group."""
    import torch

    if not CV_HEADS.is_file():
        raise FileNotFoundError(f"--held-out needs the cross-validation heads {CV_HEADS.name} (not shipped here)")
    folds = load_torch_file(CV_HEADS, str(CV_HEADS))["folds"]
    known = {f["group"] for f in folds}
    unknown = sorted(groups - known)
    if unknown:
        raise FileNotFoundError(f"--held-out scores the training images by cross-validation; groups {unknown} are "
                                "not among them (score another cohort without --held-out)")
    tools = {}
    for f in folds:
        if f["group"] in groups:
            path = tmp / f"fold_{len(tools)}.pt"
            torch.save({"state_dict": f["state_dict"], "config": f["config"]}, path)
            tools[f["group"]] = SlideClassificationTool(settings.model_copy(update={"slide_mil_weights": path}))
    return tools


def evaluate_slide_classification(tool: Any, data_dir: Path | str, settings: Settings, held_out: bool = False,
                                  limit: int | None = None, mpp: float | None = None) -> dict[str, Any]:
    """Score benign / malignant calls (see the module docstring)."""
    data_dir = Path(data_dir)
    rows = _rows(data_dir)[:limit]
    out_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folds = _fold_tools(settings, {r.get("group", "") for r in rows}, Path(tmp)) if held_out else {}
        for r in rows:
            used = folds.get(r.get("group", ""), tool)
            record, _ = run_on_file(used, _image(data_dir, r["image"]), settings, mpp)
            o = record.output or {}
            probs = o.get("class_probabilities") or {}
            out_rows.append({"image": r["image"], "group": r.get("group", ""), "label": r["label"],
                             "pred": o.get("label"), "p_malignant": probs.get(POSITIVE), "status": record.status})
    scored = [r for r in out_rows if r["p_malignant"] is not None]
    y = np.array([r["label"] == POSITIVE for r in scored])
    p = np.array([r["p_malignant"] for r in scored], float)
    both = 0 < y.sum() < len(y)
    groups = [r["group"] for r in scored]

    def auc(idx: np.ndarray) -> float:
        yy = y[idx]
        return binary_auc(p[idx], yy) if 0 < yy.sum() < len(yy) else float("nan")

    interval = case_bootstrap(groups, auc) if both and len(set(groups)) > 1 else None
    majority = POSITIVE if y.mean() >= 0.5 else "benign"
    return {
        "n_images": len(out_rows),
        "n_groups": len(set(r["group"] for r in out_rows)),
        "split": "cross_validated_by_group" if held_out else "all",
        "accuracy": float(np.mean([r["pred"] == r["label"] for r in out_rows])),
        "auc": binary_auc(p, y) if both else None,
        "ci95": {"resampled": "groups", "auc": interval},
        "failed": sum(r["status"] != "ok" for r in out_rows),
        "baseline_majority": {"label": majority, "accuracy": float(np.mean([r["label"] == majority for r in out_rows])),
                              "auc": 0.5},
        "per_image": out_rows,
    }
