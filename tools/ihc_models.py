"""The ``ihc_quantification`` tool's input and output models, and its scores (intensity bins, Allred), shared by the
embedded reading (:mod:`pathasst.tools.ihc_quantification`) and the YOLO cell detector backend
(:mod:`pathasst.tools.backends.yolo_cells`). The scores are described in the tool's module docstring."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pathasst.core.regions import Region
from pathasst.tools.base import ToolInput, ToolOutput

__all__ = [
    "DEFAULT_DAB_FRACTION",
    "MODE_ALIASES",
    "Cell",
    "IHCQuantificationInput",
    "IHCQuantificationOutput",
    "Mode",
    "allred_score",
    "intensity_bins",
]


Mode = Literal["ki67", "er_pr", "pdl1"]
#: how pathologists (and planners) name the markers: spelling -> ``mode`` (case and punctuation are ignored); the
#: planners read them from the input schema (``x-aliases``), so a stain "MIB-1" or a question about "PD-L1 TPS"
#: fills ``mode``
MODE_ALIASES: dict[str, str] = {
    "mib1": "ki67", "mib": "ki67", "ki": "ki67", "proliferation": "ki67", "proliferative": "ki67",
    "proliferating": "ki67",
    "er": "er_pr", "pr": "er_pr", "pgr": "er_pr", "erpr": "er_pr", "estrogen": "er_pr", "oestrogen": "er_pr",
    "progesterone": "er_pr", "hormone": "er_pr", "hormonereceptor": "er_pr", "estrogenreceptor": "er_pr",
    "oestrogenreceptor": "er_pr", "progesteronereceptor": "er_pr",
    "pdl": "pdl1", "pd1": "pdl1", "tps": "pdl1", "cps": "pdl1", "22c3": "pdl1", "sp263": "pdl1",
}


#: normalised DAB fraction above which a nucleus is positive: the grid value (0.30-0.70) with the smallest mean index
#: error over the four DeepLIIF Ki-67 images read by the 20x network (0.67 points; leave-one-image-out: README)
DEFAULT_DAB_FRACTION = 0.35


Intensity = Literal[0, 1, 2, 3]


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
    dab_fraction: float | None = Field(
        None, ge=0, le=1, description="Normalised DAB fraction of the nucleus (embedded backend; positive above the "
        "threshold); None from the YOLO backend."
    )
    area_px: int = Field(..., ge=1, description="Nucleus area in pixels.")
    cell_class: str | None = Field(
        None, description="Cell class named by the deep cell detector (e.g. 'positive tumor cell'); None when classical."
    )
    score: float | None = Field(None, ge=0, le=1, description="Deep cell detector's confidence; None when classical.")


class IHCQuantificationInput(ToolInput):
    """Arguments of ``ihc_quantification``."""

    mode: Mode = Field(
        "ki67", description="Marker: 'ki67' (proliferation index), 'er_pr' (percent + H-score + Allred), 'pdl1' (TPS).",
        json_schema_extra={"x-aliases": MODE_ALIASES},
    )
    positive_threshold: float = Field(
        0.10, gt=0.0, le=2.0, description="Mean nuclear DAB optical density of the weak (1+) bin; moderate and strong "
        "start at 1.5x and 2.2x (intensity for H-score and Allred; the YOLO backend's positivity cut-off)."
    )
    dab_fraction_threshold: float = Field(
        DEFAULT_DAB_FRACTION, gt=0.0, lt=1.0, description="Normalised DAB fraction of a nucleus above which it is "
        "positive (stain-strength independent; default chosen leave-one-image-out on DeepLIIF Ki-67)."
    )
    min_area_px: int | None = Field(
        None, ge=1, le=100_000, description="Smallest nucleus kept in pixels (default 3.75 um^2)."
    )
    assumed_mpp: float = Field(
        0.25, gt=0.05, le=4.0, description="Microns per pixel assumed when the image's resolution is unknown."
    )
    hotspot_nuclei: int = Field(
        500, ge=20, le=5000, description="Nuclei per hot-spot field: the hot spot is the highest index over the "
        "neighbourhoods of this many nuclei (clinical practice: 500); none when the image holds fewer."
    )


class IHCQuantificationOutput(ToolOutput):
    """Positive / negative cell counts and the marker's scores."""

    mode: Mode = Field(..., description="Marker scored.")
    positive_cells: int = Field(..., ge=0, description="Nuclei with DAB above the threshold.")
    negative_cells: int = Field(..., ge=0, description="Nuclei without DAB.")
    total_cells: int = Field(..., ge=0, description="All nuclei detected.")
    positivity_index: float | None = Field(
        ..., ge=0, le=100, description="Percent positive nuclei (Ki-67 index, ER/PR %); None when withheld (warnings)."
    )
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
    hotspot_index: float | None = Field(
        None, ge=0, le=100, description="Highest positivity index (%) over neighbourhoods of hotspot_nuclei nuclei; "
        "None when fewer nuclei were found or the index is withheld."
    )
    hotspot_region: Region | None = Field(None, description="Bounding box of the hot-spot nuclei, level-0 pixels.")
    in_domain: bool | None = Field(
        None, description="False when the image is not a DAB immunostain the index can be read on (H&E, no DAB, DAB "
        "everywhere, DAB outside nuclei in a nuclear mode); then positivity_index is None. None: deep backend."
    )
    warnings: list[str] = Field(default_factory=list, description="Why the reading may be unreliable or was withheld.")
    dab_outside_nuclei: float | None = Field(
        None, ge=0, le=1, description="Share of the DAB-dominant pixels away from every nucleus (nuclear markers: "
        "small; membrane / cytoplasm stains: large)."
    )
    cell_counts: dict[str, int] | None = Field(
        None,
        description="Deep backend only: detected cells per detector class, scored or not (e.g. lymphocytes and "
        "fibroblasts, which the index leaves out); None when classical.",
    )
