"""Segmentation and point metrics against hand-computed values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pathasst.tools.metrics import (
    aji,
    aji_counts,
    dice,
    match_points,
    match_points_by_class,
    object_f1,
    panoptic_quality,
    remap_label,
)


def _maps(pred_b_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """true: A (id 5, 4 px) and B (id 9, 8 px); pred: exact copy of A (id 2), part of B (id 7), a stray (id 3)."""
    true = np.zeros((4, 8), np.uint16)
    true[0:2, 0:2] = 5
    true[0:2, 4:8] = 9
    pred = np.zeros((4, 8), np.int32)
    pred[0:2, 0:2] = 2
    pred[0:2, 4 : 4 + pred_b_cols] = 7
    pred[3, 0:4] = 3
    return true, pred


def test_remap_label_non_contiguous() -> None:
    lab = np.array([[0, 9, 9], [5, 0, 1000]])
    assert remap_label(lab).tolist() == [[0, 2, 2], [1, 0, 3]]
    assert remap_label(np.array([[4, 4]])).tolist() == [[1, 1]]


def test_iou_exactly_half_is_not_a_match() -> None:
    true, pred = _maps(2)  # B vs 7: intersection 4, union 8 -> IoU 0.5, not > 0.5
    f = object_f1(true, pred)
    assert (f["tp"], f["fp"], f["fn"]) == (1, 2, 1)
    assert f["precision"] == pytest.approx(1 / 3)
    assert f["recall"] == pytest.approx(0.5)
    assert f["f1"] == pytest.approx(0.4)
    pq = panoptic_quality(true, pred)
    assert pq["dq"] == pytest.approx(0.4)
    assert pq["sq"] == pytest.approx(1.0)
    assert pq["pq"] == pytest.approx(0.4)
    # AJI: A-2 (4/4), B-7 (4/8), unpaired pred 3 adds 4 to the union -> 8 / 16
    assert aji(true, pred) == pytest.approx(0.5)
    assert aji_counts(true, pred) == (8.0, 16.0)
    # Dice: 12 true px, 12 predicted px, 8 shared
    assert dice(true, pred) == pytest.approx(16 / 24)


def test_matched_pair_above_half() -> None:
    true, pred = _maps(3)  # B vs 7: intersection 6, union 8 -> IoU 0.75
    f = object_f1(true, pred)
    assert (f["tp"], f["fp"], f["fn"]) == (2, 1, 0)
    assert f["f1"] == pytest.approx(0.8)
    pq = panoptic_quality(true, pred)
    assert pq["dq"] == pytest.approx(0.8)
    assert pq["sq"] == pytest.approx((1.0 + 0.75) / 2)
    assert pq["pq"] == pytest.approx(0.7)
    assert aji(true, pred) == pytest.approx(10 / 16)


def test_aji_reuses_a_prediction_like_hovernet() -> None:
    true = np.zeros((2, 4), int)
    true[:, 0:2] = 3
    true[:, 2:4] = 8
    pred = np.full((2, 4), 11)  # one object covering both: each true pairs with it (IoU 0.5)
    assert aji(true, pred) == pytest.approx((4 + 4) / (8 + 8))
    assert object_f1(true, pred)["tp"] == 0


def test_perfect_match_with_other_ids() -> None:
    true, _ = _maps(2)
    pred = np.where(true == 5, 40, np.where(true == 9, 2, 0))
    assert object_f1(true, pred)["f1"] == 1.0
    assert panoptic_quality(true, pred)["pq"] == pytest.approx(1.0)
    assert aji(true, pred) == pytest.approx(1.0)
    assert dice(true, pred) == 1.0


def test_empty_prediction_and_empty_both() -> None:
    true, _ = _maps(2)
    empty = np.zeros_like(true)
    f = object_f1(true, empty)
    assert (f["tp"], f["fp"], f["fn"], f["f1"], f["precision"]) == (0, 0, 2, 0.0, 0.0)
    assert panoptic_quality(true, empty)["pq"] == 0.0
    assert aji(true, empty) == 0.0
    assert dice(true, empty) == 0.0
    assert object_f1(empty, empty)["f1"] == 1.0
    assert aji(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        object_f1(np.zeros((2, 2)), np.zeros((3, 3)))


def test_match_points_simple() -> None:
    r = match_points([(0, 0), (10, 0)], [(1, 0), (10, 5), (50, 50)], max_dist=6)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 0)
    assert r["f1"] == pytest.approx(0.8)
    assert sorted(r["pairs"]) == [(0, 0), (1, 1)]


def test_match_points_is_optimal_not_greedy() -> None:
    # greedy nearest-first would pair t0-p0 and leave t1 unmatched; the optimal matching pairs both
    r = match_points([(0, 0), (4, 0)], [(2, 0), (-2.5, 0)], max_dist=3)
    assert r["tp"] == 2 and r["f1"] == 1.0


def test_match_points_empty() -> None:
    assert match_points([], [], 5)["f1"] == 1.0
    r = match_points([(1, 1)], [], 5)
    assert (r["tp"], r["fn"], r["f1"]) == (0, 1, 0.0)


def test_match_points_by_class() -> None:
    true_xy = [(0, 0), (20, 0), (40, 0)]
    true_cls = [True, False, False]
    pred_xy = [(1, 0), (21, 0), (41, 0)]
    pred_cls = [True, True, False]  # the middle cell is called positive: fp for positive, fn for negative
    r = match_points_by_class(true_xy, true_cls, pred_xy, pred_cls, max_dist=3)
    assert (r[True]["tp"], r[True]["fp"], r[True]["fn"]) == (1, 1, 0)
    assert r[True]["f1"] == pytest.approx(2 / 3)
    assert (r[False]["tp"], r[False]["fp"], r[False]["fn"]) == (1, 0, 1)
    assert r[False]["f1"] == pytest.approx(2 / 3)


def test_nuclei_evaluation_pools_tiles_per_source_image(tmp_path: Path) -> None:
    """``by_image``: counts pooled over the tiles of each source image (``IMAGE_INDEX`` names), then the mean over
    images; differs from the mean over tiles when images have different numbers of nuclei per tile."""
    from PIL import Image

    from pathasst.tools.evaluate import evaluate_nuclei

    (tmp_path / "images").mkdir()
    (tmp_path / "instances").mkdir()
    truth = {}
    for name, n in (("a_1_000", 1), ("a_1_001", 3), ("a_2_000", 2)):  # n square nuclei of 6x6 px
        lab = np.zeros((32, 32), np.uint16)
        for i in range(n):
            lab[2 + 8 * i : 8 + 8 * i, 2:8] = 10 * (i + 1)
        truth[name] = lab
        Image.fromarray(lab).save(tmp_path / "instances" / f"{name}.png")
        Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    found = {"a_1_000": 0, "a_1_001": 3, "a_2_000": 1}  # predict the first k nuclei of each tile exactly
    res = evaluate_nuclei(first_nuclei(truth, found), tmp_path)
    assert res["f1"] == pytest.approx((0.0 + 1.0 + 2 / 3) / 3)  # per tile: 0, 1, 2*1/(2+1)
    by = res["by_image"]
    assert by["n_images"] == 2 and [i["image"] for i in by["images"]] == ["a_1", "a_2"]
    assert by["images"][0]["f1"] == pytest.approx(2 * 3 / (4 + 3)) and by["images"][1]["f1"] == pytest.approx(2 / 3)
    assert by["f1"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert by["images"][0]["aji"] == pytest.approx(3 / 4) and by["aji"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    # bootstrap over source images: a draw is {a_1, a_1} (tile mean 0.5, p = 1/4), {a_1, a_2} (5/9) or {a_2, a_2}
    # (2/3, p = 1/4), so the 2.5 / 97.5 percentiles are the extremes; resampling the 3 tiles instead reaches 0 and 1
    ci = res["ci95"]
    assert ci["resampled"] == "source images" and ci["units"] == 2
    assert ci["f1"] == pytest.approx([0.5, 2 / 3])
    assert ci["aji"][0] <= res["aji"] <= ci["aji"][1]
    assert evaluate_nuclei(first_nuclei(truth, found), tmp_path)["ci95"] == ci  # seeded: the same interval again
    single = evaluate_nuclei(lambda rgb: np.zeros((32, 32), np.int32), tmp_path, names=["a_1_000", "a_2_000"])
    assert "by_image" not in single  # one tile per image: nothing to pool
    assert single["ci95"]["resampled"] == "tiles" and single["ci95"]["f1"] == [0.0, 0.0]


def first_nuclei(truth: dict[str, np.ndarray], found: dict[str, int]) -> Callable[[np.ndarray], np.ndarray]:
    """A predictor for the tiles of ``truth`` in name order: exactly the first ``found[name]`` nuclei of each."""
    seen = iter(sorted(truth))

    def predict(rgb: np.ndarray) -> np.ndarray:
        name = next(seen)
        lab = truth[name].astype(np.int32)
        return np.where(np.isin(lab, [10 * (i + 1) for i in range(found[name])]), lab, 0)

    return predict


def test_bootstrap_interval_over_tiles_narrows_with_more_tiles() -> None:
    from pathasst.tools.evaluate import bootstrap_ci

    rng = np.random.default_rng(1)
    few = [{"name": f"t{i}", "f1": v} for i, v in enumerate(rng.uniform(0.4, 1.0, 12))]
    many = [{"name": f"t{i}", "f1": v} for i, v in enumerate(rng.uniform(0.4, 1.0, 480))]
    a, b = bootstrap_ci(few, ["f1"])["f1"], bootstrap_ci(many, ["f1"])["f1"]
    assert a[0] < np.mean([r["f1"] for r in few]) < a[1]
    assert b[0] < np.mean([r["f1"] for r in many]) < b[1]
    assert (b[1] - b[0]) < 0.4 * (a[1] - a[0])  # width ~ 1/sqrt(n): 480 tiles vs 12 -> about 0.16x


def test_nuclei_evaluation_reads_grey_rgba_and_tiff_images_as_rgb(tmp_path: Path) -> None:
    from PIL import Image

    from pathasst.tools.evaluate import evaluate_nuclei

    (tmp_path / "images").mkdir()
    (tmp_path / "instances").mkdir()
    lab = np.zeros((32, 48), np.uint16)
    lab[4:12, 4:12] = 7
    for name, img, ext in (("grey", Image.new("L", (48, 32), 120), ".png"),
                           ("rgba", Image.new("RGBA", (48, 32), (200, 100, 150, 255)), ".png"),
                           ("tiled", Image.new("RGB", (48, 32), (10, 20, 30)), ".tiff")):
        img.save(tmp_path / "images" / f"{name}{ext}")
        Image.fromarray(lab).save(tmp_path / "instances" / f"{name}.png")
    shapes = []

    def predict(rgb: np.ndarray) -> np.ndarray:
        shapes.append((rgb.shape, rgb.dtype))
        return lab.astype(np.int32)

    res = evaluate_nuclei(predict, tmp_path)
    assert res["n_tiles"] == 3 and res["f1"] == 1.0
    assert shapes == [((32, 48, 3), np.dtype(np.uint8))] * 3


# ---- classification, ROC AUC, mask IoU ------------------------------------------------------------------------------
def test_classification_scores_against_hand_computed_values() -> None:
    from pathasst.tools.metrics import classification_scores

    # a: 3 items (2 right), b: 2 items (1 right), c: 1 item (wrong, called a); d never occurs
    true = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "a", "a"]
    s = classification_scores(true, pred, ["a", "b", "c", "d"])
    assert s["n"] == 6 and s["accuracy"] == pytest.approx(3 / 6)
    assert s["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # recalls a 2/3, b 1/2, c 0 -> balanced accuracy over the 3 classes present
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # precision a 2/4, b 1/2; F1 a = 2*(.5*.667)/(1.167) = 0.5714, b = 0.5, c = 0; d absent everywhere -> not averaged
    assert s["per_class"]["a"]["f1"] == pytest.approx(4 / 7)
    assert s["macro_f1"] == pytest.approx((4 / 7 + 0.5 + 0.0) / 3)
    with pytest.raises(ValueError, match="not among"):
        classification_scores(["a"], ["z"], ["a", "b"])
    with pytest.raises(ValueError, match="1 true labels but 2"):
        classification_scores(["a"], ["a", "a"], ["a"])


def test_binary_auc_is_the_mann_whitney_statistic() -> None:
    from pathasst.tools.metrics import binary_auc

    assert binary_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert binary_auc([1, 2, 3], [False, True, True]) == 1.0
    assert binary_auc([0.5, 0.5], [False, True]) == 0.5  # a tie counts one half
    with pytest.raises(ValueError, match="both positive and negative"):
        binary_auc([0.2, 0.3], [True, True])


def test_mask_iou() -> None:
    from pathasst.tools.metrics import mask_iou

    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 px
    b[:2, 1:3] = True  # 4 px, 2 shared
    assert mask_iou(a, b) == pytest.approx(2 / 6) and dice(a, b) == pytest.approx(0.5)
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(a, b[:2])
