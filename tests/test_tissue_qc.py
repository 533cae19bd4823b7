"""tissue_qc on real tiles, a blank slide area, a blurred copy and synthetic pen ink."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pathasst.core.imaging import ImageData
from pathasst.tools.tissue_qc import TissueQCInput, TissueQCOutput, TissueQCTool, blur_score, pen_mask

TILES = ("train_3_008", "train_10_003", "train_20_010", "train_6_005")
INKED = "train_15_006"  # a real blue ink stroke across the tile
SPARSE = "train_26_005"  # mostly empty lumen / fat with thin strands of tissue


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def _run(tool: TissueQCTool, rgb: np.ndarray, mpp: float | None = 0.25):
    result = tool.analyze(ImageData(rgb, name="t", mpp=mpp), TissueQCInput(image="t"))
    assert isinstance(result.output, TissueQCOutput)
    return result


@pytest.fixture()
def tool(settings) -> TissueQCTool:
    return TissueQCTool(settings)


def _numbers_come_from_output(text: str, output: dict) -> None:
    values = {float(v) for v in output.values() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tokens = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?", text.split(":", 1)[1])
    assert tokens
    for token in tokens:
        assert float(token) in values, (token, text)


def _tiles(shared_data: Path) -> list[np.ndarray]:
    return [_read(shared_data / "consep_train" / "images" / f"{n}.jpg") for n in TILES]


def test_blank_glass_has_no_tissue(tool: TissueQCTool) -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 2, (256, 256, 3)), 0, 255).astype(np.uint8)
    out = _run(tool, glass).output
    assert out.tissue_fraction < 0.01
    assert out.blur_score is None and out.blurry is None
    assert "little_tissue" in out.flags
    assert out.pen_fraction == 0.0


def test_real_tiles_are_tissue_and_sharp(tool: TissueQCTool, shared_data: Path) -> None:
    for rgb in _tiles(shared_data):
        r = _run(tool, rgb)
        out = r.output
        assert out.tissue_fraction > 0.5, out
        assert out.tissue_area_mm2 == pytest.approx(out.tissue_fraction * (256 * 0.25 / 1000) ** 2, rel=1e-3)
        assert out.blurry is False, out
        assert not out.pen_marks
        assert r.mask is not None and r.mask.shape == rgb.shape[:2] and r.mask.dtype == bool
        assert r.features and {f["properties"]["classification"]["name"] for f in r.features} == {"Tissue"}
        _numbers_come_from_output(tool.summarize(out), out.model_dump())


def test_real_ink_detected(tool: TissueQCTool, shared_data: Path) -> None:
    out = _run(tool, _read(shared_data / "consep_train" / "images" / f"{INKED}.jpg")).output
    assert out.pen_marks and 0.03 < out.pen_fraction < 0.2, out


def test_sparse_tile_fraction(tool: TissueQCTool, shared_data: Path) -> None:
    out = _run(tool, _read(shared_data / "consep_train" / "images" / f"{SPARSE}.jpg")).output
    assert 0.05 < out.tissue_fraction < 0.35, out


def test_blur_score_drops_on_blurred_copy(tool: TissueQCTool, shared_data: Path) -> None:
    from scipy import ndimage as ndi

    for rgb in _tiles(shared_data):
        sharp = _run(tool, rgb).output
        blurred_rgb = np.stack([ndi.gaussian_filter(rgb[..., c].astype(float), 2.5) for c in range(3)], -1)
        blurred = _run(tool, blurred_rgb.round().astype(np.uint8)).output
        assert blurred.blur_score < 0.25 * sharp.blur_score
        assert blurred.blurry is True and "blurry" in blurred.flags
        assert blurred.tissue_fraction == pytest.approx(sharp.tissue_fraction, abs=0.15)


def test_pen_marks_detected(tool: TissueQCTool, shared_data: Path) -> None:
    rgb = _tiles(shared_data)[1].copy()
    assert pen_mask(rgb, 0.25).mean() < 0.002  # haematoxylin is not ink
    yy, xx = np.mgrid[:256, :256]
    stroke = np.abs(yy - (0.5 * xx + 40)) < 6  # a 12 px wide blue marker line
    rgb[stroke] = (35, 70, 170)
    green = (np.abs(xx - 200) < 5) & (yy > 150)
    rgb[green] = (40, 140, 80)
    r = _run(tool, rgb)
    expected = float((stroke | green).mean())
    assert r.output.pen_marks and "pen_marks" in r.output.flags
    assert r.output.pen_fraction == pytest.approx(expected, rel=0.2)
    assert r.mask[stroke].mean() < 0.05  # ink is not tissue
    assert "Pen" in {f["properties"]["classification"]["name"] for f in r.features}


def test_blur_score_helper_ignores_tissue_edges() -> None:
    img = np.full((64, 64, 3), 240, np.uint8)
    img[16:48, 16:48] = 120  # flat tissue with a sharp edge
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    assert blur_score(img, mask) == pytest.approx(0.0, abs=1e-6)


def test_per_pixel_maps_in_bands_equal_skimage_on_the_whole_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saturation and optical density are computed in bands of rows (bounded float temporaries on large windows):
    the same values as skimage's ``rgb2hsv`` and a direct computation, across band borders and a ragged last band."""
    from skimage.color import rgb2hsv

    from pathasst.core import imaging
    from pathasst.tools.tissue_qc import optical_density, saturation

    monkeypatch.setattr(imaging, "BAND_ROWS", 37)
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (200, 90, 3), dtype=np.uint8)
    rgb[:3] = 0  # max 0: saturation 0, as skimage
    assert np.abs(saturation(rgb) - rgb2hsv(rgb)[..., 1]).max() < 1e-6
    direct = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0).sum(-1)
    assert optical_density(rgb).shape == (200, 90) and np.allclose(optical_density(rgb), direct)
