"""Tissue region segmentation (U-Net): tumour / stroma / necrosis / lymphocytes map, area fractions, heatmap.

Weights (``PATHASST_TUMOR_SEG_WEIGHTS``): a U-Net state dict with a config naming its output classes (``background``
and any of the region classes) and its input resolution; format in :mod:`pathasst.tools.backends.unet`. The image is
resampled to the network's ``input_mpp`` (when its own mpp is known), segmented in overlapping tiles whose softmax
probabilities are blended, and the class map is brought back to the analysed image's pixels. Area fractions are of
the non-background area.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import ConfigDict, Field

from pathasst.tools.base import ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool, WeightsFormat
from pathasst.tools.imaging import ImageData

__all__ = [
    "TUMOR_SEG_CLASSES",
    "UNET_CLASSES",
    "TumorSegClass",
    "TumorSegmentationInput",
    "TumorSegmentationOutput",
    "TumorSegmentationTool",
]

TumorSegClass = Literal["tumor", "stroma", "necrosis", "lymphocytes", "other"]
#: the region classes, in the order of the U-Net's output channels (background is excluded from the fractions)
TUMOR_SEG_CLASSES: tuple[TumorSegClass, ...] = ("tumor", "stroma", "necrosis", "lymphocytes", "other")
#: class names a U-Net checkpoint may use for its output channels
UNET_CLASSES: tuple[str, ...] = ("background", *TUMOR_SEG_CLASSES)
#: overlay / GeoJSON colours per class
_COLORS: dict[str, tuple[int, int, int]] = {
    "tumor": (200, 0, 0),
    "stroma": (150, 200, 150),
    "necrosis": (50, 50, 50),
    "lymphocytes": (0, 60, 220),
    "other": (255, 200, 0),
}
_GEOJSON_NAMES = {"tumor": "Tumor", "stroma": "Stroma", "necrosis": "Necrosis", "lymphocytes": "Immune cells", "other": "Other"}


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
    heatmap_class: TumorSegClass | None = Field(
        None, description="Class whose probability the heatmap overlay shows (the requested one if the model has it)."
    )


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
    version: ClassVar[str] = "0.2.0"
    input_model: ClassVar[type[ToolInput]] = TumorSegmentationInput
    output_model: ClassVar[type[ToolOutput]] = TumorSegmentationOutput
    working_mpp: ClassVar[float | None] = 1.0
    weights_setting: ClassVar[str] = "tumor_seg_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".safetensors")
    weights_kind: ClassVar[str] = "a U-Net state dict (.pt, .pth or .safetensors)"
    backend_name: ClassVar[str] = "unet"

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
        from pathasst.tools.backends.unet import UNetSegmenter

        self._unet = UNetSegmenter.load(path, self.weights_setting, fmt, self.settings, UNET_CLASSES)
        self.model_description = self._unet.describe()

    def _analyze_deep(self, image: ImageData, args: ToolInput) -> ToolResult:
        from skimage.transform import resize

        from pathasst.tools.backends.render import class_map_overlay, heatmap_overlay
        from pathasst.tools.backends.runtime import working_image
        from pathasst.tools.geojson import mask_to_features

        assert isinstance(args, TumorSegmentationInput)
        cfg = self._unet.config
        classes = cfg.classes
        work = working_image(image, cfg.input_mpp, tolerance=0.02)
        if image.mpp is None:
            image.notes.append(f"tumor_segmentation: mpp unknown, image analysed as if at the U-Net's {cfg.input_mpp} um/px")
        probs = self._unet.probabilities(work.pixels)
        if work.pixels.shape[:2] != image.shape:
            probs = np.stack([resize(p, image.shape, order=1, preserve_range=True, anti_aliasing=False) for p in probs])
        class_map = np.argmax(probs, axis=0).astype(np.uint8)
        counts = np.bincount(class_map.ravel(), minlength=len(classes)).astype(np.float64)
        regions = [i for i, c in enumerate(classes) if c != "background"]
        tissue_px = float(sum(counts[i] for i in regions))
        fractions = {classes[i]: round(counts[i] / tissue_px, 6) for i in regions} if tissue_px else {}
        idx = {c: i for i, c in enumerate(classes)}
        tumor_px = counts[idx["tumor"]] if "tumor" in idx else None
        stroma_px = counts[idx["stroma"]] if "stroma" in idx else None
        tsr = None
        if tumor_px is not None and stroma_px is not None and tumor_px + stroma_px > 0:
            tsr = round(float(tumor_px / (tumor_px + stroma_px)), 6)
        px_mm2 = (image.mpp / 1000.0) ** 2 if image.mpp is not None else None
        heat_class = args.heatmap_class if args.heatmap_class in idx else classes[regions[0]]
        if heat_class != args.heatmap_class:
            image.notes.append(f"tumor_segmentation: the U-Net has no {args.heatmap_class!r} class; heatmap of {heat_class!r}")
        out = TumorSegmentationOutput(
            backend="unet",
            area_fractions=fractions,  # type: ignore[arg-type]
            tumor_stroma_ratio=tsr,
            tissue_area_mm2=round(tissue_px * px_mm2, 6) if px_mm2 is not None else None,
            tumor_area_mm2=round(float(tumor_px) * px_mm2, 6) if px_mm2 is not None and tumor_px is not None else None,
            heatmap_class=heat_class,  # type: ignore[arg-type]
        )
        tissue = class_map != idx["background"] if "background" in idx else np.ones(image.shape, bool)
        overlay = heatmap_overlay(image.pixels, probs[idx[heat_class]], mask=tissue)
        overlay = class_map_overlay(overlay, class_map, {i: _COLORS[classes[i]] for i in regions}, alpha=0.0)
        min_area = max(16, int(image.shape[0] * image.shape[1] * 1e-4))
        features = []
        for i in regions:
            features += mask_to_features(
                class_map == i, image, _GEOJSON_NAMES[classes[i]], "annotation", min_area_px=min_area, tolerance=1.5
            )
        return ToolResult(output=out, mask=class_map, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        if output.status != "ok" or not isinstance(output, TumorSegmentationOutput) or output.area_fractions is None:
            return super().summarize(output)
        if not output.area_fractions:
            return f"{self.name}: no tissue found"
        parts = [f"{k} {v:.1%}" for k, v in sorted(output.area_fractions.items(), key=lambda kv: -kv[1])]
        text = f"{self.name}: area fractions " + ", ".join(parts)
        if output.tumor_stroma_ratio is not None:
            text += f"; tumour-stroma ratio {output.tumor_stroma_ratio:.2f}"
        if output.tumor_area_mm2 is not None:
            text += f"; tumour area {output.tumor_area_mm2:.4g} mm^2"
        return text
