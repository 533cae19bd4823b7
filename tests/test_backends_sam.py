"""region_segmentation's segment-anything backend.

Fast tests drive the prompt plumbing (context window, coordinates, component choice, box clipping, measurements)
through a stand-in ``SamPredictor`` whose masks are known discs; one slow test loads a real ``vit_b`` checkpoint saved
here (randomly initialised, 375 MB, ~1 min and 3.7 GB on CPU) and runs a point prompt end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tool_helpers import make_resolver

from pathasst.core.imaging import ImageData
from pathasst.tools.backends.sam import SamSegmenter
from pathasst.tools.base import call_tool
from pathasst.tools.region_segmentation import RegionSegmentationTool


class DiscPredictor:
    """Stands in for ``SamPredictor``: its masks are discs of radius ``r`` at given image positions (global px)."""

    def __init__(self, discs: list[tuple[float, float, float]], score: float = 0.9) -> None:
        self.discs = discs
        self.score = score
        self.calls: list[dict[str, Any]] = []
        self.origin = (0, 0)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image_format == "RGB"
        self.shape = image.shape[:2]
        self.calls.append({"shape": self.shape})

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        self.calls[-1].update(point=point_coords, box=box, multimask=multimask_output)
        h, w = self.shape
        yy, xx = np.mgrid[0:h, 0:w]
        ox, oy = self.origin
        mask = np.zeros((h, w), bool)
        for cx, cy, r in self.discs:
            mask |= (xx + ox + 0.5 - cx) ** 2 + (yy + oy + 0.5 - cy) ** 2 <= r * r
        n = 3 if multimask_output else 1
        masks = np.stack([np.zeros_like(mask)] * (n - 1) + [mask])
        scores = np.array([0.1] * (n - 1) + [self.score])
        return masks, scores, None


def _segmenter(pred: DiscPredictor) -> SamSegmenter:
    seg = SamSegmenter(pred, "vit_b")
    run = seg._run

    def run_with_origin(rgb, win, **prompt):  # tell the stand-in where its window lies
        pred.origin = win[:2]
        return run(rgb, win, **prompt)

    seg._run = run_with_origin  # type: ignore[method-assign]
    return seg


def _disc_truth(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def test_point_prompt_window_and_component_under_the_point() -> None:
    rgb = np.full((1200, 900, 3), 200, np.uint8)
    pred = DiscPredictor([(100.0, 1150.0, 20.0), (160.0, 1150.0, 15.0)])  # two objects near a corner
    res = _segmenter(pred).segment_point(rgb, 100.0, 1150.0, radius=40.0)
    assert res.window == (0, 830, 420, 1200)  # 8 radii (320 px) each side, clipped by the image
    assert pred.calls[0]["multimask"] is True and np.allclose(pred.calls[0]["point"], [[100, 320]])
    assert np.array_equal(res.mask, _disc_truth(rgb.shape[:2], 100.0, 1150.0, 20.0))  # the other disc dropped
    assert res.score == 0.9 and res.touches_window is False


def test_box_prompt_is_clipped_to_the_box_and_flags_the_window_edge() -> None:
    rgb = np.full((400, 400, 3), 200, np.uint8)
    pred = DiscPredictor([(200.0, 200.0, 60.0)])
    res = _segmenter(pred).segment_box(rgb, (170.0, 170.0, 230.0, 230.0))
    assert pred.calls[0]["multimask"] is False
    assert np.allclose(pred.calls[0]["box"], np.array([170, 170, 230, 230]) - [res.window[0], res.window[1]] * 2)
    truth = _disc_truth((400, 400), 200, 200, 60) & np.pad(np.ones((60, 60), bool), ((170, 170), (170, 170)))
    assert np.array_equal(res.mask, truth)
    big = DiscPredictor([(200.0, 200.0, 190.0)])
    res = _segmenter(big).segment_point(np.full((2000, 2000, 3), 200, np.uint8), 200.0, 200.0, radius=10.0)
    assert res.window == (72, 72, 328, 328) and res.touches_window  # 128 px each side; the object is larger


def test_tool_measures_the_sam_mask(settings: Any, tmp_path: Path) -> None:
    weights = tmp_path / "sam_vit_b.pth"
    weights.write_bytes(b"\x80\x02" + b"0" * 64)  # never read: the backend is injected below
    tool = RegionSegmentationTool(settings.model_copy(update={"sam_weights": weights}))
    tool._sam = _segmenter(DiscPredictor([(130.0, 90.0, 25.0)]))
    tool._loaded = True
    tool.model_description = "segment-anything vit_b"
    rgb = np.full((256, 256, 3), 230, np.uint8)
    rgb[_disc_truth((256, 256), 130, 90, 25)] = (90, 60, 140)
    image = ImageData(rgb, name="he.png", mpp=0.5)
    record, result = call_tool(tool, {"image": "he.png", "point": [130, 90]}, make_resolver({"he.png": image}))
    assert record.status == "ok", record.error
    out = result.output
    truth = _disc_truth((256, 256), 130, 90, 25)
    assert out.backend == "sam" and out.method == "sam" and out.prompt == "point" and out.sam_score == 0.9
    assert out.area_px == truth.sum() and out.area_um2 == pytest.approx(truth.sum() * 0.25, rel=1e-6)
    assert out.perimeter_um == pytest.approx(2 * np.pi * 25 * 0.5, rel=0.05)
    assert out.boundary_contrast > 0.3 and out.reached_limit is False
    assert result.features[0]["properties"]["measurements"]["SAM predicted IoU"] == 0.9
    assert record.model["model"] == "segment-anything vit_b" and "(point, sam)" in record.summary
    tool._sam = _segmenter(DiscPredictor([]))
    record, _ = call_tool(tool, {"image": "he.png", "box": [10, 10, 60, 60]}, make_resolver({"he.png": image}))
    assert record.status == "failed" and "segment-anything found no object at the box" in record.error


def test_checkpoint_that_does_not_fit_names_the_setting(settings: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "sam.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, path)
    tool = RegionSegmentationTool(settings.model_copy(update={"sam_weights": path}))
    record, _ = call_tool(tool, {"image": "x.png", "point": [5, 5]}, make_resolver({"x.png": ImageData(np.zeros((16, 16, 3), np.uint8), name="x.png")}))
    assert record.status == "failed" and "PATHASST_SAM_WEIGHTS" in record.error
    assert "do not fit segment-anything vit_b: missing" in record.error


@pytest.mark.slow
def test_real_vit_b_checkpoint_end_to_end(settings: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from segment_anything import sam_model_registry

    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    tool = RegionSegmentationTool(settings.model_copy(update={"sam_weights": path, "torch_threads": 1}))
    rgb = np.full((256, 256, 3), 230, np.uint8)
    rgb[_disc_truth((256, 256), 128, 128, 20)] = (90, 60, 140)
    record, result = call_tool(tool, {"image": "d.png", "point": [128, 128]}, make_resolver({"d.png": ImageData(rgb, name="d.png", mpp=0.5)}))
    assert record.status == "ok", record.error  # random weights: some mask, measured and reported
    out = result.output
    assert out.method == "sam" and out.backend == "sam" and record.model["model"] == "segment-anything vit_b"
    assert result.mask.shape == (256, 256) and result.mask[128, 128]  # the component under the point
    assert out.area_px == result.mask.sum() and out.area_um2 == pytest.approx(out.area_px * 0.25, rel=1e-6)
    assert isinstance(out.sam_score, float) and len(record.model["weights_sha256"]) == 64
