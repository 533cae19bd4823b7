"""Mitotic-figure detection (ultralytics YOLO): boxes, count, count per mm^2 and per 10 high-power fields."""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict, Field

from pathasst.tools.base import ToolInput, ToolOutput
from pathasst.tools.deep import DeepTool

__all__ = ["DEFAULT_HPF_AREA_MM2", "MitosisDetectionInput", "MitosisDetectionOutput", "MitosisDetectionTool"]

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
    version: ClassVar[str] = "0.1.0"
    input_model: ClassVar[type[ToolInput]] = MitosisDetectionInput
    output_model: ClassVar[type[ToolOutput]] = MitosisDetectionOutput
    working_mpp: ClassVar[float | None] = 0.25
    weights_setting: ClassVar[str] = "mitosis_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt",)
    weights_kind: ClassVar[str] = "a YOLO .pt file"
    backend_name: ClassVar[str] = "yolo"
