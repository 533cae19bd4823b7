"""Patch tissue-type classification: PathCLIP zero-shot over free labels or the nine CRC-100K classes."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from pathasst.tools.base import ToolInput, ToolOutput
from pathasst.tools.deep import DeepTool
from pathasst.tools.imaging import ImageData

__all__ = [
    "CRC100K_LABELS",
    "PROMPT_TEMPLATE",
    "Preset",
    "TissueClassificationInput",
    "TissueClassificationOutput",
    "TissueClassificationTool",
]

Preset = Literal["crc100k"]

#: the nine tissue classes of NCT-CRC-HE-100K (Kather et al. 2018), in the dataset's order ADI..TUM
CRC100K_LABELS: tuple[str, ...] = (
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
)
PRESETS: dict[str, tuple[str, ...]] = {"crc100k": CRC100K_LABELS}

#: PathCLIP's zero-shot prompt
PROMPT_TEMPLATE = "An image of {}"


class TissueClassificationInput(ToolInput):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"image": "patch.png", "preset": "crc100k"},
                {"image": "patch.png", "labels": ["tumour", "stroma", "necrosis"]},
            ]
        }
    )

    labels: list[str] | None = Field(
        None,
        min_length=2,
        max_length=64,
        description="Candidate tissue labels for zero-shot classification (2..64 distinct phrases, e.g. "
        "['tumour', 'stroma', 'necrosis']). Give either labels or preset; neither = preset 'crc100k'.",
    )
    preset: Preset | None = Field(
        None, description="A named label set: 'crc100k' = the nine CRC-100K colorectal tissue classes."
    )

    @field_validator("labels")
    @classmethod
    def _clean_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        cleaned = [s.strip() for s in v]
        if any(not s for s in cleaned):
            raise ValueError("labels must be non-empty phrases")
        if len({s.lower() for s in cleaned}) != len(cleaned):
            raise ValueError("labels must be distinct")
        return cleaned

    @model_validator(mode="after")
    def _one_label_source(self) -> TissueClassificationInput:
        if self.labels is not None and self.preset is not None:
            raise ValueError("give either labels or preset, not both")
        return self

    def label_set(self) -> list[str]:
        """The candidate labels this call classifies over."""
        if self.labels is not None:
            return list(self.labels)
        return list(PRESETS[self.preset or "crc100k"])


class TissueClassificationOutput(ToolOutput):
    labels: list[str] = Field(default_factory=list, description="The candidate labels, in the order used.")
    probabilities: dict[str, float] | None = Field(
        None, description="Softmax probability per candidate label (sums to 1); None if not run."
    )
    top_label: str | None = Field(None, description="The most probable label; None if not run.")
    top_probability: float | None = Field(None, ge=0, le=1, description="Probability of top_label; None if not run.")
    prompt_template: str = Field(PROMPT_TEMPLATE, description="Text prompt each label was inserted into.")


class TissueClassificationTool(DeepTool):
    name: ClassVar[str] = "tissue_classification"
    description: ClassVar[str] = (
        "Classifies the tissue type of an image patch with PathCLIP zero-shot (prompt 'An image of {label}'): "
        "either over your own candidate labels (e.g. ['tumour', 'stroma', 'necrosis', 'normal mucosa']) or over "
        "the nine CRC-100K colorectal classes (preset 'crc100k', the default). Returns a probability per label and "
        "the top label. Use to answer 'what tissue is this?' or to check whether a patch is tumour before "
        "measuring; works best on ~224 px patches at 0.5 um/px (use region for a part of a larger image). "
        "Requires the PathCLIP checkpoint (PATHASST_PATHCLIP_WEIGHTS), otherwise it answers 'not configured'."
    )
    version: ClassVar[str] = "0.1.0"
    input_model: ClassVar[type[ToolInput]] = TissueClassificationInput
    output_model: ClassVar[type[ToolOutput]] = TissueClassificationOutput
    working_mpp: ClassVar[float | None] = 0.5
    weights_setting: ClassVar[str] = "pathclip_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".bin", ".safetensors")
    weights_kind: ClassVar[str] = "the PathCLIP open_clip checkpoint (pathclip-base.pt)"
    backend_name: ClassVar[str] = "pathclip"

    def not_configured_output(self, image: ImageData, args: ToolInput) -> ToolOutput:
        labels = args.label_set() if isinstance(args, TissueClassificationInput) else list(CRC100K_LABELS)
        return TissueClassificationOutput(
            status="not_configured", message=self.not_configured_message(), backend="none", labels=labels
        )
