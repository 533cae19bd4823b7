"""Mitotic-figure detection: the project's own detector (shipped), or ultralytics YOLO weights when configured.

Embedded backend (``PATHASST_MITOSIS_WEIGHTS`` unset): the shipped mitosis network
(:mod:`pathasst.tools.backends.mitosis_net`, model card ``tools/weights/MITOSIS_MODEL_CARD.md``), trained on AMi-Br
(breast cancer, 40x), marks each mitotic figure as a point with a score and the probability that it is atypical. The
image is resampled to 0.25 um/px (unknown mpp: taken to be 0.25, and the trace says so) and analysed in 512 px tiles
overlapping by 64 px whose maps are blended. Checks before counting: an image that is not H&E (no eosin: IHC,
another stain) gets no count (``count`` None, ``in_domain`` False, a message); an image with no tissue counts 0 and
says so; a blurred field (variance of the Laplacian over tissue below 30 at 0.25 um/px) keeps its count with a
warning that figures may be missed or invented.

YOLO weights (``PATHASST_MITOSIS_WEIGHTS``): an ultralytics detection (or -seg) checkpoint ``.pt`` (see
:mod:`pathasst.tools.backends.yolo`). The model is taken to work at 0.25 um/px (40x): images of known, different
resolution are resampled to it. Which classes count as mitoses: the only class of a one-class model; otherwise every
class whose name mentions mitosis ("mitotic figure", "mitosis") and not a non-mitotic look-alike ("non-mitotic",
"imposter", "mimic", "look-alike"). Large regions are analysed in tiles of the model's image size overlapping by
128 px (32 um), merged across tiles in level-0 coordinates.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData, looks_like_he
from pathasst.core.weights import WeightsFormat
from pathasst.tools.backends.mitosis_net import MitosisNet
from pathasst.tools.backends.render import box_features, caption, draw_boxes
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.yolo import YoloBackend
from pathasst.tools.base import ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool
from pathasst.tools.geojson import point_feature
from pathasst.tools.planning import PlanExample, PlanningHints
from pathasst.tools.tissue_qc import blur_score, tissue_mask

__all__ = [
    "DEFAULT_HPF_AREA_MM2",
    "MitosisFigure",
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

    min_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Detections with a confidence below this are discarded (0..1); default: the detector's own "
        "threshold (embedded detector: chosen on validation slides; YOLO: 0.25).",
    )
    max_density_per_mm2: float | None = Field(
        100.0, gt=0.0, description="Embedded detector: more figures than this per mm^2 (at least 3 in any field) means "
        "the image is outside its domain and the count is withheld; None disables the check (e.g. a mosaic of "
        "selected figures)."
    )
    hpf_area_mm2: float = Field(
        DEFAULT_HPF_AREA_MM2,
        gt=0.0,
        le=1.0,
        description="Area of one high-power field in mm^2 for the per-10-HPF count (default 0.237: 40x, FN 22).",
    )


class MitosisFigure(BaseModel):
    """One mitotic figure: its centre and how sure the detector is."""

    model_config = ConfigDict(extra="forbid")
    x: float = Field(..., description="Centre x, level-0 pixels of the source image.")
    y: float = Field(..., description="Centre y, level-0 pixels of the source image.")
    score: float = Field(..., ge=0, le=1, description="Detector confidence that this is a mitotic figure (0..1).")
    atypical_probability: float | None = Field(
        None, ge=0, le=1, description="Probability that the figure is atypical (AMi-Br's expert majority); None for YOLO."
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
    figures: list[MitosisFigure] = Field(
        default_factory=list, description="Each detected figure's centre, score and atypical probability."
    )
    n_atypical: int | None = Field(
        None, ge=0, description="Figures whose atypical probability is above 0.5 (embedded detector); None if not run."
    )
    in_domain: bool | None = Field(
        None, description="False when the image is not H&E (no count is given then); None if not judged."
    )
    warnings: list[str] = Field(default_factory=list, description="Why the count may be unreliable (e.g. a blurred field).")


class MitosisDetectionTool(DeepTool):
    name: ClassVar[str] = "mitosis_detection"
    planning: ClassVar[PlanningHints] = PlanningHints(
        order=40, examples=(PlanExample(question="How many mitotic figures are there?", stain="H&E", image="wsi"),)
    )
    description: ClassVar[str] = (
        "Detects mitotic figures in an H&E image or slide region and reports each figure's centre, score and "
        "probability of being atypical, the count, the number of atypical figures, the count per mm^2 and per 10 "
        "high-power fields (mitotic activity for grading, e.g. breast Nottingham grade, GIST/sarcoma risk). Use "
        "when the question asks about mitoses, mitotic count/index or proliferation on H&E (for Ki-67 IHC use "
        "ihc_quantification). Works at 40x (about 0.25 um/px); known microns per pixel gives the per-area figures. "
        "Embedded detector trained on breast cancer; YOLO weights (PATHASST_MITOSIS_WEIGHTS) replace it."
    )
    version: ClassVar[str] = "0.3.0"
    input_model: ClassVar[type[ToolInput]] = MitosisDetectionInput
    headline_fields: ClassVar[tuple[str, ...]] = ("count", "n_atypical", "per_10_hpf", "count_per_mm2", "warnings", "message")
    output_model: ClassVar[type[ToolOutput]] = MitosisDetectionOutput
    working_mpp: ClassVar[float | None] = 0.25
    weights_setting: ClassVar[str] = "mitosis_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt",)
    weights_kind: ClassVar[str] = "a YOLO .pt file"
    backend_name: ClassVar[str] = "yolo"

    #: pixels of overlap between tiles at the working resolution (a mitotic figure is < 20 um = 80 px)
    tile_overlap_px: ClassVar[int] = 128
    #: half side of the box drawn around an embedded figure, um
    figure_half_um: ClassVar[float] = 6.0
    #: blur_score (tissue_qc's) below which a field counts as blurred at 0.25 um/px
    blur_threshold: ClassVar[float] = 30.0

    #: a figure needs haematoxylin: max smoothed haematoxylin OD within 2 um of its centre (validation figures:
    #: minimum 0.012, 1st percentile 0.029; eosin-only noise: 0.0007)
    min_haematoxylin_od: ClassVar[float] = 0.003
    #: more candidates than max(implausible_min_count, max_density_per_mm2 x field area) means the detector is out of
    #: its domain (other H&E sources: 120-190 per mm^2 measured with the shipped detector, 1,200-3,200 with the
    #: first; the highest-grade tumours stay under ~50)
    implausible_min_count: ClassVar[int] = 3

    def shipped_weights(self) -> Path | None:
        return SHIPPED_MITOSIS_WEIGHTS if SHIPPED_MITOSIS_WEIGHTS.is_file() else None

    def _embedded(self) -> Any:
        with _LOAD_LOCK:
            if getattr(self, "_net", None) is None:
                self._net = MitosisNet.load(SHIPPED_MITOSIS_WEIGHTS, "shipped mitosis network", self.settings)
                self.model_description = self._net.describe()
        return self._net

    def _analyze_embedded(self, image: ImageData, args: ToolInput) -> ToolResult:
        assert isinstance(args, MitosisDetectionInput)
        net = self._embedded()
        mpp = net.config.mpp
        if image.mpp is None:
            image.notes.append(f"mitosis_detection: mpp unknown, image taken to be at the detector's {mpp} um/px (40x)")
            image = ImageData(image.pixels, image.name, mpp, image.origin, image.scale, image.notes, image.slide)
        work = working_image(image, mpp)
        area = image.area_mm2
        base = {"backend": "mitosis_net", "area_mm2": round(area, 6) if area is not None else None}
        if not looks_like_he(work.pixels):
            msg = "not H&E (no eosin: IHC or another stain): mitotic figures are counted on H&E only"
            out = MitosisDetectionOutput(**base, in_domain=False, message=msg)
            return ToolResult(output=out, overlay=caption(image.pixels, ["mitoses: not counted (not H&E)"]))
        tissue = tissue_mask(work.pixels, mpp)
        if tissue.mean() < 0.01:
            out = MitosisDetectionOutput(**base, count=0, n_atypical=0, in_domain=True, message="no tissue found",
                                         count_per_mm2=0.0 if area else None, per_10_hpf=0.0 if area else None)
            return ToolResult(output=out, overlay=caption(image.pixels, ["mitoses: no tissue"]))
        warnings = []
        focus = blur_score(work.pixels, tissue)
        if focus is not None and focus < self.blur_threshold:
            warnings.append(f"blurred field (focus score {focus:.0f} < {self.blur_threshold:.0f}): figures may be "
                            "missed or invented; rescan or choose a sharper region")
        figs = net.detect(work.pixels, threshold=args.min_score)
        figs = figs.subset(on_chromatin(work.pixels, figs.xy, mpp, self.min_haematoxylin_od))
        lvl0 = work.to_level0(figs.xy) if len(figs) else np.zeros((0, 2))
        half = self.figure_half_um / (mpp / work.scale) if work.scale else self.figure_half_um / mpp
        figures = [MitosisFigure(x=round(float(x), 2), y=round(float(y), 2), score=round(float(sc), 4),
                                 atypical_probability=round(float(a), 4))
                   for (x, y), sc, a in zip(lvl0, figs.score, figs.atypical)]
        boxes = [(round(f.x - half, 2), round(f.y - half, 2), round(f.x + half, 2), round(f.y + half, 2), f.score)
                 for f in figures]
        count = len(figures)
        field_mm2 = work.shape[0] * work.shape[1] * mpp * mpp / 1e6
        limit = args.max_density_per_mm2
        if limit is not None and count > max(self.implausible_min_count, limit * field_mm2):
            msg = (f"implausible: {count} candidate figures in {field_mm2:.4f} mm^2 ({count / field_mm2:.0f} per mm^2; "
                   f"real tumours stay far below {limit:.0f}): this image is outside the detector's "
                   "domain (stain, scanner or tissue unlike its AMi-Br training slides); count withheld")
            out = MitosisDetectionOutput(**base, in_domain=False, message=msg, warnings=[msg, *warnings])
            return ToolResult(output=out, overlay=caption(image.pixels, ["mitoses: not counted (out of domain)"]))
        n_aty = int((figs.atypical > 0.5).sum()) if count else 0
        per_mm2 = count / area if area else None
        out = MitosisDetectionOutput(
            **base, boxes=boxes, count=count,  # type: ignore[arg-type]
            count_per_mm2=round(per_mm2, 4) if per_mm2 is not None else None,
            per_10_hpf=round(per_mm2 * 10.0 * args.hpf_area_mm2, 4) if per_mm2 is not None else None,
            figures=figures, n_atypical=n_aty, in_domain=True, warnings=warnings,
        )
        return ToolResult(output=out, overlay=_figure_overlay(image, figures, half), features=_figure_features(image, figures))

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
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
        assert isinstance(args, MitosisDetectionInput)
        work = working_image(image, self.working_mpp)
        conf = 0.25 if args.min_score is None else args.min_score
        dets = self._backend.detect(work, conf=conf, overlap=self.tile_overlap_px)
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
        if output.status == "ok" and isinstance(output, MitosisDetectionOutput) and output.in_domain is False:
            return f"{self.name}: not counted: {output.message}"
        if output.status != "ok" or not isinstance(output, MitosisDetectionOutput) or output.count is None:
            return super().summarize(output)
        text = f"{self.name}: {output.count} mitotic figures"
        if output.n_atypical is not None:
            text += f", {output.n_atypical} atypical"
        if output.count_per_mm2 is not None and output.area_mm2 is not None:
            text += (
                f" in {output.area_mm2:.4g} mm^2 ({output.count_per_mm2:.4g}/mm^2, "
                f"{output.per_10_hpf:.4g} per 10 HPF)"
            )
        else:
            text += " (mpp unknown: no per-area figures)"
        if output.warnings:
            text += "; WARNING " + "; ".join(output.warnings)
        return text


#: the project's mitosis detector, shipped with the package (model card tools/weights/MITOSIS_MODEL_CARD.md)
SHIPPED_MITOSIS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "mitosis_net.pt"
_LOAD_LOCK = threading.Lock()
#: overlay colours: typical and atypical figures
_TYPICAL, _ATYPICAL = (255, 40, 200), (255, 140, 0)


def on_chromatin(rgb: np.ndarray, xy: np.ndarray, mpp: float, min_od: float) -> np.ndarray:
    """Which points (x, y) of ``rgb`` lie within 2 um of haematoxylin-stained chromatin (smoothed OD >= ``min_od``):
    a heatmap peak on eosin-only tissue or noise is not a mitotic figure."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    if len(xy) == 0:
        return np.zeros(0, bool)
    h = ndi.gaussian_filter(rgb2hed(np.asarray(rgb)[..., :3])[..., 0], 0.5 / mpp)
    near = ndi.maximum_filter(h, size=int(4.0 / mpp) + 1)
    r = np.clip(np.round(xy[:, 1]).astype(int), 0, h.shape[0] - 1)
    c = np.clip(np.round(xy[:, 0]).astype(int), 0, h.shape[1] - 1)
    return near[r, c] >= min_od


def _figure_overlay(image: ImageData, figures: list[MitosisFigure], half_px: float) -> np.ndarray:
    """Circles around the figures (magenta typical, orange atypical) and a legend with the counts."""
    from PIL import Image, ImageDraw

    arr = np.array(image.pixels, copy=True)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    r = max(4.0, half_px / image.scale)
    width = max(1, int(round(r / 8)))
    for f in figures:
        (x, y), = level0_to_array_points(image, [(f.x, f.y)])
        col = _ATYPICAL if (f.atypical_probability or 0) > 0.5 else _TYPICAL
        draw.ellipse((x - r, y - r, x + r, y + r), outline=col, width=width)
    n_aty = sum((f.atypical_probability or 0) > 0.5 for f in figures)
    return caption(np.asarray(im), [f"mitoses: {len(figures)}", f"magenta typical: {len(figures) - n_aty}",
                                    f"orange atypical: {n_aty}"])


def level0_to_array_points(image: ImageData, xy: list[tuple[float, float]]) -> np.ndarray:
    """Level-0 points -> array coordinates of ``image``."""
    return (np.asarray(xy, dtype=np.float64).reshape(-1, 2) - np.asarray(image.origin)) / image.scale


def _figure_features(image: ImageData, figures: list[MitosisFigure]) -> list[dict[str, Any]]:
    """One GeoJSON point per figure (level 0), classified Mitosis or Atypical mitosis."""
    return [
        point_feature(f.x, f.y, "Atypical mitosis" if (f.atypical_probability or 0) > 0.5 else "Mitosis", None,
                      "detection", {"Score": f.score, "P(atypical)": f.atypical_probability})
        for f in figures
    ]


_MITOSIS = re.compile(r"mitos|mitotic", re.IGNORECASE)
_NOT_MITOSIS = re.compile(r"non[-_ ]?mito|imposter|impostor|mimic|look[-_ ]?alike|hard[-_ ]?neg", re.IGNORECASE)


def mitosis_classes(names: dict[int, str]) -> set[int]:
    """Class ids that count as mitotic figures (see the module docstring)."""
    if len(names) == 1:
        return set(names)
    return {i for i, n in names.items() if _MITOSIS.search(n) and not _NOT_MITOSIS.search(n)}
