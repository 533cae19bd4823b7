"""Segmentation and detection metrics, with the conventions of the project (see ``shared/data/README.md``).

Instance metrics take two label maps of the same shape (0 = background, ids need not be contiguous):

* :func:`object_f1` - objects matched uniquely at IoU > 0.5 (an IoU above 0.5 can only pair one true with one
  predicted object, so the matching is unique without any assignment step).
* :func:`panoptic_quality` - ``DQ`` (the F1 above), ``SQ`` (mean IoU of the matched pairs), ``PQ = DQ x SQ``
  (Kirillov et al. 2019; as ``get_fast_pq`` in HoVer-Net).
* :func:`aji` - aggregated Jaccard index (Kumar et al. 2017), exactly as ``get_fast_aji`` in HoVer-Net: every true
  object is paired with the predicted object of highest IoU (a predicted object may be reused), and every unpaired
  true or predicted object adds its area to the union.
* :func:`dice` - pixel Dice of the foreground masks.

Point metrics (cell detection): :func:`match_points` (one-to-one Hungarian matching within ``max_dist``) and
:func:`match_points_by_class` (per-class F1, e.g. Ki-67 positive / negative).

Conventions for empty inputs: when both the truth and the prediction are empty, a score is 1.0 (perfect); when only
one of them is empty it is 0.0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "aji",
    "aji_counts",
    "binary_auc",
    "classification_scores",
    "dice",
    "mask_iou",
    "match_points",
    "match_points_by_class",
    "object_f1",
    "pairwise_overlap",
    "panoptic_quality",
    "remap_label",
]


def remap_label(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero ids of a label map to ``1..N`` in increasing order of the old id (0 stays 0)."""
    labels = np.asarray(labels)
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids.size and ids[0] == 0:
        return inverse.astype(np.int64)
    return (inverse + 1).astype(np.int64)


def pairwise_overlap(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersections of the objects of two label maps.

    Returns ``(inter, true_area, pred_area)``: ``inter[i, j]`` is the number of pixels shared by the i-th true and the
    j-th predicted object (objects in increasing order of id, background excluded); the areas are per object.
    """
    true = remap_label(true)
    pred = remap_label(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {true.shape} vs {pred.shape}")
    nt = int(true.max(initial=0))
    np_ = int(pred.max(initial=0))
    joint = np.bincount((true * (np_ + 1) + pred).ravel(), minlength=(nt + 1) * (np_ + 1))
    table = joint.reshape(nt + 1, np_ + 1)
    inter = table[1:, 1:].astype(np.float64)
    return inter, table[1:, :].sum(axis=1).astype(np.float64), table[:, 1:].sum(axis=0).astype(np.float64)


def _iou(inter: np.ndarray, ta: np.ndarray, pa: np.ndarray) -> np.ndarray:
    union = ta[:, None] + pa[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _matched_pairs(true: np.ndarray, pred: np.ndarray, iou: float) -> tuple[np.ndarray, int, int]:
    inter, ta, pa = pairwise_overlap(true, pred)
    ious = _iou(inter, ta, pa)
    if iou < 0.5:
        raise ValueError("unique matching needs an IoU threshold >= 0.5")
    matched = ious[ious > iou]
    return matched, len(ta), len(pa)


def object_f1(true: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> dict[str, float | int]:
    """Object-level detection scores with unique matching at IoU > ``iou`` (``iou`` >= 0.5).

    Returns ``precision``, ``recall``, ``f1`` (floats) and ``tp``, ``fp``, ``fn`` (ints).
    """
    matched, nt, np_ = _matched_pairs(true, pred, iou)
    tp = int(matched.size)
    fp, fn = np_ - tp, nt - tp
    if nt == 0 and np_ == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "fp": 0, "fn": 0}
    precision = tp / np_ if np_ else 0.0
    recall = tp / nt if nt else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def panoptic_quality(true: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> dict[str, float]:
    """Panoptic quality: ``dq`` = F1 at IoU > ``iou``, ``sq`` = mean IoU of the matched pairs, ``pq = dq * sq``.

    Also returns ``iou_sum`` and ``tp``/``fp``/``fn`` so that callers can aggregate over tiles. ``sq`` is 0 when
    nothing matches (1.0 when both maps are empty).
    """
    matched, nt, np_ = _matched_pairs(true, pred, iou)
    tp = int(matched.size)
    fp, fn = np_ - tp, nt - tp
    if nt == 0 and np_ == 0:
        return {"dq": 1.0, "sq": 1.0, "pq": 1.0, "iou_sum": 0.0, "tp": 0, "fp": 0, "fn": 0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched.sum()) / tp if tp else 0.0
    return {"dq": dq, "sq": sq, "pq": dq * sq, "iou_sum": float(matched.sum()), "tp": tp, "fp": fp, "fn": fn}


def aji_counts(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """The numerator (overall intersection) and denominator (overall union) of :func:`aji`, for aggregation."""
    inter, ta, pa = pairwise_overlap(true, pred)
    if inter.size == 0:
        return 0.0, float(ta.sum() + pa.sum())
    union = ta[:, None] + pa[None, :] - inter
    ious = _iou(inter, ta, pa)
    best = np.argmax(ious, axis=1)
    rows = np.nonzero(ious[np.arange(len(ta)), best] > 0.0)[0]
    cols = best[rows]
    overall_inter = float(inter[rows, cols].sum())
    overall_union = float(union[rows, cols].sum())
    unpaired_true = np.setdiff1d(np.arange(len(ta)), rows)
    unpaired_pred = np.setdiff1d(np.arange(len(pa)), cols)
    overall_union += float(ta[unpaired_true].sum()) + float(pa[unpaired_pred].sum())
    return overall_inter, overall_union


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017), as HoVer-Net's ``get_fast_aji``.

    Each true object is paired with the predicted object of highest IoU (reuse allowed; pairs with IoU 0 are
    dropped). AJI = sum of paired intersections / (sum of paired unions + areas of all unpaired true and unpaired
    predicted objects). 1.0 when both maps are empty.
    """
    inter, union = aji_counts(true, pred)
    if union == 0:
        return 1.0
    return inter / union


def dice(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Pixel Dice ``2|A & B| / (|A| + |B|)`` of two foreground masks (label maps are binarised: id > 0)."""
    a = np.asarray(true_mask) > 0
    b = np.asarray(pred_mask) > 0
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def mask_iou(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Pixel IoU ``|A & B| / |A | B|`` of two foreground masks (id > 0); 1.0 when both are empty."""
    a = np.asarray(true_mask) > 0
    b = np.asarray(pred_mask) > 0
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def classification_scores(true: list[str], pred: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over the classes present in ``true``), macro F1 (over the classes
    present in ``true`` or ``pred``), per-class recall / precision / F1 and the confusion matrix
    (``confusion[i][j]`` = items of class ``labels[i]`` predicted as ``labels[j]``)."""
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true labels but {len(pred)} predictions")
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({x for x in (*true, *pred) if x not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among {labels}")
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(true, pred):
        cm[index[t], index[p]] += 1
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    present = support > 0
    either = present | (predicted > 0)
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / cm.sum()) if cm.sum() else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[either].mean()) if either.any() else 0.0,
        "per_class": {lab: {"support": int(support[i]), "recall": float(recall[i]), "precision": float(precision[i]),
                            "f1": float(f1[i])} for i, lab in enumerate(labels)},
        "labels": list(labels),
        "confusion": cm.tolist(),
    }


def binary_auc(scores: Any, positive: Any) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` (Mann-Whitney U; ties count one half)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("ROC AUC needs both positive and negative items")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def match_points(true_xy: Any, pred_xy: Any, max_dist: float) -> dict[str, Any]:
    """One-to-one matching of point detections (Hungarian, minimal total distance) within ``max_dist`` pixels.

    Returns ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` and ``pairs`` (list of ``(i_true, j_pred)``).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    t = np.asarray(true_xy, dtype=float).reshape(-1, 2)
    p = np.asarray(pred_xy, dtype=float).reshape(-1, 2)
    pairs: list[tuple[int, int]] = []
    if len(t) and len(p):
        d = cdist(t, p)
        big = max_dist * 1e3 + 1.0
        cost = np.where(d <= max_dist, d, big)
        rows, cols = linear_sum_assignment(cost)
        pairs = [(int(i), int(j)) for i, j in zip(rows, cols) if d[i, j] <= max_dist]
    tp = len(pairs)
    fp, fn = len(p) - tp, len(t) - tp
    if len(t) == 0 and len(p) == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / len(p) if len(p) else 0.0
        recall = tp / len(t) if len(t) else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1, "pairs": pairs}


def match_points_by_class(
    true_xy: Any, true_cls: Any, pred_xy: Any, pred_cls: Any, max_dist: float
) -> dict[Any, dict[str, Any]]:
    """Per-class point F1: for every class present, the points of that class are matched with :func:`match_points`.

    A positive cell predicted as negative therefore counts as a false negative of ``positive`` and a false positive
    of ``negative``. Returns ``{class: match_points(...) result without "pairs"}``.
    """
    t = np.asarray(true_xy, dtype=float).reshape(-1, 2)
    p = np.asarray(pred_xy, dtype=float).reshape(-1, 2)
    tc = np.asarray(true_cls).reshape(-1)
    pc = np.asarray(pred_cls).reshape(-1)
    if len(tc) != len(t) or len(pc) != len(p):
        raise ValueError("points and classes differ in length")
    out: dict[Any, dict[str, Any]] = {}
    for c in sorted(set(tc.tolist()) | set(pc.tolist())):
        res = match_points(t[tc == c], p[pc == c], max_dist)
        res.pop("pairs")
        out[c] = res
    return out
