"""Tumour / lesion segmentation: the project's own lesion map (shipped), or a configured U-Net's region classes.

Embedded backend (``PATHASST_TUMOR_SEG_WEIGHTS`` unset): the segmentation head of the shipped tissue network
(:mod:`pathasst.tools.backends.tissue_net`, model card ``tools/weights/TISSUE_MODEL_CARD.md``), trained on the
EBHI-Seg lesion masks, gives P(lesion) at 1.25 um/px (images of known mpp are resampled to it; of unknown mpp,
analysed as they are) in tiles of 448 px overlapping by 64 px and blended linearly across the overlap, brought back to
the image's pixels; lesion = P > the checkpoint's ``seg_threshold`` (0.5), fragments under 100 um^2 dropped and holes
under 100 um^2 filled, and only inside the tissue (``tissue_qc``'s mask with its enclosed holes, such as gland
lumina, filled: glass is never lesion). What the masks mark: the glandular lesion the EBHI-Seg pathologists outlined (adenocarcinoma,
intraepithelial neoplasia, polyp, serrated adenoma); in normal mucosa, the normal glands, so read the lesion area
together with ``tissue_classification``. The label map (``tools predict``: ``STEM.png``) numbers the connected lesion
regions 1..N (0 = background). The same domain check as ``tissue_classification`` flags images that are not H&E or
unlike the training images.

U-Net weights (``PATHASST_TUMOR_SEG_WEIGHTS``): a U-Net state dict with a config naming its output classes (``background``
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

from pathasst.core.errors import ToolExecutionError
from pathasst.core.imaging import ImageData, fill_holes
from pathasst.core.weights import WeightsFormat
from pathasst.tools.backends.render import caption, class_map_overlay, heatmap_overlay
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.tissue_tiles import (
    MIN_SIDE_PX,
    SHIPPED_TISSUE_WEIGHTS,
    domain_check,
    shipped_tissue_net,
    tissue_tiles,
)
from pathasst.tools.backends.unet import UNetSegmenter
from pathasst.tools.base import ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool
from pathasst.tools.geojson import mask_to_features
from pathasst.tools.planning import PlanExample, PlanningHints
from pathasst.tools.tissue_qc import tissue_mask

__all__ = [
    "TUMOR_SEG_CLASSES",
    "UNET_CLASSES",
    "TumorSegClass",
    "TumorSegmentationInput",
    "TumorSegmentationOutput",
    "TumorSegmentationTool",
]

TumorSegClass = Literal["tumor", "stroma", "necrosis", "lymphocytes", "other", "lesion"]
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
    "lesion": (230, 0, 90),
}
_GEOJSON_NAMES = {"tumor": "Tumor", "stroma": "Stroma", "necrosis": "Necrosis", "lymphocytes": "Immune cells", "other": "Other",
                 "lesion": "Lesion"}
#: smallest lesion region kept and largest hole filled (um^2) by the embedded backend
LESION_MIN_UM2 = 100.0
#: tissue tiles (spread evenly) the embedded backend's domain check looks at
DOMAIN_CHECK_TILES = 64


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
    lesion_fraction: float | None = Field(
        None, ge=0, le=1, description="Embedded lesion map: lesion area / tissue area (tissue = stained tissue or lesion)."
    )
    lesion_area_mm2: float | None = Field(None, ge=0, description="Embedded lesion map: lesion area in mm^2 (mpp known).")
    n_lesion_regions: int | None = Field(None, ge=0, description="Embedded lesion map: connected lesion regions.")
    in_domain: bool | None = Field(
        None, description="Embedded lesion map: False when the image is not H&E or unlike the training images."
    )
    domain_warning: str | None = Field(None, description="Why the image is out of the network's domain, in plain words.")


class TumorSegmentationTool(DeepTool):
    name: ClassVar[str] = "tumor_segmentation"
    planning: ClassVar[PlanningHints] = PlanningHints(
        order=60, examples=(PlanExample(question="How much of the section is necrotic?", stain="H&E", image="wsi"),)
    )
    description: ClassVar[str] = (
        "Finds and measures the tumour / lesion area of an H&E image or slide region: by default the project's own "
        "lesion map trained on colorectal biopsies (the glandular lesion pathologists outline: adenocarcinoma, "
        "neoplasia, polyp), reporting the lesion area fraction, its area in mm^2 and the number of lesion regions, "
        "with a probability heatmap and outlines. A configured U-Net (PATHASST_TUMOR_SEG_WEIGHTS) segments tumour, "
        "stroma, necrosis and lymphocytes instead, with the tumour-stroma ratio. Use for 'where is the tumour?', "
        "'how much of the tissue is lesion / tumour?', or to outline the tumour before other measurements."
    )
    version: ClassVar[str] = "0.3.0"
    input_model: ClassVar[type[ToolInput]] = TumorSegmentationInput
    headline_fields: ClassVar[tuple[str, ...]] = (
        "lesion_fraction", "lesion_area_mm2", "n_lesion_regions", "tumor_stroma_ratio", "tumor_area_mm2", "domain_warning"
    )
    output_model: ClassVar[type[ToolOutput]] = TumorSegmentationOutput
    working_mpp: ClassVar[float | None] = 1.0
    weights_setting: ClassVar[str] = "tumor_seg_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".safetensors")
    weights_kind: ClassVar[str] = "a U-Net state dict (.pt, .pth or .safetensors)"
    backend_name: ClassVar[str] = "unet"
    segmentation: ClassVar[bool] = True

    def shipped_weights(self) -> Path | None:
        return SHIPPED_TISSUE_WEIGHTS if SHIPPED_TISSUE_WEIGHTS.is_file() else None

    def _analyze_embedded(self, image: ImageData, args: ToolInput) -> ToolResult:
        from scipy import ndimage as ndi
        from skimage.morphology import remove_small_holes, remove_small_objects
        from skimage.transform import resize

        assert isinstance(args, TumorSegmentationInput)
        net = shipped_tissue_net(self.settings)
        self.model_description = net.describe()
        if image.mpp is None:
            image.notes.append(f"tumor_segmentation: mpp unknown, image analysed as if at the network's "
                               f"{net.config.mpp} um/px (EBHI-Seg's scale)")
        work = working_image(image, net.config.mpp)
        if min(work.shape) < MIN_SIDE_PX:
            raise ToolExecutionError(f"image is {work.shape[1]}x{work.shape[0]} px at the network's "
                                     f"{net.config.mpp} um/px; it needs at least {MIN_SIDE_PX} px on each side")
        prob = net.lesion_probability(work.pixels)
        grid = tissue_tiles(work.pixels, net.config.tile_size, net.config.mpp, max_tiles=DOMAIN_CHECK_TILES)
        ood = net.classify(grid.crops(work.pixels)).ood_distance if grid.rects else np.zeros(0)
        check = domain_check(net, work.pixels, ood, "colorectal mucosa biopsies (EBHI-Seg)")
        if work.shape != image.shape:
            prob = resize(prob, image.shape, order=1, preserve_range=True, anti_aliasing=False)
        mpp = image.mpp if image.mpp is not None else net.config.mpp
        min_px = max(1, int(round(LESION_MIN_UM2 / (mpp * mpp))))
        tissue = fill_holes(tissue_mask(image.pixels, mpp))  # glass inside tissue (lumina) counts
        lesion = (prob > net.config.seg_threshold) & tissue
        lesion = remove_small_holes(remove_small_objects(lesion, max_size=min_px - 1), max_size=min_px)
        labels, n_regions = ndi.label(lesion)
        tissue |= lesion
        tissue_px, lesion_px = int(tissue.sum()), int(lesion.sum())
        frac = lesion_px / tissue_px if tissue_px else 0.0
        px_mm2 = (image.mpp / 1000.0) ** 2 if image.mpp is not None else None
        out = TumorSegmentationOutput(
            backend="tissue_net",
            message=check.warning,
            area_fractions={"lesion": round(frac, 6), "other": round(1 - frac, 6)} if tissue_px else {},
            tissue_area_mm2=round(tissue_px * px_mm2, 6) if px_mm2 is not None else None,
            heatmap_class="lesion",
            lesion_fraction=round(frac, 6),
            lesion_area_mm2=round(lesion_px * px_mm2, 6) if px_mm2 is not None else None,
            n_lesion_regions=int(n_regions),
            in_domain=check.in_domain,
            domain_warning=check.warning,
        )
        overlay = heatmap_overlay(image.pixels, prob, mask=tissue)
        overlay = class_map_overlay(overlay, lesion.astype(np.uint8), {1: _COLORS["lesion"]}, alpha=0.0)
        if not tissue_px:
            out.message = "no tissue found"
        lines = [f"lesion {frac:.0%} of tissue, {n_regions} region(s)"] + (["OUT OF DOMAIN"] if check.warning else [])
        min_area = max(16, int(image.shape[0] * image.shape[1] * 1e-4))
        features = mask_to_features(lesion, image, "Lesion", "annotation", min_area_px=min_area, tolerance=1.5)
        return ToolResult(output=out, labels=labels.astype(np.int32), mask=lesion.astype(np.uint8),
                          overlay=caption(overlay, lines), features=features)

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
        self._unet = UNetSegmenter.load(path, self.weights_setting, fmt, self.settings, UNET_CLASSES)
        self.model_description = self._unet.describe()

    def _analyze_deep(self, image: ImageData, args: ToolInput) -> ToolResult:
        from skimage.transform import resize

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
        lut = np.zeros(len(classes), np.int32)
        lut[regions] = np.arange(1, len(regions) + 1)  # label map: 0 = background, 1.. = the region classes in order
        return ToolResult(output=out, labels=lut[class_map], mask=class_map, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        if output.status != "ok" or not isinstance(output, TumorSegmentationOutput) or output.area_fractions is None:
            return super().summarize(output)
        if not output.area_fractions:
            return f"{self.name}: no tissue found"
        if output.lesion_fraction is not None:
            text = f"{self.name}: lesion {output.lesion_fraction:.1%} of the tissue in {output.n_lesion_regions} region(s)"
            if output.lesion_area_mm2 is not None:
                text += f", {output.lesion_area_mm2:.4g} mm^2"
            if output.domain_warning:
                text += f"; WARNING {output.domain_warning}"
            return text
        parts = [f"{k} {v:.1%}" for k, v in sorted(output.area_fractions.items(), key=lambda kv: -kv[1])]
        text = f"{self.name}: area fractions " + ", ".join(parts)
        if output.tumor_stroma_ratio is not None:
            text += f"; tumour-stroma ratio {output.tumor_stroma_ratio:.2f}"
        if output.tumor_area_mm2 is not None:
            text += f"; tumour area {output.tumor_area_mm2:.4g} mm^2"
        return text
