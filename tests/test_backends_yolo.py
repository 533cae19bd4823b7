"""ultralytics YOLO backends: mitosis_detection, ihc_quantification's cell detector, nuclei_segmentation's YOLO-seg.

The weights are real ultralytics checkpoints built offline from ``yolov8n.yaml`` / ``yolov8n-seg.yaml`` with the
tools' classes and saved with ``YOLO.save()`` (image size 128 in ``train_args`` to keep the runs small). With random
weights the detections mean nothing, so the tests check the loading path, BGR/letterbox pre-processing and NMS
against ultralytics' own predictor, level-0 coordinates, tiling, the per-area arithmetic, class mapping and errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tool_helpers import make_resolver

from pathasst.core.imaging import ImageData
from pathasst.core.regions import Region
from pathasst.tools.base import call_tool
from pathasst.tools.mitosis_detection import MitosisDetectionTool, mitosis_classes

torch = pytest.importorskip("torch")
IMGSZ = 128


@pytest.fixture(scope="module")
def yolo_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("yolo")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(folder / "config"))
    os.environ["YOLO_OFFLINE"] = "1"
    torch.set_num_threads(1)
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    def save(cls: Any, yaml: str, names: list[str], task: str, name: str) -> Path:
        torch.manual_seed(0)
        y = YOLO(yaml)
        model = cls(yaml, nc=len(names), verbose=False)
        with torch.no_grad():  # larger class-branch outputs, so that random heads do not give every box class 0
            for branch in model.model[-1].cv3:
                branch[-1].weight.normal_(0.0, 0.5)
        model.names = dict(enumerate(names))
        y.model = model
        y.ckpt = {"train_args": {"imgsz": IMGSZ, "task": task}}
        path = folder / name
        y.save(path)
        return path

    return {
        "mitosis": save(DetectionModel, "yolov8n.yaml", ["mitotic figure"], "detect", "mitosis.pt"),
        "cells": save(
            DetectionModel, "yolov8n.yaml",
            ["positive tumor cell", "negative tumor cell", "lymphocyte", "fibroblast"], "detect", "pdl1.pt",
        ),
        "nuclei": save(SegmentationModel, "yolov8n-seg.yaml", ["nucleus"], "segment", "nuclei-seg.pt"),
    }


def _image(h: int, w: int, seed: int = 0, mpp: float | None = 0.25, **kw: Any) -> ImageData:
    from skimage import data

    ihc = np.asarray(data.immunohistochemistry())
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, 512 - h + 1), rng.integers(0, 512 - w + 1)
    return ImageData(ihc[y : y + h, x : x + w], name=kw.pop("name", "img.png"), mpp=mpp, **kw)


def _rows(boxes: Any) -> list[tuple[float, ...]]:
    """Boxes as sorted rows rounded to 0.1 px and 3 decimals of score (order and float noise removed)."""
    arr = np.asarray(boxes, dtype=float).reshape(-1, 5)
    return sorted(tuple(np.round(r[:4], 1)) + (round(r[4], 3),) for r in arr)


def _mitosis(settings: Any, weights: Path, image: ImageData, **args: Any):
    tool = MitosisDetectionTool(settings.model_copy(update={"mitosis_weights": weights, "torch_threads": 1}))
    return tool, call_tool(tool, {"image": image.name, **args}, make_resolver({image.name: image}))


def test_mitosis_outputs_tiling_and_per_area_arithmetic(settings: Any, yolo_weights: dict[str, Path]) -> None:
    image = _image(200, 300)  # 2 x 3 tiles of 128 px
    _, (record, result) = _mitosis(settings, yolo_weights["mitosis"], image, min_score=0.0, hpf_area_mm2=0.2)
    assert record.status == "ok", record.error
    out = result.output
    assert out.backend == "yolo" and out.count == len(out.boxes) == len(result.features) > 0
    boxes = np.array(out.boxes)
    assert np.all(boxes[:, 4] >= 0) and np.all(boxes[:, :2] >= 0)
    assert np.all(boxes[:, 2] <= 300 + 1e-6) and np.all(boxes[:, 3] <= 200 + 1e-6)
    area = 200 * 300 * (0.25e-3) ** 2
    assert out.area_mm2 == pytest.approx(area, rel=1e-4)
    assert out.count_per_mm2 == pytest.approx(out.count / area, rel=1e-3)
    assert out.per_10_hpf == pytest.approx(out.count / area * 10 * 0.2, rel=1e-3)
    assert result.overlay.shape == (200, 300, 3) and not np.array_equal(result.overlay, image.pixels)
    feat = result.features[0]
    assert feat["properties"]["classification"]["name"] == "Mitosis" and "Score" in feat["properties"]["measurements"]
    assert record.model["model"] == f"ultralytics YOLO detect (1 classes, imgsz {IMGSZ})"
    assert f"{out.count} mitotic figures" in record.summary and "per 10 HPF" in record.summary
    # deterministic, and a high threshold leaves nothing (random heads score ~0.01)
    _, (_, again) = _mitosis(settings, yolo_weights["mitosis"], image, min_score=0.0, hpf_area_mm2=0.2)
    assert again.output == out
    _, (_, none) = _mitosis(settings, yolo_weights["mitosis"], image, min_score=0.9)
    assert none.output.count == 0 and none.output.count_per_mm2 == 0 and none.features == []


def test_single_tile_matches_ultralytics_and_regions_map_to_level0(settings: Any, yolo_weights: dict[str, Path]) -> None:
    from ultralytics import YOLO

    full = _image(256, 256, seed=3)
    crop = full.pixels[40 : 40 + IMGSZ, 30 : 30 + IMGSZ]
    tool, (record, result) = _mitosis(settings, yolo_weights["mitosis"], ImageData(crop, name="c.png", mpp=0.25), min_score=0.0)
    ours = _rows(result.output.boxes)
    ref = YOLO(str(yolo_weights["mitosis"])).predict(
        np.ascontiguousarray(crop[..., ::-1]), imgsz=IMGSZ, conf=0.0, iou=0.7, device="cpu", verbose=False
    )[0]
    theirs = _rows(np.c_[ref.boxes.xyxy.numpy(), ref.boxes.conf.numpy()])
    assert ours == theirs  # RGB->BGR, letterbox, NMS: exactly as ultralytics' own predictor
    # the same pixels reached through a region of the larger image: boxes shifted by the region's origin
    region = {"x": 30, "y": 40, "width": IMGSZ, "height": IMGSZ}
    rec2, res2 = call_tool(tool, {"image": "big.png", "region": region, "min_score": 0.0}, make_resolver({"big.png": ImageData(full.pixels, name="big.png", mpp=0.25)}))
    shifted = np.array(res2.output.boxes) - [30, 40, 30, 40, 0]
    assert _rows(shifted) == ours
    coords = np.array([f["geometry"]["coordinates"][0][:4] for f in res2.features]).reshape(-1, 2)
    assert coords[:, 0].min() >= 30 - 0.01 and coords[:, 1].min() >= 40 - 0.01  # GeoJSON in level-0 pixels
    # an image at 0.5 um/px is resampled to the detector's 0.25 um/px; boxes come back in the image's own pixels
    _, (rec3, res3) = _mitosis(settings, yolo_weights["mitosis"], _image(96, 96, mpp=0.5, name="half.png"), min_score=0.0)
    b = np.array(res3.output.boxes)
    assert rec3.status == "ok" and b[:, 2].max() <= 96 + 1e-6 and b[:, 3].max() <= 96 + 1e-6


def test_mitosis_class_rules() -> None:
    assert mitosis_classes({0: "anything"}) == {0}
    assert mitosis_classes({0: "mitotic figure", 1: "non-mitotic figure", 2: "mitosis imposter"}) == {0}
    assert mitosis_classes({0: "Mitosis", 1: "hard negative"}) == {0}
    assert mitosis_classes({0: "cell", 1: "nucleus"}) == set()


def test_wrong_yolo_files_fail_naming_the_setting(settings: Any, yolo_weights: dict[str, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(3)}, plain)
    _, (record, _) = _mitosis(settings, plain, _image(64, 64))
    assert record.status == "failed" and "PATHASST_MITOSIS_WEIGHTS" in record.error
    assert "not an ultralytics YOLO checkpoint" in record.error
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationTool

    tool = NucleiSegmentationTool(settings.model_copy(update={"nuclei_weights": yolo_weights["mitosis"]}))
    record, _ = call_tool(tool, {"image": "img.png"}, make_resolver({"img.png": _image(64, 64)}))
    assert record.status == "failed" and "PATHASST_NUCLEI_WEIGHTS" in record.error
    assert "holds a YOLO 'detect' model; this tool needs an instance-segmentation (-seg) model" in record.error


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ("{not json", "cannot read the sidecar"),
        ("[0.25]", "must hold a JSON object"),
        ('{"mpp": 20}', "mpp must be a number in 0.05..8, got 20"),
        ('{"mpp": "0.25"}', "mpp must be a number in 0.05..8, got '0.25'"),
        ('{"min_score": true}', "min_score must be a number in 0..1, got True"),
        ('{"min_score": 1.5}', "min_score must be a number in 0..1, got 1.5"),
    ],
)
def test_bad_sidecars_fail_naming_the_setting(
    settings: Any, yolo_weights: dict[str, Path], tmp_path: Path, sidecar: str, message: str
) -> None:
    from pathasst.core.errors import WeightsError
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend
    from pathasst.tools.backends.yolo_cells import load_cell_detector

    for kind, load, env in (("nuclei", load_nuclei_backend, "PATHASST_NUCLEI_WEIGHTS"),
                            ("cells", load_cell_detector, "PATHASST_IHC_WEIGHTS")):
        weights = tmp_path / f"{kind}.pt"
        weights.write_bytes(yolo_weights[kind].read_bytes())
        load(weights, settings)  # loads without a sidecar
        (tmp_path / f"{kind}.json").write_text(sidecar)
        with pytest.raises(WeightsError) as info:
            load(weights, settings)
        assert message in str(info.value) and env in str(info.value), str(info.value)


# ---- IHC cells ----------------------------------------------------------------------------------------------------
def test_ihc_yolo_cells_count_classes_and_score_tumour_cells_only(
    settings: Any, yolo_weights: dict[str, Path], tmp_path: Path
) -> None:
    from pathasst.tools.ihc_quantification import IHCQuantificationTool

    weights = tmp_path / "pdl1.pt"
    weights.write_bytes(yolo_weights["cells"].read_bytes())
    (tmp_path / "pdl1.json").write_text(json.dumps({"min_score": 0.0}))  # random heads score ~0.01
    tool = IHCQuantificationTool(settings.model_copy(update={"ihc_weights": weights, "torch_threads": 1}))
    image = _image(160, 200, seed=5)
    record, result = call_tool(tool, {"image": "img.png", "mode": "pdl1"}, make_resolver({"img.png": image}))
    assert record.status == "ok", record.error
    out = result.output
    assert out.backend == "yolo"
    counts = out.cell_counts
    assert set(counts) <= {"positive tumor cell", "negative tumor cell", "lymphocyte", "fibroblast"}
    assert out.positive_cells == counts.get("positive tumor cell", 0)
    assert out.negative_cells == counts.get("negative tumor cell", 0)
    assert out.total_cells == out.positive_cells + out.negative_cells == len(out.cells)
    n_all = sum(counts.values())
    assert n_all > out.total_cells  # lymphocytes / fibroblasts detected but not scored
    if out.total_cells:
        assert out.tps == pytest.approx(100 * out.positive_cells / out.total_cells, rel=1e-3)
    assert all(c.cell_class in ("positive tumor cell", "negative tumor cell") for c in out.cells)
    assert all(c.positive == (c.cell_class == "positive tumor cell") and (c.intensity >= 1) == c.positive for c in out.cells)
    assert result.labels.shape == (160, 200) and int(result.labels.max()) <= n_all
    names = {f["properties"]["classification"]["name"] for f in result.features}
    assert names <= {"Positive", "Negative", "Lymphocyte", "Fibroblast"} and len(result.features) >= 1
    assert "positive ['positive tumor cell'], negative ['negative tumor cell']" in record.model["model"]
    # a detector whose classes cannot be mapped is refused, naming the setting; a sidecar can map them
    odd = tmp_path / "odd.pt"
    odd.write_bytes(yolo_weights["mitosis"].read_bytes())
    tool = IHCQuantificationTool(settings.model_copy(update={"ihc_weights": odd}))
    record, _ = call_tool(tool, {"image": "img.png"}, make_resolver({"img.png": image}))
    assert record.status == "failed" and "PATHASST_IHC_WEIGHTS" in record.error and "positive from negative" in record.error


# ---- nuclei YOLO-seg ----------------------------------------------------------------------------------------------
def test_nuclei_yolo_seg_labels_tiled_and_through_the_tool(settings: Any, yolo_weights: dict[str, Path], tmp_path: Path) -> None:
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationTool

    backend = load_nuclei_backend(yolo_weights["nuclei"], settings.model_copy(update={"torch_threads": 1}))
    image = _image(150, 220, seed=9)
    labels = backend.segment(image, min_score=0.0)
    assert labels.shape == (150, 220) and labels.dtype == np.uint32
    ids = np.unique(labels)
    assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids)))  # contiguous 1..N
    assert np.array_equal(backend.segment(image, min_score=0.0), labels)  # deterministic
    assert backend.segment(image, min_score=0.99).max() == 0
    # through the tool (sidecar sets the detector's threshold) at another resolution: resampled and brought back
    weights = tmp_path / "seg.pt"
    weights.write_bytes(yolo_weights["nuclei"].read_bytes())
    (tmp_path / "seg.json").write_text(json.dumps({"mpp": 0.25, "min_score": 0.0}))
    tool = NucleiSegmentationTool(settings.model_copy(update={"nuclei_weights": weights, "torch_threads": 1}))
    half = _image(80, 90, seed=2, mpp=0.5, name="h.png")
    record, result = call_tool(tool, {"image": "h.png"}, make_resolver({"h.png": half}))
    assert record.status == "ok", record.error
    assert result.output.backend == "yolo" and result.labels.shape == (80, 90)
    assert result.output.count == len(np.unique(result.labels)) - 1 == len(result.features)
    assert record.model["model"] == f"ultralytics YOLO segment (1 classes, imgsz {IMGSZ}) nuclei at 0.25 um/px"


def test_region_is_required_to_overlap(settings: Any, yolo_weights: dict[str, Path]) -> None:
    tool = MitosisDetectionTool(settings.model_copy(update={"mitosis_weights": yolo_weights["mitosis"]}))
    bad = Region(x=500, y=500, width=10, height=10).model_dump()
    record, _ = call_tool(tool, {"image": "a.png", "region": bad}, make_resolver({"a.png": _image(64, 64, name="a.png")}))
    assert record.status == "bad_call"

