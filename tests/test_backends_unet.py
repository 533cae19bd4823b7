"""tumor_segmentation's U-Net backend, with U-Nets saved here in the documented formats.

A tiny U-Net is trained for a few seconds to tell purple "tumour" discs from pink "stroma" and white background;
the tool then has to report the true tumour fraction and tumour-stroma ratio of a new image, tiled, within a tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tool_helpers import make_resolver

from pathasst.core.imaging import ImageData
from pathasst.tools.base import call_tool
from pathasst.tools.tumor_segmentation import UNET_CLASSES, TumorSegmentationTool

torch = pytest.importorskip("torch")

CLASSES = ["background", "tumor", "stroma"]
CONFIG = {"classes": CLASSES, "input_mpp": 1.0, "base_channels": 8, "depth": 2, "tile_size": 96, "overlap": 24}


def _scene(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB image and class map: white background band, pink stroma, purple discs (tumour)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    h, w = shape
    truth = np.full(shape, 2, np.uint8)
    truth[:, : w // 6] = 0  # background strip
    for _ in range(max(2, h * w // 2500)):
        r = rng.uniform(6, 16)
        rr, cc = disk((rng.uniform(0, h), rng.uniform(w // 6, w)), r, shape=shape)
        truth[rr, cc] = 1
    colours = np.array([[242, 242, 240], [110, 60, 150], [225, 150, 185]], np.float64)
    img = colours[truth] + rng.normal(0, 8, (*shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


@pytest.fixture(scope="module")
def trained_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-Net trained 40 steps on 48 px crops (~5 s), saved as {"state_dict", "config"}."""
    from pathasst.tools.backends.unet import build_unet

    torch.set_num_threads(1)  # the test machine's cores are shared: one thread is many times faster than two
    torch.manual_seed(0)
    model = build_unet(3, base_channels=8, depth=2, norm="batch")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    img, truth = _scene((256, 256), seed=1)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(40):
        ys, xs = rng.integers(0, 256 - 48, 8), rng.integers(0, 256 - 48, 8)
        x = np.stack([img[y : y + 48, x0 : x0 + 48] for y, x0 in zip(ys, xs)])
        t = np.stack([truth[y : y + 48, x0 : x0 + 48] for y, x0 in zip(ys, xs)])
        xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        loss = torch.nn.functional.cross_entropy(model(xt), torch.from_numpy(t).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("unet") / "unet.pt"
    torch.save({"state_dict": model.state_dict(), "config": CONFIG}, path)
    return path


def _run(settings: Any, weights: Path, image: ImageData, **args: Any):
    tool = TumorSegmentationTool(settings.model_copy(update={"tumor_seg_weights": weights, "torch_threads": 1}))
    return call_tool(tool, {"image": image.name, **args}, make_resolver({image.name: image}))


def test_trained_unet_measures_the_true_tumour_fraction_tiled(settings: Any, trained_unet: Path) -> None:
    rgb, truth = _scene((260, 300), seed=7)  # unseen image, larger than a tile: 4 x 4 tiles of 96 px
    image = ImageData(rgb, name="he.png", mpp=1.0)
    record, result = _run(settings, trained_unet, image)
    assert record.status == "ok", record.error
    out = result.output
    tissue = truth > 0
    true_tumour = float((truth == 1).sum() / tissue.sum())
    assert out.backend == "unet" and set(out.area_fractions) == {"tumor", "stroma"}
    assert sum(out.area_fractions.values()) == pytest.approx(1.0, abs=1e-5)
    assert out.area_fractions["tumor"] == pytest.approx(true_tumour, abs=0.03)
    true_tsr = float((truth == 1).sum() / ((truth == 1).sum() + (truth == 2).sum()))
    assert out.tumor_stroma_ratio == pytest.approx(true_tsr, abs=0.03)
    assert out.tissue_area_mm2 == pytest.approx(tissue.sum() * 1e-6, rel=0.03)
    assert out.tumor_area_mm2 == pytest.approx((truth == 1).sum() * 1e-6, rel=0.1)
    assert (result.mask == truth).mean() > 0.97  # pixel accuracy of the class map
    assert result.overlay.shape == (260, 300, 3) and result.overlay.dtype == np.uint8
    names = {f["properties"]["classification"]["name"] for f in result.features}
    assert names == {"Tumor", "Stroma"} and all(f["properties"]["objectType"] == "annotation" for f in result.features)
    assert "tumour-stroma ratio" in record.summary and record.model["model"].startswith("U-Net")
    assert len(record.model["weights_sha256"]) == 64
    # determinism
    _, again = _run(settings, trained_unet, image)
    assert again.output == out and np.array_equal(again.mask, result.mask)


def test_tiled_equals_single_pass_and_resampling_keeps_measurements(settings: Any, trained_unet: Path) -> None:
    from pathasst.tools.backends.unet import UNetSegmenter

    rgb, truth = _scene((192, 192), seed=11)
    seg = UNetSegmenter.load(trained_unet, "tumor_seg_weights", "torch", settings, UNET_CLASSES)
    tiled = seg.probabilities(rgb, tile=64, overlap=16)
    single = seg.probabilities(rgb, tile=192, overlap=0)
    assert tiled.shape == single.shape == (3, 192, 192)
    assert np.allclose(tiled.sum(0), 1.0, atol=1e-5)
    assert (tiled.argmax(0) == single.argmax(0)).mean() > 0.995
    # the same scene at 0.5 um/px (2x pixels) is resampled to the U-Net's 1 um/px: same fractions, full-size mask
    big = np.kron(rgb, np.ones((2, 2, 1), np.uint8))
    _, r1 = _run(settings, trained_unet, ImageData(rgb, name="a.png", mpp=1.0))
    _, r2 = _run(settings, trained_unet, ImageData(big, name="b.png", mpp=0.5))
    assert r2.mask.shape == (384, 384)
    assert r2.output.area_fractions["tumor"] == pytest.approx(r1.output.area_fractions["tumor"], abs=0.02)
    assert r2.output.tissue_area_mm2 == pytest.approx(r1.output.tissue_area_mm2, rel=0.02)


def test_sidecar_config_safetensors_and_heatmap_class_fallback(settings: Any, trained_unet: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ckpt = torch.load(trained_unet, weights_only=True)
    path = tmp_path / "unet.safetensors"
    save_file(ckpt["state_dict"], str(path))
    (tmp_path / "unet.json").write_text(json.dumps(CONFIG))
    rgb, _ = _scene((96, 96), seed=3)
    image = ImageData(rgb, name="x.png")  # mpp unknown: analysed as if at input_mpp, a note says so
    record, result = _run(settings, path, image, heatmap_class="necrosis")
    assert record.status == "ok", record.error
    assert result.output.heatmap_class == "tumor" and result.output.tissue_area_mm2 is None
    assert any("no 'necrosis' class" in n for n in record.notes) and any("mpp unknown" in n for n in record.notes)


@pytest.mark.parametrize(
    "config,message",
    [
        ({k: v for k, v in CONFIG.items() if k != "classes"}, "lack 'classes'"),
        ({**CONFIG, "classes": ["background", "tumour", "stroma"]}, "unknown classes \\['tumour'\\]"),
        ({**CONFIG, "depth": 3}, "do not fit a U-Net"),
        ({**CONFIG, "tile_size": 90}, "multiple of 2\\*\\*depth"),
        ({**CONFIG, "input_mpp": "1"}, "wrong type"),
    ],
    ids=["no-classes", "unknown-class", "wrong-depth", "bad-tile", "bad-mpp"],
)
def test_bad_unet_checkpoints_fail_naming_the_setting(
    settings: Any, trained_unet: Path, tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    sd = torch.load(trained_unet, weights_only=True)["state_dict"]
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd, "config": config}, path)
    record, _ = _run(settings, path, ImageData(np.zeros((32, 32, 3), np.uint8), name="x.png"))
    assert record.status == "failed"
    assert "PATHASST_TUMOR_SEG_WEIGHTS" in record.error and str(path) in record.error
    assert __import__("re").search(message, record.error), record.error
