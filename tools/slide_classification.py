"""Whole-slide classification: attention MIL (ABMIL) over PathCLIP tile embeddings, with an attention heatmap."""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict, Field

from pathasst.tools.base import Region, ToolInput, ToolOutput
from pathasst.tools.deep import DeepTool

__all__ = ["SlideClassificationInput", "SlideClassificationOutput", "SlideClassificationTool"]


class SlideClassificationInput(ToolInput):
    model_config = ConfigDict(json_schema_extra={"examples": [{"image": "slide.svs", "top_k_tiles": 5}]})

    top_k_tiles: int = Field(
        5, ge=0, le=50, description="How many highest-attention tiles to return as regions worth inspecting."
    )


class SlideClassificationOutput(ToolOutput):
    label: str | None = Field(None, description="Predicted slide-level label (classes come from the MIL head).")
    probability: float | None = Field(None, ge=0, le=1, description="Probability of the predicted label.")
    class_probabilities: dict[str, float] | None = Field(
        None, description="Probability per class of the MIL head, summing to 1; None if not run."
    )
    n_tiles: int | None = Field(None, ge=0, description="Number of tissue tiles the prediction used.")
    top_tiles: list[Region] = Field(
        default_factory=list, description="Highest-attention tiles, level-0 rectangles, most attended first."
    )


class SlideClassificationTool(DeepTool):
    name: ClassVar[str] = "slide_classification"
    description: ClassVar[str] = (
        "Predicts a whole-slide label (e.g. tumour vs normal, subtype or grade, as trained) by attention-based "
        "multi-instance learning (ABMIL) over PathCLIP embeddings of the slide's tissue tiles; returns the label, "
        "its probability, the per-class probabilities and the most attended tiles (an attention heatmap goes to "
        "the case view). Use for slide-level diagnosis questions on whole-slide images, and to pick regions for "
        "closer measurement; not for single small patches (use tissue_classification). Requires the ABMIL head "
        "(PATHASST_SLIDE_MIL_WEIGHTS) and PathCLIP weights, otherwise it answers 'not configured'."
    )
    version: ClassVar[str] = "0.1.0"
    input_model: ClassVar[type[ToolInput]] = SlideClassificationInput
    output_model: ClassVar[type[ToolOutput]] = SlideClassificationOutput
    weights_setting: ClassVar[str] = "slide_mil_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".safetensors")
    weights_kind: ClassVar[str] = "an ABMIL head state dict (.pt, .pth or .safetensors)"
    backend_name: ClassVar[str] = "abmil"
