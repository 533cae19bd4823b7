"""DAB immunohistochemistry quantification (Ki-67, ER/PR, PD-L1) by colour deconvolution.

Nuclei are found on the haematoxylin and DAB channels of ``skimage.color.rgb2hed`` (pixels clipped to 1..255 so
that black pixels do not explode the optical density): foreground = haematoxylin above its Otsu threshold (computed
on the channel clipped at its 99.5th percentile) OR DAB above ``dab_threshold``; holes filled, opened, split by a
distance-transform h-maxima watershed. Each nucleus is scored by its mean DAB optical density (rgb2hed units):

=========  ========================  ====================
intensity  mean nuclear DAB OD       meaning
=========  ========================  ====================
0          < ``positive_threshold``  negative (default 0.10)
1          0.10 - 0.15               weak (1+)
2          0.15 - 0.22               moderate (2+)
3          >= 0.22                   strong (3+)
=========  ========================  ====================

The 0.15 / 0.22 cut-offs scale with ``positive_threshold`` (1.5x and 2.2x). They were set by eye on the DeepLIIF
Ki-67 images (the darkest, visibly 3+ nuclei measure 0.22-0.34; faint brown ones 0.10-0.15); there is no intensity
ground truth, so H-score and Allred intensity are indicative. Scores:

* ``positivity_index`` = 100 x positive / all nuclei (Ki-67 index; ER/PR percent positive).
* ``h_score`` = 1 x %weak + 2 x %moderate + 3 x %strong (0-300).
* ``allred`` = proportion score (0: none, 1: <1 %, 2: 1-10 %, 3: 11-33 %, 4: 34-66 %, 5: >66 %) + intensity score
  (mean intensity 1-3 of the positive nuclei; 0 when none), 0-8.
* ``tps`` (PD-L1 tumour proportion score) = percent of nuclei with DAB staining. Caveat: PD-L1 is a membrane stain
  and this classical method neither separates tumour from immune cells nor reads membranes; TPS here is the percent
  of cells whose nucleus area carries DAB, an approximation that a pathologist must confirm.

Checked against the DeepLIIF Ki-67 images in ``shared/data/deepliif_ki67`` (see ``tests/test_tools_accuracy.py``).
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult
from pathasst.tools.geojson import label_map_to_features
from pathasst.tools.imaging import ImageData
from pathasst.tools.nuclei_segmentation import (
    MODEL_MPP,
    h_maxima_by_component,
    outline_overlay,
    remove_small_labels,
    sig,
)

__all__ = [
    "Cell",
    "IHCQuantificationInput",
    "IHCQuantificationOutput",
    "IHCQuantificationTool",
    "allred_score",
    "detect_ihc_nuclei",
    "intensity_bins",
]

Mode = Literal["ki67", "er_pr", "pdl1"]
Intensity = Literal[0, 1, 2, 3]
_POS_COLOR = (220, 30, 30)
_NEG_COLOR = (40, 80, 230)


def _hed(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hed

    return rgb2hed(np.clip(np.asarray(rgb)[..., :3], 1, 255).astype(np.uint8))


def detect_ihc_nuclei(
    rgb: np.ndarray, mpp: float = MODEL_MPP, dab_threshold: float = 0.08, min_area_px: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei of a DAB/haematoxylin image: instance labels (int64, 0 = background) and the rgb2hed stack.

    Size parameters are defined at MODEL_MPP (0.25 um/px) and scaled to ``mpp``: smallest nucleus 3.75 um^2,
    smoothing sigma 0.375 um, seed depth 0.25 um.
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk
    from skimage.segmentation import watershed

    k = MODEL_MPP / mpp  # pixels of this image per model pixel
    hed = _hed(rgb)
    hema = gaussian(hed[..., 0], 1.5 * k)
    dab = gaussian(hed[..., 2], 1.5 * k)
    clipped = np.minimum(hema, np.percentile(hema, 99.5))
    mask = dab > dab_threshold
    if float(np.ptp(clipped)) > 1e-3:
        mask |= hema > threshold_otsu(clipped)
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_opening(mask, disk(max(1, int(round(2 * k)))))
    min_area = min_area_px if min_area_px is not None else max(4, int(round(60 * k * k)))
    mask = remove_small_labels(ndi.label(mask)[0], min_area) > 0
    dist = gaussian(ndi.distance_transform_edt(mask), max(0.5, k))
    seeds, _ = ndi.label(h_maxima_by_component(dist, max(0.25, 1.0 * k)) & mask)
    labels = watershed(-dist, seeds, mask=mask)
    rest, _ = ndi.label(mask & (labels == 0))
    labels = np.where(rest > 0, rest + labels.max(), labels)
    return remove_small_labels(labels.astype(np.int64), min_area), hed


def intensity_bins(dab_od: np.ndarray, positive_threshold: float) -> np.ndarray:
    """0 negative, 1 weak, 2 moderate, 3 strong from mean DAB OD (cut-offs 1x, 1.5x, 2.2x ``positive_threshold``)."""
    edges = np.round(np.array([1.0, 1.5, 2.2]) * positive_threshold, 9)
    return np.searchsorted(edges, np.asarray(dab_od, dtype=float), side="right").astype(int)


def allred_score(percent_positive: float, mean_intensity: float) -> int:
    """Allred score (0-8): proportion score (0-5) + intensity score (0-3, rounded mean intensity of positives)."""
    p = percent_positive
    if p <= 0:
        proportion = 0
    elif p < 1:
        proportion = 1
    elif p <= 10:
        proportion = 2
    elif p <= 33:
        proportion = 3
    elif p <= 66:
        proportion = 4
    else:
        proportion = 5
    intensity = int(round(mean_intensity)) if proportion else 0
    return proportion + intensity


class Cell(BaseModel):
    """One detected nucleus."""

    model_config = ConfigDict(extra="forbid")
    x: float = Field(..., description="Centroid x, pixels of the analysed image.")
    y: float = Field(..., description="Centroid y, pixels of the analysed image.")
    positive: bool = Field(..., description="True if the mean DAB optical density is above the positive threshold.")
    intensity: Intensity = Field(..., description="0 negative, 1 weak, 2 moderate, 3 strong.")
    dab_od: float = Field(..., description="Mean DAB optical density of the nucleus (rgb2hed units).")
    area_px: int = Field(..., ge=1, description="Nucleus area in pixels.")
    cell_class: str | None = Field(
        None, description="Cell class named by the deep cell detector (e.g. 'positive tumor cell'); None when classical."
    )
    score: float | None = Field(None, ge=0, le=1, description="Deep cell detector's confidence; None when classical.")


class IHCQuantificationInput(ToolInput):
    """Arguments of ``ihc_quantification``."""

    mode: Mode = Field(
        "ki67", description="Marker: 'ki67' (proliferation index), 'er_pr' (percent + H-score + Allred), 'pdl1' (TPS)."
    )
    positive_threshold: float = Field(
        0.10, gt=0.0, le=2.0, description="Mean nuclear DAB optical density above which a cell is positive."
    )
    min_area_px: int | None = Field(
        None, ge=1, le=100_000, description="Smallest nucleus kept in pixels (default 3.75 um^2)."
    )
    assumed_mpp: float = Field(
        0.25, gt=0.05, le=4.0, description="Microns per pixel assumed when the image's resolution is unknown."
    )


class IHCQuantificationOutput(ToolOutput):
    """Positive / negative cell counts and the marker's scores."""

    mode: Mode = Field(..., description="Marker scored.")
    positive_cells: int = Field(..., ge=0, description="Nuclei with DAB above the threshold.")
    negative_cells: int = Field(..., ge=0, description="Nuclei without DAB.")
    total_cells: int = Field(..., ge=0, description="All nuclei detected.")
    positivity_index: float = Field(..., ge=0, le=100, description="Percent positive nuclei (Ki-67 index, ER/PR %).")
    weak_cells: int = Field(..., ge=0, description="Positive nuclei of weak (1+) intensity.")
    moderate_cells: int = Field(..., ge=0, description="Positive nuclei of moderate (2+) intensity.")
    strong_cells: int = Field(..., ge=0, description="Positive nuclei of strong (3+) intensity.")
    h_score: float | None = Field(None, ge=0, le=300, description="H-score 0-300 (er_pr mode; None otherwise).")
    allred: int | None = Field(None, ge=0, le=8, description="Allred score 0-8 (er_pr mode; None otherwise).")
    tps: float | None = Field(
        None, ge=0, le=100, description="PD-L1 tumour proportion score approximation, % (pdl1 mode; None otherwise)."
    )
    density_per_mm2: float | None = Field(None, description="Nuclei per mm^2; None when mpp unknown.")
    mpp: float = Field(..., description="Microns per pixel used for the size parameters.")
    mpp_assumed: bool = Field(..., description="True when the image had no mpp and assumed_mpp was used.")
    cells: list[Cell] = Field(default_factory=list, description="Every nucleus with its position and class.")
    cell_counts: dict[str, int] | None = Field(
        None,
        description="Deep backend only: detected cells per detector class, scored or not (e.g. lymphocytes and "
        "fibroblasts, which the index leaves out); None when classical.",
    )


class IHCQuantificationTool(PathologyTool):
    """DAB-positive and -negative nuclei by colour deconvolution: Ki-67 index, ER/PR H-score and Allred, PD-L1 TPS."""

    name = "ihc_quantification"
    description = (
        "Count DAB-positive and negative nuclei in an IHC image (Ki-67, ER/PR, PD-L1) by colour deconvolution; "
        "returns the positivity index (%), H-score and Allred (er_pr), TPS (pdl1), and one point per cell."
    )
    version = "0.2.0"
    input_model = IHCQuantificationInput
    output_model = IHCQuantificationOutput
    headline_fields = ("positivity_index", "positive_cells", "negative_cells", "h_score", "tps")
    working_mpp = MODEL_MPP
    segmentation = True
    #: deep backend: a YOLO cell detector with cell classes (pathasst.tools.backends.yolo_cells); empty = classical
    weights_setting = "ihc_weights"

    def _load(self) -> None:
        path = self.weights_path()
        if path is not None:
            from pathasst.tools.backends.yolo_cells import load_cell_detector
            from pathasst.tools.deep import check_weights_file

            check_weights_file(path, "ihc_weights", (".pt",))
            self._cells = load_cell_detector(path, self.settings)

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        if getattr(self, "_cells", None) is not None:
            info["model"] = self._cells.describe()
        return info

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        from scipy import ndimage as ndi
        from skimage.segmentation import relabel_sequential

        if self.weights_path() is not None:  # deep backend
            from pathasst.tools.backends.yolo_cells import analyze_ihc

            self.load()
            return analyze_ihc(self._cells, image, args)
        a = cast(IHCQuantificationInput, args)
        mpp = image.mpp if image.mpp is not None else a.assumed_mpp
        labels, hed = detect_ihc_nuclei(image.pixels, mpp, min_area_px=a.min_area_px)
        labels = relabel_sequential(labels)[0].astype(np.uint32)
        ids = np.arange(1, int(labels.max()) + 1)
        n = int(ids.size)
        if n:
            dab = np.asarray(ndi.mean(hed[..., 2], labels, ids), dtype=float)
            yx = np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids), dtype=float).reshape(-1, 2)
            areas = np.bincount(labels.ravel())[1:]
        else:
            dab, yx, areas = np.zeros(0), np.zeros((0, 2)), np.zeros(0, int)
        bins = intensity_bins(dab, a.positive_threshold)
        pos = bins > 0
        n_pos = int(pos.sum())
        pct = 100.0 * n_pos / n if n else 0.0
        counts = [int((bins == i).sum()) for i in (1, 2, 3)]
        mean_int = float(bins[pos].mean()) if n_pos else 0.0
        h_score = sum((i + 1) * 100.0 * c / n for i, c in enumerate(counts)) if n else 0.0
        cells = [
            Cell(x=sig(x, 6), y=sig(y, 6), positive=bool(p), intensity=int(b), dab_od=sig(d), area_px=int(ar))
            for (y, x), p, b, d, ar in zip(yx, pos, bins, dab, areas)
        ]
        area_mm2 = image.area_mm2
        out = IHCQuantificationOutput(
            mode=a.mode,
            positive_cells=n_pos,
            negative_cells=n - n_pos,
            total_cells=n,
            positivity_index=sig(pct),
            weak_cells=counts[0],
            moderate_cells=counts[1],
            strong_cells=counts[2],
            h_score=sig(h_score) if a.mode == "er_pr" else None,
            allred=allred_score(pct, mean_int) if a.mode == "er_pr" else None,
            tps=sig(pct) if a.mode == "pdl1" else None,
            density_per_mm2=sig(n / area_mm2) if area_mm2 else None,
            mpp=sig(mpp),
            mpp_assumed=image.mpp is None,
            cells=cells,
        )
        names = {int(i): ("Positive" if p else "Negative") for i, p in zip(ids, pos)}
        meas = {int(i): {"DAB OD mean": sig(d), "Intensity": int(b)} for i, d, b in zip(ids, dab, bins)}
        features = label_map_to_features(labels, image, names, measurements=meas)
        colors = {int(i): (_POS_COLOR if p else _NEG_COLOR) for i, p in zip(ids, pos)}
        overlay = outline_overlay(image.pixels, labels, colors)
        return ToolResult(output=out, labels=labels, mask=labels > 0, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        o = cast(IHCQuantificationOutput, output)
        if o.status != "ok":
            return super().summarize(o)
        head = f"{self.name} ({o.mode}): {o.positive_cells} positive / {o.total_cells} nuclei"
        if o.mode == "ki67":
            return f"{head}, ki67 positivity index {o.positivity_index:g}%"
        if o.mode == "er_pr":
            return f"{head}, {o.positivity_index:g}% positive, H-score {o.h_score:g}, Allred {o.allred}"
        return f"{head}, TPS {o.tps:g}% (approximation: nuclear DAB, no tumour/immune separation)"
