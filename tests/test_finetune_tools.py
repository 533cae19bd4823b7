"""The trainers of the tissue network, the mitosis network and the slide head run end to end on tiny real data and
write checkpoints the tools load; their targets and scoring are checked on hand-made cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.data


def test_tissue_trainer_writes_a_checkpoint_the_tools_load(shared_data: Path, tmp_path: Path) -> None:
    from pathasst.finetune.tissue_net import main
    from pathasst.tools.backends.tissue_net import EBHI_CLASSES, TissueNet

    summary = main(["--data", str(shared_data / "ebhi_seg"), "--out", str(tmp_path), "--minutes", "5",
                    "--max-steps", "6", "--limit", "24", "--batch", "4", "--crop", "96", "--val-every", "100",
                    "--threads", "1"])
    assert summary["steps"] == 6 and summary["history"][-1]["step"] == 6
    net = TissueNet.load(tmp_path / "tissue_net.pt", "test")
    assert net.config.classes == list(EBHI_CLASSES) and net.config.mpp == 1.25
    assert net.config.ood_threshold is not None and net.config.ood_threshold > 0
    assert net.config.extra["training"]["data"].startswith("EBHI-Seg training cases")
    rgb = np.random.default_rng(0).integers(0, 255, (224, 300, 3), dtype=np.uint8)
    pred = net.classify([rgb[:, :224], rgb[:, 76:]])
    assert pred.probabilities.shape == (2, 6) and np.allclose(pred.probabilities.sum(1), 1)
    assert np.all(np.isfinite(pred.ood_distance)) and pred.embeddings.shape == (2, 256)
    assert net.lesion_probability(rgb).shape == (224, 300)
    assert json.loads((tmp_path / "train_log.json").read_text())["checkpoint"].endswith("tissue_net.pt")


def test_tissue_augmentation_keeps_image_and_mask_aligned() -> None:
    from pathasst.finetune.tissue_net import EbhiSample, augment

    rgb = np.full((224, 224, 3), 230, np.uint8)
    mask = np.zeros((224, 224), bool)
    mask[60:120, 100:180] = True
    rgb[mask] = (90, 40, 140)  # the lesion is the dark purple block
    rng = np.random.default_rng(3)
    for _ in range(8):
        x, target = augment(EbhiSample("s", "c", rgb, mask, 0), 96, rng)
        assert x.shape == (3, 96, 96) and target.shape == (96, 96) and set(np.unique(target)) <= {0, 1}
        dark = x.mean(0) < 0.6
        assert (dark == (target == 1)).mean() > 0.95
    _, none = augment(EbhiSample("s", "c", rgb, None, 0), 96, rng)
    assert (none == -100).all()  # no mask: no segmentation loss


def test_mitosis_trainer_writes_a_checkpoint_with_its_threshold(shared_data: Path, tmp_path: Path) -> None:
    from pathasst.finetune.mitosis_net import main
    from pathasst.tools.backends.mitosis_net import MitosisNet

    summary = main(["--data", str(shared_data / "mitosis_amibr"), "--out", str(tmp_path), "--minutes", "5",
                    "--max-steps", "5", "--limit", "16", "--batch", "4", "--val-every", "100", "--threads", "1",
                    "--negatives", str(shared_data / "consep_train")])
    assert summary["steps"] == 5
    assert "negative_per_mm2" in summary["history"][-1]  # the mitosis-free validation fields were scored
    net = MitosisNet.load(tmp_path / "mitosis_net.pt", "test")
    assert net.config.mpp == 0.25 and 0 < net.config.threshold < 1 and net.config.min_distance == 8.0
    maps = net.maps(np.random.default_rng(0).integers(0, 255, (200, 260, 3), dtype=np.uint8))
    assert maps.shape == (2, 200, 260) and maps.min() >= 0 and maps.max() <= 1


def test_mitosis_negatives_come_from_training_sources_only_and_crop_anywhere(shared_data: Path) -> None:
    from pathasst.finetune.mitosis_net import NEGATIVE_VALIDATION_SOURCES, augment, load_negatives
    from pathasst.finetune.nuclei_pixel import HELD_OUT_SOURCES

    negs = load_negatives(shared_data / "consep_train", {1, 3}, limit=5)
    assert len(negs) == 5 and all(n.slide in ("consep_1", "consep_3") and len(n.figures) == 0 for n in negs)
    assert not NEGATIVE_VALIDATION_SOURCES & HELD_OUT_SOURCES
    rng = np.random.default_rng(0)
    for _ in range(4):
        x, heat, aty, w = augment(negs[0], 96, rng, 8.0, low_res=1.0)
        assert x.shape == (3, 96, 96) and heat.max() == 0.0 and w.sum() == 0.0  # nothing to find, nothing to type


def test_mitosis_targets_peak_at_each_figure() -> None:
    from pathasst.finetune.mitosis_net import _targets

    heat, aty, w = _targets(np.array([[50.0, 30.0], [10.0, 90.0]]), np.array([True, False]), 96, 8.0)
    assert heat.shape == (24, 24) and heat.max() == 1.0
    peaks = {tuple(int(v) for v in p) for p in np.argwhere(heat == 1.0)}
    assert peaks == {(7, 12), (22, 2)}  # (row, col) = ((y - 2) / 4, (x - 2) / 4) rounded
    assert aty[7, 12] == 1.0 and aty[22, 2] == 0.0 and w[7, 12] == w[22, 2] == 1.0 and w[0, 23] == 0.0


def test_mitosis_scoring_counts_hits_misses_and_false_detections() -> None:
    from pathasst.tools.evaluate_mitosis import match_crop, score_figures

    figs = np.array([[64.0, 64.0], [10.0, 10.0]])  # the centred figure and another known one
    assert match_crop(np.zeros((0, 2)), figs, 32) == (None, 0)
    assert match_crop(np.array([[70.0, 60.0], [12.0, 8.0], [120.0, 120.0]]), figs, 32) == (0, 1)
    assert match_crop(np.array([[100.0, 64.0]]), figs, 32) == (None, 1)  # 36 px away: a miss and a false one
    dets = [(np.array([[64.0, 64.0]]), np.array([0.9])), (np.array([[64.0, 66.0]]), np.array([0.2])),
            (np.zeros((0, 2)), np.zeros(0)), (np.array([[64.0, 64.0], [5.0, 120.0]]), np.array([0.1, 0.9]))]
    s = score_figures(dets, [figs] * 4, [True, True, False, False], 32)
    assert s["recall"] == 0.75 and s["fp_per_crop"] == 0.25
    # found: atypical called atypical (1/2 of the atypical ones right), normal called normal (1/1)
    assert s["atypical_balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_slide_head_trainer_cross_validates_by_group(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six images of three TMA groups, one view each, a tiny grid: nested CV chooses a setting per fold, scores every
    image out of fold, and writes two-seed ensembles (fold heads and the shipped head)."""
    import csv

    import torch

    from pathasst.finetune import slide_mil
    from pathasst.tools.backends.abmil import ensemble_members

    src = shared_data / "bisque_breast"
    rows = list(csv.DictReader(open(src / "labels.csv")))
    groups = sorted({r["group"] for r in rows})[:3]
    keep = [r for g in groups for r in [next(x for x in rows if x["group"] == g and x["label"] == lab)
                                         for lab in ("benign", "malignant")]]
    data = tmp_path / "bisque"
    (data / "images").mkdir(parents=True)
    from PIL import Image

    for r in keep:  # smaller copies keep the test fast
        with Image.open(next(src.glob(f"images/{r['image']}.*"))) as im:
            im.convert("RGB").resize((448, 384)).save(data / "images" / f"{r['image']}.jpg")
    (data / "labels.csv").write_text("image,label,group\n" + "".join(f"{r['image']},{r['label']},{r['group']}\n" for r in keep))
    grid = ((2, 1e-1), (4, 1e-2))
    summary = slide_mil.train(data, tmp_path / "out", views=1, log=None, seeds=2, grid=grid)
    cv = summary["cross_validation"]
    assert cv["folds"] == 3 and cv["nested"] and cv["seeds"] == 2 and cv["grid"] == [[2, 0.1], [4, 0.01]]
    assert 0.0 <= cv["auc"] <= 1.0 and cv["baseline_majority"] == {"auc": 0.5, "accuracy": 0.5}
    assert [c["group"] for c in cv["chosen"]] == groups
    for c in cv["chosen"]:  # each fold's setting is one of the grid's, with an inner AUC for every setting
        assert (c["epochs"], c["weight_decay"]) in grid and len(c["inner_auc"]) == 2
        assert c["inner_auc"][f"{c['epochs']} epochs, wd {c['weight_decay']:g}"] == max(c["inner_auc"].values())
    assert sorted(summary["oof"]) == sorted(r["image"] for r in keep)  # every image scored out of fold
    assert all(0.0 <= p <= 1.0 for p in summary["oof"].values())
    assert (summary["shipped_head"]["epochs"], summary["shipped_head"]["weight_decay"]) in grid
    folds = torch.load(tmp_path / "out" / "slide_abmil_cv.pt", weights_only=True)["folds"]
    assert [f["group"] for f in folds] == groups and folds[0]["config"]["embedder"] == "hed_texture"
    assert [f["config"]["epochs"] for f in folds] == [c["epochs"] for c in cv["chosen"]]
    assert all(len(ensemble_members(f["state_dict"])) == 2 for f in folds)
    head = torch.load(tmp_path / "out" / "slide_abmil.pt", weights_only=True)
    assert head["config"]["labels"] == ["benign", "malignant"] and len(head["config"]["feature_mean"]) == 171
    assert head["config"]["ensemble"] == 2 and len(ensemble_members(head["state_dict"])) == 2


def test_slide_head_snapshots_equal_shorter_runs() -> None:
    """The head kept after 2 of 4 epochs is the head of a 2-epoch run (what lets the grid share runs)."""
    import torch

    from pathasst.finetune import slide_mil

    rng = np.random.default_rng(0)
    bags = [slide_mil.Bag(f"b{i}", f"g{i % 3}", i % 2, [rng.normal(size=(6, 171)) + i % 2]) for i in range(6)]
    snaps, _, _ = slide_mil.fit_snapshots(bags, [2, 4], weight_decay=0.1, seed=3)
    short, _, _ = slide_mil.fit_head(bags, epochs=2, weight_decay=0.1, seed=3)
    for k, v in short.state_dict().items():
        assert torch.equal(v, snaps[2].state_dict()[k])
    assert not torch.equal(snaps[2].state_dict()["fc.0.weight"], snaps[4].state_dict()["fc.0.weight"])
