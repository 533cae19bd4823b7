"""Training of the nuclei pixel classifier (``pathasst.finetune.nuclei_pixel``) on a few CoNSeP tiles
(../shared/data; skipped when absent): the split never touches held-out source images, the loss falls, training
is deterministic, and the .npz loads into the tool and segments held-out tiles far better than untrained weights.
Also: the weights format round-trips with the embedded weights, and the tools' headline fields exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathasst.core.imaging import ImageData
from pathasst.finetune import nuclei_pixel as npx
from pathasst.tools.evaluate import CONSEP_MPP, evaluate_nuclei, nuclei_tiles
from pathasst.tools.nuclei_classical import _weights, load_weights, save_weights, segment_nuclei, weights_npz_bytes
from pathasst.tools.nuclei_segmentation import NucleiSegmentationInput, NucleiSegmentationTool


@pytest.fixture(scope="module")
def consep(shared_data: Path) -> Path:
    return shared_data / "consep_train"


@pytest.fixture(scope="module")
def small_run(consep: Path) -> dict:
    """8 training tiles from 8 different source images, 1,500 pixels each, 10 epochs (a few seconds)."""
    names = npx.train_tiles(consep)[::42]
    x, y, r = npx.sample_pixels(consep, names, pixels_per_tile=1500, seed=0)
    result = npx.train(x, y, r, epochs=10, seed=0, batch=1024, threads=1)
    return {"names": names, "data": (x, y, r), "result": result}


# ---- the split -------------------------------------------------------------------------------------------------------
def test_split_by_source_image_never_uses_held_out_sources(consep: Path) -> None:
    all_names = nuclei_tiles(consep)
    train, held = npx.split_tiles(all_names)
    train_sources = {npx.source_image(n) for n in train}
    assert train_sources == set(range(1, 15)) | {15, 17, 19, 21, 23, 25, 27}
    assert not train_sources & npx.HELD_OUT_SOURCES
    assert {npx.source_image(n) for n in held} == npx.HELD_OUT_SOURCES == {16, 18, 20, 22, 24, 26}
    assert len(train) == 336 and len(held) == 96 and len(train) + len(held) == len(all_names)
    assert npx.train_tiles(consep) == train
    assert npx.held_out_tiles(consep) == held[::2]  # the 48 tiles of tests/test_tools_accuracy.py
    with pytest.raises(ValueError, match="held-out source images \\[16\\]"):
        npx.sample_pixels(consep, [train[0], held[0]], pixels_per_tile=10)


def test_targets() -> None:
    labels = np.zeros((12, 12), np.int32)
    labels[2:9, 2:9] = 7
    cls, dist = npx.pixel_targets(labels)
    assert set(np.unique(cls)) == {0, 1, 2}
    assert (cls[labels == 0] == 0).all() and cls[2, 5] == 2 and cls[5, 5] == 1
    assert dist[5, 5] == pytest.approx(1.0) and dist[0, 0] == 0 and 0 < dist[2, 5] < 1


# ---- training --------------------------------------------------------------------------------------------------------
def test_sampled_pixels(small_run: dict) -> None:
    x, y, r = small_run["data"]
    assert x.shape == (8 * 1500, 24) and x.dtype == np.float32
    assert set(np.unique(y)) == {0, 1, 2} and r.min() >= 0 and r.max() <= 1
    assert len({npx.source_image(n) for n in small_run["names"]}) == 8


def test_loss_falls_and_training_is_deterministic(small_run: dict, tmp_path: Path) -> None:
    result = small_run["result"]
    losses = result.epoch_loss
    assert len(losses) == 10 and all(np.isfinite(losses))
    # measured: 1.16 -> 0.27
    assert losses[-1] < 0.6 * losses[0], losses
    assert losses[-1] < min(losses[:3]), losses
    again = npx.train(*small_run["data"], epochs=10, seed=0, batch=1024, threads=1)
    assert weights_npz_bytes(again.weights) == weights_npz_bytes(result.weights)
    other = npx.train(*small_run["data"], epochs=1, seed=1, batch=1024, threads=1)
    assert not np.array_equal(other.weights["w0"], result.weights["w0"])


def test_trained_npz_loads_into_the_tool_and_beats_untrained_weights(
    small_run: dict, consep: Path, tmp_path: Path, settings
) -> None:
    path = save_weights(tmp_path / "nuclei_pixel.npz", small_run["result"].weights)
    held = npx.held_out_tiles(consep, every=8)  # 12 tiles, 2 per held-out source image
    assert len(held) == 12
    # the file as the tool loads it, through the pixel-classifier method ('auto' runs the shipped nuclei network)
    tool = NucleiSegmentationTool(settings, pixel_weights=path)
    trained_w = load_weights(path)
    trained = evaluate_nuclei(lambda rgb: segment_nuclei(rgb, CONSEP_MPP, method="pixel_classifier", weights=trained_w)[0], consep, names=held)
    # the same architecture with untrained (initial) weights
    untrained_w = load_weights(weights_npz_bytes(npx.train(*small_run["data"], epochs=0, seed=0).weights))
    untrained = evaluate_nuclei(lambda rgb: segment_nuclei(rgb, CONSEP_MPP, method="pixel_classifier", weights=untrained_w)[0], consep, names=held)
    # measured: trained F1 0.36 / PQ 0.25 / AJI 0.33 / Dice 0.67; untrained F1 0.00 / AJI 0.004 / Dice 0.28
    assert trained["f1"] > 0.28 and trained["pq"] > 0.18 and trained["dice"] > 0.55, trained
    assert untrained["f1"] < 0.1, untrained
    assert trained["f1"] > untrained["f1"] + 0.2 and trained["aji"] > untrained["aji"] + 0.2
    # the tool really uses the file: a tile gives other labels than with the embedded weights
    with Image.open(consep / "images" / f"{held[0]}.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    image = ImageData(rgb, name="t", mpp=CONSEP_MPP)
    args = NucleiSegmentationInput(image="t", method="pixel_classifier")
    mine = tool.analyze(image, args).labels
    embedded = NucleiSegmentationTool(settings).analyze(image, args).labels
    assert mine.shape == embedded.shape and not np.array_equal(mine, embedded)


def test_cli_writes_a_loadable_file(consep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.npz"
    args = ["--data", str(consep), "--out", str(out), "--limit", "2", "--pixels-per-tile", "200", "--epochs", "2"]
    report = npx.main([*args, "--no-eval"])
    assert report["train_tiles"] == 2 and report["pixels"] == 400
    assert '"train_tiles": 2' in capsys.readouterr().out
    w = load_weights(out)
    assert w["w0"].shape == (32, 24) and w["w2"].shape == (4, 32)
    first = out.read_bytes()
    npx.main([*args, "--no-eval"])
    assert out.read_bytes() == first  # byte-for-byte reproducible


# ---- the weights format ----------------------------------------------------------------------------------------------
def test_shipped_weights_round_trip_through_the_npz_format(tmp_path: Path) -> None:
    """The shipped pixel classifier is a file next to its model card (not a blob in the source), in the canonical
    .npz format ``save_weights`` writes."""
    from pathasst.tools import nuclei_classical as ns

    embedded = _weights()
    assert sum(v.size for k, v in embedded.items() if k not in ("mu", "sd")) == 1988
    assert ns.SHIPPED_PIXEL_WEIGHTS.read_bytes() == weights_npz_bytes(embedded)
    path = save_weights(tmp_path / "embedded.npz", embedded)
    again = load_weights(path)
    assert all(np.array_equal(again[k], embedded[k]) for k in embedded)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        load_weights(bad)


# ---- headline fields of the classical tools --------------------------------------------------------------------------
def test_headline_fields_are_real_output_fields() -> None:
    from pathasst.tools.ihc_quantification import IHCQuantificationTool
    from pathasst.tools.tissue_qc import TissueQCTool

    for cls in (NucleiSegmentationTool, IHCQuantificationTool, TissueQCTool):
        assert cls.headline_fields, cls.name
        assert set(cls.headline_fields) <= set(cls.output_model.model_fields), cls.name
