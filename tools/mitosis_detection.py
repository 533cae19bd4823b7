"""Mitotic-figure detection (ultralytics YOLO): boxes, count, count per mm^2 and per 10 high-power fields.

Weights (``PATHASST_MITOSIS_WEIGHTS``): an ultralytics detection (or -seg) checkpoint ``.pt`` (see
:mod:`pathasst.tools.backends.yolo`). The model is taken to work at 0.25 um/px (40x): images of known, different
resolution are resampled to it. Which classes count as mitoses: the only class of a one-class model; otherwise every
class whose name mentions mitosis ("mitotic figure", "mitosis") and not a non-mitotic look-alike ("non-mitotic",
"imposter", "mimic", "look-alike"). Large regions are analysed in tiles of the model's image size overlapping by
128 px (32 um), merged across tiles in level-0 coordinates.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import ConfigDict, Field

from pathasst.tools.base import ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool, WeightsFormat
from pathasst.tools.errors import WeightsError
from pathasst.tools.imaging import ImageData

__all__ = [
    "DEFAULT_HPF_AREA_MM2",
    "MitosisDetectionInput",
    "MitosisDetectionOutput",
    "MitosisDetectionTool",
    "mitosis_classes",
]

#: area of one high-power field (40x objective, field number 22: 0.55 mm diameter)
DEFAULT_HPF_AREA_MM2 = 0.237

Box = tuple[float, float, float, float, float]


class MitosisDetectionInput(ToolInput):
    model_config = ConfigDict(json_schema_extra={"examples": [{"image": "he_40x.png", "min_score": 0.3}]})

    min_score: float = Field(
        0.25, ge=0.0, le=1.0, description="Detections with a confidence below this are discarded (0..1)."
    )
    hpf_area_mm2: float = Field(
        DEFAULT_HPF_AREA_MM2,
        gt=0.0,
        le=1.0,
        description="Area of one high-power field in mm^2 for the per-10-HPF count (default 0.237: 40x, FN 22).",
    )


class MitosisDetectionOutput(ToolOutput):
    boxes: list[Box] = Field(
        default_factory=list,
        description="Detected mitotic figures as [x0, y0, x1, y1, score], level-0 pixels of the source image.",
    )
    count: int | None = Field(None, ge=0, description="Number of mitotic figures detected; None if not run.")
    area_mm2: float | None = Field(None, ge=0, description="Analysed area in mm^2; None when the mpp is unknown.")
    count_per_mm2: float | None = Field(
        None, ge=0, description="Mitotic figures per mm^2 of analysed area; None when not run or mpp unknown."
    )
    per_10_hpf: float | None = Field(
        None, ge=0, description="Mitotic figures per 10 high-power fields (count_per_mm2 x 10 x hpf_area_mm2)."
    )


class MitosisDetectionTool(DeepTool):
    name: ClassVar[str] = "mitosis_detection"
    description: ClassVar[str] = (
        "Detects mitotic figures in an H&E image or slide region with a YOLO detector and reports their boxes, "
        "the count, the count per mm^2 and per 10 high-power fields (mitotic activity for grading, e.g. breast "
        "Nottingham grade, GIST/sarcoma risk). Use when the question asks about mitoses, mitotic count/index or "
        "proliferation on H&E (for Ki-67 IHC use ihc_quantification). Needs 40x (about 0.25 um/px) H&E and known "
        "microns per pixel for the per-area figures; requires YOLO weights (PATHASST_MITOSIS_WEIGHTS), otherwise "
        "it answers 'not configured'."
    )
    version: ClassVar[str] = "0.2.0"
    input_model: ClassVar[type[ToolInput]] = MitosisDetectionInput
    output_model: ClassVar[type[ToolOutput]] = MitosisDetectionOutput
    working_mpp: ClassVar[float | None] = 0.25
    weights_setting: ClassVar[str] = "mitosis_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt",)
    weights_kind: ClassVar[str] = "a YOLO .pt file"
    backend_name: ClassVar[str] = "yolo"

    #: pixels of overlap between tiles at the working resolution (a mitotic figure is < 20 um = 80 px)
    tile_overlap_px: ClassVar[int] = 128

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
        from pathasst.tools.backends.yolo import YoloBackend

        backend = YoloBackend.load(path, self.weights_setting, self.settings, tasks=("detect", "segment"))
        self._mitosis_classes = mitosis_classes(backend.names)
        if not self._mitosis_classes:
            raise WeightsError(
                f"cannot tell which class of the YOLO model in PATHASST_MITOSIS_WEIGHTS ({path}) is the mitotic "
                f"figure: classes {sorted(backend.names.values())}; name it e.g. 'mitotic figure'"
            )
        self._backend = backend
        self.model_description = backend.describe()

    def _analyze_deep(self, image: ImageData, args: ToolInput) -> ToolResult:
        from pathasst.tools.backends.render import box_features, draw_boxes
        from pathasst.tools.backends.runtime import working_image

        assert isinstance(args, MitosisDetectionInput)
        work = working_image(image, self.working_mpp)
        dets = self._backend.detect(work, conf=args.min_score, overlap=self.tile_overlap_px)
        keep = np.isin(dets.classes, sorted(self._mitosis_classes))
        lvl0, scores = dets.boxes_level0[keep], dets.scores[keep]
        boxes = [(*(round(float(v), 2) for v in b), round(float(sc), 4)) for b, sc in zip(lvl0, scores)]
        count = len(boxes)
        area = image.area_mm2
        per_mm2 = count / area if area else None
        out = MitosisDetectionOutput(
            backend="yolo",
            boxes=boxes,  # type: ignore[arg-type]
            count=count,
            area_mm2=round(area, 6) if area is not None else None,
            count_per_mm2=round(per_mm2, 4) if per_mm2 is not None else None,
            per_10_hpf=round(per_mm2 * 10.0 * args.hpf_area_mm2, 4) if per_mm2 is not None else None,
        )
        features = box_features(image, lvl0, ["Mitosis"] * count, scores)
        overlay = draw_boxes(image, lvl0, [(255, 40, 200)] * count)
        return ToolResult(output=out, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        if output.status != "ok" or not isinstance(output, MitosisDetectionOutput) or output.count is None:
            return super().summarize(output)
        text = f"{self.name}: {output.count} mitotic figures"
        if output.count_per_mm2 is not None and output.area_mm2 is not None:
            text += (
                f" in {output.area_mm2:.4g} mm^2 ({output.count_per_mm2:.4g}/mm^2, "
                f"{output.per_10_hpf:.4g} per 10 HPF)"
            )
        else:
            text += " (mpp unknown: no per-area figures)"
        return text


_MITOSIS = re.compile(r"mitos|mitotic", re.IGNORECASE)
_NOT_MITOSIS = re.compile(r"non[-_ ]?mito|imposter|impostor|mimic|look[-_ ]?alike|hard[-_ ]?neg", re.IGNORECASE)


def mitosis_classes(names: dict[int, str]) -> set[int]:
    """Class ids that count as mitotic figures (see the module docstring)."""
    if len(names) == 1:
        return set(names)
    return {i for i, n in names.items() if _MITOSIS.search(n) and not _NOT_MITOSIS.search(n)}
