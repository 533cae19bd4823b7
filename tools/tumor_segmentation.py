"""Tissue region segmentation (U-Net): tumour / stroma / necrosis / lymphocytes map, area fractions, heatmap."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from pathasst.tools.base import ToolInput, ToolOutput
from pathasst.tools.deep import DeepTool

__all__ = [
    "TUMOR_SEG_CLASSES",
    "TumorSegClass",
    "TumorSegmentationInput",
    "TumorSegmentationOutput",
    "TumorSegmentationTool",
]

TumorSegClass = Literal["tumor", "stroma", "necrosis", "lymphocytes", "other"]
#: the region classes, in the order of the U-Net's output channels (background is excluded from the fractions)
TUMOR_SEG_CLASSES: tuple[TumorSegClass, ...] = ("tumor", "stroma", "necrosis", "lymphocytes", "other")


class TumorSegmentationInput(ToolInput):
    model_config = ConfigDict(json_schema_extra={"examples": [{"image": "he.png", "heatmap_class": "tumor"}]})

    heatmap_class: TumorSegClass = Field(
        "tumor", description="Class whose probability map is rendered as the heatmap overlay."
    )


class TumorSegmentationOutput(ToolOutput):
    area_fractions: dict[TumorSegClass, float] | None = Field(
        None, description="Fraction of the tissue area (background excluded) per region class, summing to 1."
    )
    tumor_stroma_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Tumour area / (tumour + stroma area), 0..1; below 0.5 corresponds to 'stroma-high'. "
        "None if not run or no tumour or stroma found.",
    )
    tissue_area_mm2: float | None = Field(None, ge=0, description="Tissue area in mm^2; None when mpp is unknown.")
    tumor_area_mm2: float | None = Field(None, ge=0, description="Tumour area in mm^2; None when mpp is unknown.")


class TumorSegmentationTool(DeepTool):
    name: ClassVar[str] = "tumor_segmentation"
    description: ClassVar[str] = (
        "Segments an H&E image or slide region into tumour, stroma, necrosis, lymphocyte-rich and other tissue with "
        "a U-Net, and reports the area fraction of each class, the tumour-stroma ratio and the tumour area "
        "(a class map and heatmap overlay go to the case view). Use for 'how much tumour / necrosis / stroma?', "
        "tumour cellularity or tumour-stroma ratio questions, or to find the tumour area before other "
        "measurements. Works at about 1 um/px; requires U-Net weights (PATHASST_TUMOR_SEG_WEIGHTS), otherwise it "
        "answers 'not configured'."
    )
    version: ClassVar[str] = "0.1.0"
    input_model: ClassVar[type[ToolInput]] = TumorSegmentationInput
    output_model: ClassVar[type[ToolOutput]] = TumorSegmentationOutput
    working_mpp: ClassVar[float | None] = 1.0
    weights_setting: ClassVar[str] = "tumor_seg_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".safetensors")
    weights_kind: ClassVar[str] = "a U-Net state dict (.pt, .pth or .safetensors)"
    backend_name: ClassVar[str] = "unet"
