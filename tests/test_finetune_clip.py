"""PathCLIP training at tiny scale on real CoNSeP tiles (captions from their nucleus labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA  # one place knows where ../shared/data is (PATHASST_SHARED_DATA overrides)

CONSEP = SHARED_DATA / "consep_train"
TINY = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "pathclip-tiny.json"

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(not CONSEP.is_dir(), reason="needs ../shared/data/consep_train (real H&E tiles)"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pathasst.finetune import clip
    from pathasst.finetune.data.consep import consep_to_pathcap

    root = tmp_path_factory.mktemp("clip")
    info = consep_to_pathcap(CONSEP, root / "pathcap", limit=120, labelled=root / "labelled")
    args = clip.parser().parse_args([
        "--data", str(root / "pathcap"), "--out", str(root / "out"), "--model-config", str(TINY),
        "--zero-shot-dir", str(root / "labelled"), "--epochs", "10", "--batch-size", "16", "--lr", "1e-3",
        "--threads", "1", "--val-fraction", "0.2",
    ])
    return root, info, clip.run(args)


def test_captions_come_from_labels_and_pathcap_layout(trained):
    root, info, _ = trained
    records = json.loads((root / "pathcap" / "data.json").read_text())
    assert info["records"] == len(records) == 120
    assert all(r["caption"].startswith("H&E tile of colorectal adenocarcinoma ") for r in records)
    assert sum(" rich in " in r["caption"] for r in records) > 100
    assert sum(info["labels"].values()) == 120 and len(info["labels"]) >= 3


def test_loss_falls_and_retrieval_and_zero_shot_are_measured(trained):
    _, _, res = trained
    assert res["train_pairs"] == 96 and res["val_pairs"] == 24
    assert len(res["epoch_mean_loss"]) == 10
    assert res["loss_last"] < res["loss_first"] - 0.2  # mean loss of the last epoch vs the first
    before, after = res["retrieval_before"], res["retrieval_after"]
    assert set(after) == {"i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"}
    assert all(0.0 <= v <= 1.0 for v in after.values())
    assert after["i2t_R@5"] >= after["i2t_R@1"] and after["i2t_R@5"] > before["i2t_R@5"]
    zs = res["zero_shot_after"]
    assert zs["n"] == 120 and 0.0 <= zs["accuracy"] <= 1.0


def test_checkpoint_reloads_through_memorys_pathclip_loader(trained, monkeypatch):
    """The trained checkpoint is read by memory's PathCLIPEmbedder (architecture swapped for the tiny config)."""
    import open_clip
    import torch
    from PIL import Image

    from pathasst.core import pathclip
    from pathasst.finetune.clip import build_clip

    root, _, res = trained
    model, _, eval_tf, _ = build_clip(model_config=TINY, checkpoint=Path(res["checkpoint"]))
    open_clip.add_model_config(str(TINY))
    monkeypatch.setattr(pathclip, "ARCHITECTURE", "pathclip-tiny")
    monkeypatch.setattr(pathclip.PathCLIPEmbedder, "dimension", 64)
    emb = pathclip.PathCLIPEmbedder(Path(res["checkpoint"]), threads=1)
    img_path = sorted((root / "pathcap" / "images").iterdir())[0]
    rgb = np.asarray(Image.open(img_path).convert("RGB"))
    got = emb.embed_images([rgb])
    with torch.inference_mode():
        want = model.eval().encode_image(eval_tf(Image.fromarray(rgb))[None], normalize=True).numpy()
    assert got.shape == (1, 64)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a random model gives other vectors: the weights were really loaded
    fresh, *_ = build_clip(model_config=TINY)
    with torch.inference_mode():
        other = fresh.eval().encode_image(eval_tf(Image.fromarray(rgb))[None], normalize=True).numpy()
    assert not np.allclose(got, other, atol=1e-3)


def test_print_measurements(trained):  # shows the figures in -s runs (README numbers)
    _, _, res = trained
    print(json.dumps({k: res[k] for k in ("epoch_mean_loss", "retrieval_before", "retrieval_after")}))
    print(json.dumps({k: {x: res[k][x] for x in ("accuracy", "majority_baseline")} for k in ("zero_shot_before", "zero_shot_after")}))
