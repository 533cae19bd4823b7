"""H&E nuclei instance segmentation: the project's own nuclei network, or classical methods (no downloaded weights).

Methods, all at the model resolution of 0.25 um/px (40x; other resolutions are resampled to it and back):

``nuclei_net`` (through ``auto``)
    The project's own small HoVer-Net-style networks (:mod:`pathasst.tools.backends.nuclei_net`; the shipped file
    is an ensemble of two, 1.3 M and 3.2 M parameters, whose maps are averaged: nucleus
    probability, horizontal/vertical centre-distance maps and a nucleus-type head; marker watershed on the Sobel
    gradients of the HV maps; per-nucleus type by majority vote), shipped as ``tools/weights/nuclei_net.pt``
    (model card ``tools/weights/NUCLEI_MODEL_CARD.md``) and trained on CoNSeP training source images only. It is
    what ``auto`` runs when PATHASST_NUCLEI_WEIGHTS is unset and :data:`SHIPPED_NET_IS_DEFAULT` is true (it measured
    better than the pixel classifier on the held-out tiles). PATHASST_NUCLEI_WEIGHTS may name another checkpoint of
    this network, an ultralytics YOLO-seg checkpoint (``method`` then reads ``yolo_seg``) or a segment-anything
    checkpoint, which outlines the nuclei the shipped network finds (box prompts; ``method`` reads ``sam``).

``pixel_classifier``
    An ilastik-style pixel classifier: 24 hand-made colour/texture features (optical density, colour
    deconvolution H and E (``skimage.color.rgb2hed``) normalised per image, Gaussian smoothings, Laplacian of
    Gaussian, gradient magnitude, Hessian eigenvalues) feed a tiny two-layer perceptron (24-32-32-4, 2,000
    parameters, :mod:`pathasst.tools.nuclei_classical`) that predicts background / nucleus / nucleus-border probabilities and a normalised
    distance to the nucleus border. Nuclei = foreground probability > 0.5 (hole-filled, opened); seeds = h-maxima of
    the smoothed distance map; marker watershed; size filter.
    The perceptron was trained on CoNSeP training tiles of source images 1-14 and all odd-numbered ones
    (``train_1`` ... ``train_27``); tiles of source images 16, 18, ... 26 were never used for training or tuning
    and are the held-out test set of ``tests/test_tools_accuracy.py``.
``deconvolution``
    Fully unsupervised: Otsu threshold of the smoothed haematoxylin channel, hole filling, opening, size filter and a
    distance-transform h-maxima watershed. Use it for stains far from CoNSeP-like H&E.
``auto`` (default)
    The deep backend (the shipped network or PATHASST_NUCLEI_WEIGHTS), else the pixel classifier; when the image
    has no eosin (e.g. DAB IHC; both learned methods were trained on H&E), or the learned method finds far fewer
    nuclei than the deconvolution method (out of its domain), the deconvolution method (user-configured weights are
    always used as they are; for the shipped network, an image without eosin falls back only when deconvolution finds
    nuclei densely enough, so a near-empty field keeps the network's answer). The output's ``method`` says which one
    ran.

On pixels read from a whole slide, ``auto`` runs the project's 20x slide network instead
(``tools/weights/nuclei_net_20x.pt``, :data:`SLIDE_NET_FOR_SLIDES`; 2.0 M params at 0.5 um/px, faster and less
accurate than the ensemble: model card, "Slide path") and the output's notes say so; patches keep the ensemble. On a
DAB immunostain, any nuclei network (the 20x one when nothing is configured, :data:`SLIDE_NET_FOR_IHC`) reads the
pseudo-H&E of the normalised nuclear stain (:func:`ihc_network_input`), at its own resolution.

Known limits: trained on one centre's colorectal H&E (CoNSeP); very large vesicular nuclei (> ~10 um across, pale
interior) are under-detected, and touching nuclei in dense epithelium are often merged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from pydantic import Field

from pathasst.core.imaging import ImageData
from pathasst.core.settings import Settings
from pathasst.core.weights import file_sha256
from pathasst.tools.backends.nuclei_net import SHIPPED_NET_WEIGHTS, SLIDE_NET_WEIGHTS, NucleiNet, to_image_labels
from pathasst.tools.backends.nuclei_sam import NucleiSam
from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend
from pathasst.tools.backends.render import outline_overlay
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult, sig
from pathasst.tools.geojson import label_map_to_features
from pathasst.tools.ihc_nuclei import has_dab, pseudo_he, stain_maps
from pathasst.tools.nuclei_classical import (
    AUTO_AGREEMENT,
    AUTO_MIN_NUCLEI,
    MODEL_MPP,
    Method,
    MethodChoice,
    _looks_like_he,
    _n_objects,
    _segment_nuclei,
    load_weights,
    segment_nuclei,
)
from pathasst.tools.planning import PlanExample, PlanningHints

__all__ = [
    "SHIPPED_NET_IS_DEFAULT",
    "SLIDE_NET_FOR_IHC",
    "SLIDE_NET_FOR_SLIDES",
    "NucleiSegmentationInput",
    "NucleiSegmentationOutput",
    "NucleiSegmentationTool",
    "ihc_network_input",
]

#: whether ``auto`` runs the shipped network when PATHASST_NUCLEI_WEIGHTS is unset (it beat the pixel classifier on
#: the held-out CoNSeP tiles; see the model card)
SHIPPED_NET_IS_DEFAULT = True

#: the 20x slide network (``pathasst slide nuclei``'s fast path): ``auto`` runs it instead of the patch ensemble on
#: pixels read from a whole slide when PATHASST_NUCLEI_WEIGHTS is unset (model card, "Slide path": faster, less
#: accurate than the ensemble on held-out CoNSeP, so patches keep the ensemble); the output's notes say so
SLIDE_NET_FOR_SLIDES = True

#: on a DAB immunostain, ``auto`` reads the pseudo-H&E with the 20x network at 0.5 um/px instead of the patch
#: ensemble at 0.25 um/px when PATHASST_NUCLEI_WEIGHTS is unset: on the four DeepLIIF Ki-67 images (leave-one-image-out)
#: the mean index error fell from 5.2 to 0.9 points, since the finer read split granular brown nuclei (README, Ki-67)
SLIDE_NET_FOR_IHC = True

#: the shipped network's guard falls back on an image without eosin only when deconvolution finds at least this many
#: nuclei per mm^2 (near-empty CoNSeP tiles without eosin: <= 977; IHC crops of 64-128 px: median 9,000-14,000)
AUTO_MIN_DENSITY_MM2 = 2000.0


def _with_mpp(image: ImageData, mpp: float) -> ImageData:
    """``image`` with an assumed resolution (the deep backends resample by mpp)."""
    return ImageData(pixels=image.pixels, name=image.name, mpp=mpp, origin=image.origin, scale=image.scale,
                     notes=list(image.notes))


def _domain_fallback(
    rgb: np.ndarray, mpp: float, labels: np.ndarray, min_area_px: int | None, seed_h: float | None,
    work: np.ndarray | None = None,
) -> np.ndarray | None:
    """The shipped network's domain guard: the deconvolution labels when the image has no eosin (IHC, other stains)
    and deconvolution finds at least AUTO_MIN_DENSITY_MM2 nuclei per mm^2, or when deconvolution finds at least
    AUTO_MIN_NUCLEI and the network under AUTO_AGREEMENT of them (out of its domain); None when the network's
    answer stands. A near-empty field without eosin (lumen, fat, a pale edge of tissue) keeps the network's answer:
    there, deconvolution's few objects are mostly stain noise (two such tiles among the 70 post-processing tuning
    tiles; falling back on them had cost the tool's mean object F1 there 0.014), while a small IHC crop is dense in
    nuclei. So does a sparse H&E tile with pigment or dye (the count floor AUTO_MIN_NUCLEI: 11 of the 336 CoNSeP
    training tiles fell back without it, at object F1 0; the tool's mean F1 on all 336 rose from 0.682 to 0.698).
    ``work``: ``rgb`` already resampled to MODEL_MPP (the network's input), so that it is not resampled twice."""
    fallback, _, work = _segment_nuclei(rgb, mpp, "deconvolution", min_area_px, seed_h, work=work)
    n_net, n_dec = _n_objects(labels), _n_objects(fallback)
    if not _looks_like_he(work):
        area_mm2 = rgb.shape[0] * rgb.shape[1] * mpp * mpp / 1e6
        return fallback if n_dec > 0 and n_dec >= AUTO_MIN_DENSITY_MM2 * area_mm2 else None
    return fallback if n_dec >= AUTO_MIN_NUCLEI and n_net < AUTO_AGREEMENT * n_dec else None


def ihc_network_input(work: ImageData) -> tuple[ImageData, bool]:
    """A nuclei network's input for ``work`` (already at the network's mpp): on a DAB immunostain (no eosin, clear DAB)
    the pseudo-H&E of its normalised nuclear stain (:mod:`pathasst.tools.ihc_nuclei`) and True; otherwise ``work``
    unchanged and False. ``ihc_quantification`` reads its nuclei through the same path."""
    if _looks_like_he(work.pixels):
        return work, False
    maps = stain_maps(work.pixels)
    if not has_dab(maps):
        return work, False
    return ImageData(pseudo_he(maps), work.name, work.mpp, work.origin, work.scale, work.notes, work.slide), True


# ---- the tool -----------------------------------------------------------------------------------------------------
class NucleiSegmentationInput(ToolInput):
    """Arguments of ``nuclei_segmentation``."""

    method: MethodChoice = Field(
        "auto",
        description="'pixel_classifier': colour/texture pixel classifier + watershed (best on H&E); "
        "'deconvolution': unsupervised haematoxylin Otsu threshold + watershed; "
        "'auto' (best on H&E): the deep nuclei network (the project's shipped one, or PATHASST_NUCLEI_WEIGHTS: "
        "a nuclei-net, segment-anything or YOLO-seg checkpoint), with per-nucleus types when the network has a "
        "type head; falls "
        "back to deconvolution on non-H&E stains.",
    )
    min_area_px: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Smallest nucleus kept, in pixels of the analysed image (default 3.75 um^2).",
    )
    seed_h: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Seed depth for splitting touching nuclei (h-maxima); lower splits more. Default: 0.07 "
        "(pixel_classifier) or 1.0 (deconvolution).",
    )
    assumed_mpp: float = Field(
        0.25, gt=0.05, le=4.0, description="Microns per pixel assumed when the image's resolution is unknown."
    )


class NucleiSegmentationOutput(ToolOutput):
    """Counts and morphometry of the segmented nuclei."""

    count: int = Field(..., ge=0, description="Number of nuclei found.")
    density_per_mm2: float | None = Field(None, description="Nuclei per mm^2 of analysed image; None when mpp unknown.")
    analysed_area_mm2: float | None = Field(None, description="Analysed image area, mm^2; None when mpp unknown.")
    mean_area_px: float | None = Field(None, description="Mean nucleus area in pixels; None when no nuclei.")
    mean_area_um2: float | None = Field(None, description="Mean nucleus area, um^2; None w/o mpp or nuclei.")
    area_um2_p10: float | None = Field(None, description="10th percentile of nucleus area, um^2 (None w/o mpp).")
    area_um2_p50: float | None = Field(None, description="Median nucleus area, um^2 (None w/o mpp).")
    area_um2_p90: float | None = Field(None, description="90th percentile of nucleus area, um^2 (None w/o mpp).")
    mean_eccentricity: float | None = Field(
        None, description="Mean eccentricity of the fitted ellipses (0 = round, 1 = line)."
    )
    mean_solidity: float | None = Field(None, description="Mean solidity (area / convex hull area); low = irregular.")
    nuclear_area_fraction: float = Field(..., ge=0, le=1, description="Fraction of the image covered by nuclei.")
    mpp: float = Field(..., description="Microns per pixel used for the size parameters.")
    mpp_assumed: bool = Field(..., description="True when the image had no mpp and assumed_mpp was used.")
    method: Method | Literal["yolo_seg", "nuclei_net", "sam"] = Field(
        ...,
        description="Segmentation method used ('nuclei_net': the project's nuclei network, shipped or from "
        "PATHASST_NUCLEI_WEIGHTS; 'yolo_seg': a YOLO-seg checkpoint from PATHASST_NUCLEI_WEIGHTS; 'sam': a "
        "segment-anything checkpoint from PATHASST_NUCLEI_WEIGHTS outlining the nuclei the network finds).",
    )
    type_counts: dict[str, int] | None = Field(
        None,
        description="Nuclei per type (CoNSeP classes 'Other', 'Inflammatory', 'Epithelial', 'Spindle') when the "
        "method classifies nuclei ('nuclei_net'); None otherwise.",
    )


class NucleiSegmentationTool(PathologyTool):
    """H&E nuclei instance segmentation (own nuclei network or classical) with counts, types and morphometry."""

    name = "nuclei_segmentation"
    planning = PlanningHints(
        order=20, examples=(PlanExample(question="Segment the nuclei and report their mean area.", stain="H&E", image="patch"),)
    )
    description = (
        "Segment cell nuclei in an H&E image (a small HoVer-Net-style network, or a classical pixel classifier + "
        "watershed); returns the nucleus count, density per mm^2, counts per nucleus type (other, inflammatory, "
        "epithelial, spindle) when the network runs, area statistics (um^2), eccentricity and solidity, with an "
        "outline overlay and one polygon per nucleus."
    )
    version = "0.9.0"
    input_model = NucleiSegmentationInput
    output_model = NucleiSegmentationOutput
    headline_fields = ("count", "density_per_mm2", "mean_area_um2", "mean_eccentricity")
    working_mpp = MODEL_MPP
    segmentation = True
    #: deep backend (method 'auto'): the project's nuclei network or ultralytics YOLO-seg weights, see
    #: pathasst.tools.backends.nuclei_yolo.load_nuclei_backend; unset: the shipped network
    weights_setting = "nuclei_weights"

    def _shipped(self) -> Path | None:
        return SHIPPED_NET_WEIGHTS if SHIPPED_NET_IS_DEFAULT and SHIPPED_NET_WEIGHTS.is_file() else None

    def _load(self) -> None:
        path = self.weights_path()
        if path is not None:
            self._deep = load_nuclei_backend(path, self.settings)
        elif self._shipped() is not None:
            self._deep = NucleiNet.load(SHIPPED_NET_WEIGHTS, self.weights_setting, self.settings)

    def _twenty_x(self, wanted: bool) -> NucleiNet | None:
        """The 20x network (loaded once) when ``wanted`` and it is shipped, else None."""
        if not wanted or not SLIDE_NET_WEIGHTS.is_file():
            return None
        if getattr(self, "_slide_net", None) is None:
            self._slide_net = NucleiNet.load(SLIDE_NET_WEIGHTS, self.weights_setting, self.settings)
        return self._slide_net

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        if info["weights"] is None and self._shipped() is not None:  # 'weights' stays the user's setting

            info["shipped_weights"] = f"pathasst/tools/weights/{SHIPPED_NET_WEIGHTS.name}"
            info["shipped_weights_sha256"] = file_sha256(SHIPPED_NET_WEIGHTS)
        if getattr(self, "_deep", None) is not None:
            info["model"] = self._deep.describe()
        return info

    def __init__(self, settings: Settings, pixel_weights: str | Path | dict[str, Any] | None = None) -> None:
        """``pixel_weights``: a retrained classifier (.npz path from ``pathasst.finetune.nuclei_pixel``, or
        :func:`load_weights` arrays) instead of the embedded one."""
        super().__init__(settings)
        if isinstance(pixel_weights, (str, Path)):
            pixel_weights = load_weights(pixel_weights)
        self.pixel_weights = pixel_weights

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        from skimage.measure import regionprops_table

        args = cast(NucleiSegmentationInput, args)
        mpp = image.mpp if image.mpp is not None else args.assumed_mpp
        configured = self.weights_path() is not None
        deep = args.method == "auto" and (configured or self._shipped() is not None)
        used: str
        types: dict[int, str] | None = None
        type_names: list[str] = []
        if deep:
            self.load()
            work = image if image.mpp is not None else _with_mpp(image, mpp)
            shared = None  # the shipped network and its domain guard both work at MODEL_MPP: resample once for both
            ihc, ihc_net = False, None
            if isinstance(self._deep, NucleiNet) and (configured or self._deep.config.mpp == MODEL_MPP):
                # an immunostain goes to a nuclei network as its pseudo-H&E, at the resolution of the network that
                # reads it (the 20x one unless weights are configured): decided there, so it is deconvolved once
                ihc_net = None if configured else self._twenty_x(SLIDE_NET_FOR_IHC)
                reader = ihc_net or self._deep
                candidate, ihc = ihc_network_input(working_image(work, reader.config.mpp))
                if not ihc:
                    ihc_net = None
                    if not configured:
                        shared = candidate if reader is self._deep else working_image(work, MODEL_MPP)
                elif ihc_net is None:
                    shared = candidate
            # a whole slide: the 20x network at its own resolution (patches keep the ensemble)
            slide_net = None if configured or ihc else self._twenty_x(SLIDE_NET_FOR_SLIDES and image.slide is not None)
            if ihc_net is not None:  # an immunostain: the 20x network on its pseudo-H&E, at 0.5 um/px
                pred = ihc_net.segment(candidate)
                pred = to_image_labels(pred.labels, pred.types, image.shape, pred.type_classes)
                labels, used = pred.labels, "nuclei_net"
            elif slide_net is not None:  # a whole slide: the 20x network at its own resolution
                pred = slide_net.segment(work)
                labels, used, type_names = pred.labels, "nuclei_net", pred.type_classes
                types = {lab: type_names[t - 1] for lab, t in pred.types.items() if 1 <= t <= len(type_names)}
                image.notes.append(f"nuclei_segmentation: whole-slide image, nuclei by the 20x slide network "
                                   f"({SLIDE_NET_WEIGHTS.name}; faster and less accurate than the patch ensemble, "
                                   "see NUCLEI_MODEL_CARD.md)")
            elif isinstance(self._deep, (NucleiNet, NucleiSam)):
                pred = self._deep.segment(work if shared is None else shared)
                if shared is not None:  # labels at the working resolution: back to the image's
                    pred = to_image_labels(pred.labels, pred.types, image.shape, pred.type_classes)
                labels, used = pred.labels, "nuclei_net" if isinstance(self._deep, NucleiNet) else "sam"
                type_names = pred.type_classes
                types = {lab: pred.type_classes[t - 1] for lab, t in pred.types.items() if 1 <= t <= len(type_names)}
            else:
                labels, used = self._deep.segment(work), "yolo_seg"
            fallback = None if configured or ihc else _domain_fallback(
                image.pixels, mpp, labels, args.min_area_px, args.seed_h,
                work=None if shared is None else shared.pixels)
            if fallback is not None:
                labels, used, types, type_names = fallback, "deconvolution", None, []
            if ihc:  # the type head learned H&E colours: on an immunostain it names no type
                types, type_names = None, []
                by = f" by the 20x network ({SLIDE_NET_WEIGHTS.name}, {ihc_net.config.mpp:g} um/px)" if ihc_net else ""
                image.notes.append("nuclei_segmentation: DAB immunostain, nuclei read on its normalised nuclear "
                                   f"stain{by}")
        else:
            labels, used = segment_nuclei(
                image.pixels, mpp, args.method, args.min_area_px, args.seed_h, weights=self.pixel_weights
            )
        props = regionprops_table(labels, properties=("label", "area", "eccentricity", "solidity"))
        areas = np.asarray(props["area"], dtype=float)
        n = int(areas.size)
        known = image.mpp is not None
        um2 = areas * image.mpp**2 if known else None
        area_mm2 = image.area_mm2
        out = NucleiSegmentationOutput(
            count=n,
            density_per_mm2=sig(n / area_mm2) if area_mm2 else None,
            analysed_area_mm2=sig(area_mm2),
            mean_area_px=sig(areas.mean()) if n else None,
            mean_area_um2=sig(um2.mean()) if n and um2 is not None else None,
            area_um2_p10=sig(np.percentile(um2, 10)) if n and um2 is not None else None,
            area_um2_p50=sig(np.percentile(um2, 50)) if n and um2 is not None else None,
            area_um2_p90=sig(np.percentile(um2, 90)) if n and um2 is not None else None,
            mean_eccentricity=sig(np.mean(props["eccentricity"])) if n else None,
            mean_solidity=sig(np.mean(props["solidity"])) if n else None,
            nuclear_area_fraction=sig(float((labels > 0).mean())),
            mpp=sig(mpp),
            mpp_assumed=not known,
            method=used,  # type: ignore[arg-type]
            type_counts={name: sum(1 for t in types.values() if t == name) for name in type_names}
            if types is not None
            else None,
            backend={"nuclei_net": "nuclei_net", "yolo_seg": "yolo", "sam": "sam"}.get(used, "classical"),
        )
        measurements = {
            int(lab): {"Area px": float(a), **({"Area um^2": sig(a * image.mpp**2)} if known else {})}
            for lab, a in zip(props["label"], areas)
        }
        names: str | dict[int, str] = "Nucleus"
        if types is not None:  # QuPath classification = the nucleus type ("Nucleus" where the vote found none)
            names = {int(lab): types.get(int(lab), "Nucleus") for lab in props["label"]}
        features = label_map_to_features(labels, image, names, measurements=measurements)
        overlay = outline_overlay(image.pixels, labels, (0, 255, 0))
        return ToolResult(output=out, labels=labels, mask=labels > 0, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        output = cast(NucleiSegmentationOutput, output)
        if output.status != "ok":
            return super().summarize(output)
        parts = [f"{output.count} nuclei"]
        if output.density_per_mm2 is not None:
            parts.append(f"{output.density_per_mm2:g}/mm²")
        if output.mean_area_um2 is not None:
            parts.append(f"mean area {output.mean_area_um2:g} µm²")
        elif output.mean_area_px is not None:
            parts.append(f"mean area {output.mean_area_px:g} px (mpp unknown)")
        if output.mean_eccentricity is not None:
            parts.append(f"mean eccentricity {output.mean_eccentricity:g}")
        parts.append(f"nuclear area fraction {output.nuclear_area_fraction:g}")
        if output.type_counts and any(output.type_counts.values()):  # counts are in the output; order only here
            ranked = sorted((k for k, v in output.type_counts.items() if v), key=lambda k: -output.type_counts[k])
            parts.append("types by count " + " > ".join(ranked))
        parts.append(f"method {output.method}")
        return f"{self.name}: " + ", ".join(parts)
