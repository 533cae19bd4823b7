"""Accuracy of the classical tools against real ground truth (../shared/data; skipped when absent).

Nuclei: CoNSeP tiles of source images 16, 18, ..., 26, which the pixel classifier never saw in training or tuning
(see ``tools/nuclei_segmentation.py``), every 2nd tile (48 tiles). The tool must reach fixed thresholds AND beat the
README's naive baseline measured here on the same tiles. Ki-67: the four DeepLIIF images.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pathasst.core.imaging import ImageData
from pathasst.tools.evaluate import CONSEP_MPP, baseline_nuclei, evaluate_ihc, evaluate_nuclei, nuclei_tiles
from pathasst.tools.ihc_quantification import IHCQuantificationInput, IHCQuantificationOutput, IHCQuantificationTool
from pathasst.tools.nuclei_segmentation import NucleiSegmentationInput, NucleiSegmentationTool

pytestmark = pytest.mark.data

HELD_OUT_SOURCES = {16, 18, 20, 22, 24, 26}


def held_out_tiles(data_dir: Path) -> list[str]:
    names = [n for n in nuclei_tiles(data_dir) if int(n.split("_")[1]) in HELD_OUT_SOURCES]
    return names[::2]


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


@pytest.fixture(scope="module")
def nuclei_scores(shared_data: Path) -> dict[str, dict]:
    from pathasst.core.settings import Settings

    data = shared_data / "consep_train"
    names = held_out_tiles(data)
    tool = NucleiSegmentationTool(Settings(_env_file=None))
    return {
        "tool": evaluate_nuclei(tool, data, names=names),
        "baseline": evaluate_nuclei(baseline_nuclei, data, names=names),
    }


def test_nuclei_absolute_accuracy(nuclei_scores: dict[str, dict]) -> None:
    # measured (tool 0.7.0, shipped ensemble of the 1.3 M network and a 3.2 M network trained 110 min with bf16; the
    # nuclei that 2 of member 1, member 2 and their averaged maps agree on): mean over tiles F1 0.712, precision
    # 0.810, recall 0.645, PQ 0.565, AJI 0.564, Dice 0.827; all tiles pooled F1 0.744, PQ 0.598, AJI 0.570. The issue's
    # target is F1 >= 0.70 and AJI >= 0.55. Without the vote (0.6.0, same weights): F1 0.696, precision 0.787, PQ
    # 0.554; the 1.3 M network alone (0.5.0): F1 0.686, AJI 0.554; the classical pixel classifier: F1 0.448, AJI 0.378
    s = nuclei_scores["tool"]
    assert s["n_tiles"] == 48
    assert s["f1"] > 0.705, s
    assert s["pq"] > 0.56, s
    assert s["aji"] > 0.555, s
    assert s["dice"] > 0.82, s
    assert s["precision"] > 0.80 and s["recall"] > 0.64, s
    assert s["f1_aggregate"] > 0.735 and s["pq_aggregate"] > 0.59 and s["aji_aggregate"] > 0.56, s


def test_nuclei_clearly_beats_naive_baseline(nuclei_scores: dict[str, dict]) -> None:
    # measured baseline on the same tiles: F1 0.254, PQ 0.189, AJI 0.307, Dice 0.654; aggregate F1 0.264,
    # PQ 0.195, AJI 0.304
    tool, base = nuclei_scores["tool"], nuclei_scores["baseline"]
    assert tool["f1"] > base["f1"] + 0.15, (tool, base)
    assert tool["f1_aggregate"] > base["f1_aggregate"] + 0.15, (tool, base)
    assert tool["pq"] > base["pq"] + 0.10, (tool, base)
    assert tool["pq_aggregate"] > base["pq_aggregate"] + 0.10, (tool, base)
    assert tool["aji"] > base["aji"] + 0.05, (tool, base)
    assert tool["aji_aggregate"] > base["aji_aggregate"] + 0.04, (tool, base)
    assert tool["dice"] > base["dice"] + 0.03, (tool, base)


def test_nuclei_output_and_resolution(shared_data: Path, settings) -> None:
    from skimage.transform import rescale

    tool = NucleiSegmentationTool(settings)
    name = held_out_tiles(shared_data / "consep_train")[5]
    rgb = _read(shared_data / "consep_train" / "images" / f"{name}.jpg")
    true_n = len(np.unique(_read_labels(shared_data, name))) - 1
    r = tool.analyze(ImageData(rgb, name="t", mpp=CONSEP_MPP), NucleiSegmentationInput(image="t"))
    out = r.output
    assert r.labels is not None and r.labels.dtype == np.uint32 and r.labels.shape == rgb.shape[:2]
    assert out.count == len(np.unique(r.labels)) - 1 == len(r.features)
    assert abs(out.count - true_n) <= 0.5 * true_n, (out.count, true_n)
    assert out.density_per_mm2 == pytest.approx(out.count / out.analysed_area_mm2, rel=1e-3)
    assert out.mean_area_um2 == pytest.approx(out.mean_area_px * CONSEP_MPP**2, rel=1e-3)
    names = {f["properties"]["classification"]["name"] for f in r.features}
    if out.method == "nuclei_net":  # the shipped network's default output names each nucleus's type
        assert names <= {"Other", "Inflammatory", "Epithelial", "Spindle", "Nucleus"} and out.type_counts is not None
        typed = [f for f in r.features if f["properties"]["classification"]["name"] != "Nucleus"]
        assert sum(out.type_counts.values()) == len(typed) > 0
    else:
        assert names == {"Nucleus"}
    _numbers_come_from_output(tool.summarize(out), out.model_dump())
    # unknown mpp: no density, sizes in pixels only
    r2 = tool.analyze(ImageData(rgb, name="t"), NucleiSegmentationInput(image="t"))
    assert r2.output.density_per_mm2 is None and r2.output.mean_area_um2 is None and r2.output.mpp_assumed
    assert r2.output.count == out.count
    # the same tile at 20x (0.5 um/px) is resampled to the model resolution: similar count
    half = (rescale(rgb, 0.5, channel_axis=-1, anti_aliasing=True) * 255).round().astype(np.uint8)
    r3 = tool.analyze(ImageData(half, name="t", mpp=0.5), NucleiSegmentationInput(image="t"))
    assert r3.labels.shape == half.shape[:2]
    assert abs(r3.output.count - out.count) <= max(3, 0.3 * out.count), (r3.output.count, out.count)


def _read_labels(shared_data: Path, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(shared_data / "consep_train" / "instances" / f"{name}.png") as im:
        return np.array(im)


def _numbers_come_from_output(text: str, output: dict) -> None:
    values = {float(v) for v in output.values() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for token in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?", text.split(":", 1)[1]):
        assert float(token) in values, (token, text)


@pytest.fixture(scope="module")
def ihc_scores(shared_data: Path) -> dict:
    from pathasst.core.settings import Settings

    return evaluate_ihc(IHCQuantificationTool(Settings(_env_file=None)), shared_data / "deepliif_ki67")


# Ki-67 at the shipped positivity threshold (chosen on these four images; their leave-one-image-out figures are
# tools eval's, tests/test_backends_eval_cli.py). Floors under the measured values: index errors 0.5 / 6.7 / 1.4 /
# 0.4 points, detection F1 0.79-0.90, positive F1 0.40-0.86.
def test_ki67_index_error_on_every_deepliif_image(ihc_scores: dict) -> None:
    assert ihc_scores["n_images"] == 4
    for row in ihc_scores["per_image"]:
        assert row["abs_error"] < 8.0, row
        assert row["true_positive_cells"] > 5 and row["pred_positive_cells"] > 3, row
    assert ihc_scores["mean_abs_error"] < 4.0


def test_ki67_per_cell_f1(ihc_scores: dict) -> None:
    for row in ihc_scores["per_image"]:
        assert row["detection_f1"] > 0.75, row
        assert row["positive_f1"] > 0.35, row
        assert row["negative_f1"] > 0.7, row


def test_ihc_modes_and_outputs(shared_data: Path, settings) -> None:
    tool = IHCQuantificationTool(settings)
    rgb = _read(shared_data / "deepliif_ki67" / "34_3_ihc.png")
    image = ImageData(rgb, name="ihc", mpp=0.25)
    results = {m: tool.analyze(image, IHCQuantificationInput(image="ihc", mode=m)) for m in ("ki67", "er_pr", "pdl1")}
    ki = results["ki67"].output
    assert isinstance(ki, IHCQuantificationOutput)
    assert ki.positive_cells + ki.negative_cells == ki.total_cells == len(ki.cells) > 50
    assert ki.positivity_index == pytest.approx(100 * ki.positive_cells / ki.total_cells, abs=0.01)
    assert ki.h_score is None and ki.tps is None and ki.allred is None
    assert ki.weak_cells + ki.moderate_cells + ki.strong_cells == ki.positive_cells
    er = results["er_pr"].output
    expected_h = 100 * (er.weak_cells + 2 * er.moderate_cells + 3 * er.strong_cells) / er.total_cells
    assert er.h_score == pytest.approx(expected_h, rel=1e-3) and 0 < er.h_score <= 300
    assert er.allred is not None and 3 <= er.allred <= 8  # ~20 % positive: proportion score 3
    assert results["pdl1"].output.tps == ki.positivity_index
    feats = results["ki67"].features
    names = [f["properties"]["classification"]["name"] for f in feats]
    assert names.count("Positive") == ki.positive_cells and names.count("Negative") == ki.negative_cells
    labels = results["ki67"].labels
    for cell in ki.cells[:20]:  # centroids lie on their nucleus (or next to it for concave shapes)
        y, x = int(round(cell.y)), int(round(cell.x))
        assert labels[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4].any()
    for mode, r in results.items():
        _numbers_come_from_output(tool.summarize(r.output), r.output.model_dump())
    # a blank image has no cells and no index (never a confident 0 % from nothing)
    empty = tool.analyze(ImageData(np.full((128, 128, 3), 240, np.uint8), name="e"), IHCQuantificationInput(image="e"))
    assert empty.output.total_cells == 0 and empty.output.positivity_index is None
    assert empty.output.warnings[0].startswith("no stained tissue found")


def test_intensity_bins_and_allred() -> None:
    from pathasst.tools.ihc_quantification import allred_score, intensity_bins

    assert intensity_bins(np.array([0.0, 0.099, 0.1, 0.149, 0.15, 0.219, 0.22, 1.5]), 0.1).tolist() == [
        0, 0, 1, 1, 2, 2, 3, 3
    ]
    assert intensity_bins(np.array([0.2, 0.3, 0.5]), 0.2).tolist() == [1, 2, 3]
    assert allred_score(0.0, 0.0) == 0
    assert allred_score(0.5, 3.0) == 1 + 3
    assert allred_score(7.3, 1.4) == 2 + 1
    assert allred_score(21.0, 2.0) == 3 + 2
    assert allred_score(50.0, 2.6) == 4 + 3
    assert allred_score(90.0, 3.0) == 5 + 3


def test_auto_nuclei_generalise_to_another_scanner(shared_data):
    """A 20x Aperio H&E region (CMU-1, skin): the learned default must not collapse outside CoNSeP's domain."""
    from pathasst.core.readers import SlideReader
    from pathasst.core.regions import Region
    from pathasst.tools.nuclei_classical import segment_nuclei

    with SlideReader(shared_data / "slides" / "cmu-1-small-region.svs") as s:
        img = s.read_region(Region(x=1024, y=1943, width=512, height=512), 1.0, 512 * 512)
    labels, used = segment_nuclei(img.pixels, mpp=img.mpp, method="auto")
    n = len(np.unique(labels)) - 1
    # the crop holds a few hundred clearly visible nuclei (epidermis around a hair follicle, dermis)
    assert n >= 150, (n, used)
    classifier_only, _ = segment_nuclei(img.pixels, mpp=img.mpp, method="pixel_classifier")
    assert len(np.unique(classifier_only)) - 1 < 50  # why the guard exists: the classifier alone finds few here


@pytest.mark.parametrize(
    ("name", "mpp", "at_least"),
    [
        ("he_stain_target_1000.png", 0.25, 400),  # tiatoolbox's stain target: large vesicular tumour nuclei
        ("he_histo_300x500.jpg", 0.5, 250),  # stardist's TCIA patch: dense small nuclei
    ],
)
def test_default_nuclei_on_he_from_other_sources_keep_the_network(shared_data, settings, name, mpp, at_least):
    """H&E from other sources and scanners than CoNSeP (no ground truth here): the default keeps the network's
    answer (no fallback), finds about as many nuclei as the unsupervised deconvolution (measured 473 vs 471 and 338
    vs 307; by eye the outlines follow the nuclei) with a nucleus-like mean area, and types them."""
    from pathasst.tools.nuclei_classical import segment_nuclei

    rgb = _read(shared_data / "tiles" / name)
    tool = NucleiSegmentationTool(settings)
    out = tool.analyze(ImageData(rgb, name="t", mpp=mpp), NucleiSegmentationInput(image="t")).output
    dec, _ = segment_nuclei(rgb, mpp, "deconvolution")
    n_dec = len(np.unique(dec)) - 1
    assert out.method == "nuclei_net" and out.count >= at_least, (out.method, out.count)
    assert 0.8 * n_dec <= out.count <= 1.5 * n_dec, (out.count, n_dec)
    assert 15 <= out.mean_area_um2 <= 60, out.mean_area_um2
    assert out.type_counts is not None and sum(out.type_counts.values()) >= 0.9 * out.count
