"""Deep backend of ``ihc_quantification``: a YOLO cell detector with cell classes (PathAsst's PD-L1 model style).

Weights (``PATHASST_IHC_WEIGHTS``): an ultralytics detection checkpoint ``.pt`` (see :mod:`.yolo`) whose classes are
cell types, e.g. ``positive tumor cell``, ``negative tumor cell``, ``lymphocyte``, ``fibroblast``. Scored cells:

* a class is **positive** when its name contains "positive" (and not "negative"), **negative** when it contains
  "negative"; every other class (lymphocytes, fibroblasts, macrophages ...) is counted in ``cell_counts`` but left out
  of the index, so ``positivity_index`` / ``tps`` = positive / (positive + negative) scored cells, as the PD-L1 tumour
  proportion score asks;
* an optional sidecar ``NAME.json`` next to the weights overrides this: ``{"positive_classes": [...],
  "negative_classes": [...], "mpp": 0.25, "min_score": 0.25}`` (class names as in the model; ``mpp`` = the
  resolution the detector was trained at, default 0.25 um/px: images of known, different resolution are resampled to
  it; ``min_score`` = the confidence below which detections are dropped, default 0.25).

Intensity of a scored cell (for H-score / Allred) is the mean DAB optical density (``rgb2hed``) inside the ellipse
inscribed in its box, binned as the classical backend does; a cell the detector calls positive is at least weak (1+).
The instance label map holds those ellipses (a box detector gives no outline). Large images are tiled at the
detector's image size with 64 px overlap and merged across tiles in level-0 coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData
from pathasst.core.settings import Settings
from pathasst.core.weights import describe_setting, read_sidecar, sidecar_number
from pathasst.tools.backends.render import level0_to_array, outline_overlay
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.yolo import YoloBackend
from pathasst.tools.base import ToolInput, ToolResult, sig
from pathasst.tools.geojson import label_map_to_features
from pathasst.tools.ihc_models import (
    Cell,
    IHCQuantificationInput,
    IHCQuantificationOutput,
    allred_score,
    intensity_bins,
)

__all__ = ["CellDetector", "analyze_ihc", "load_cell_detector"]

SETTING = "ihc_weights"
DEFAULT_MPP = 0.25
TILE_OVERLAP_PX = 64


@dataclass
class CellDetector:
    """A loaded YOLO cell detector and which of its classes are scored positive / negative."""

    yolo: YoloBackend
    positive: set[int]
    negative: set[int]
    mpp: float
    min_score: float = 0.25

    def describe(self) -> str:
        pos = sorted(self.yolo.names[i] for i in self.positive)
        neg = sorted(self.yolo.names[i] for i in self.negative)
        return f"{self.yolo.describe()}; positive {pos}, negative {neg}; {self.mpp} um/px, min score {self.min_score}"


def _by_name(names: dict[int, str], wanted: list[Any], where: str, key: str) -> set[int]:
    lookup = {v.lower(): k for k, v in names.items()}
    out = set()
    for n in wanted:
        if not isinstance(n, str) or n.lower() not in lookup:
            raise WeightsError(f"sidecar of {where}: {key} names {n!r}, not a class of the model ({sorted(names.values())})")
        out.add(lookup[n.lower()])
    return out


def load_cell_detector(path: Path, settings: Settings) -> CellDetector:
    """Load and check the detector of ``PATHASST_IHC_WEIGHTS`` (the file was checked by the caller)."""
    where = describe_setting(SETTING, path)
    yolo = YoloBackend.load(path, SETTING, settings, tasks=("detect", "segment"))
    names = yolo.names
    positive = {i for i, n in names.items() if "positive" in n.lower() and "negative" not in n.lower()}
    negative = {i for i, n in names.items() if "negative" in n.lower()}
    cfg = read_sidecar(path, where)
    if "positive_classes" in cfg:
        positive = _by_name(names, list(cfg["positive_classes"]), where, "positive_classes")
    if "negative_classes" in cfg:
        negative = _by_name(names, list(cfg["negative_classes"]), where, "negative_classes")
    mpp = sidecar_number(cfg, "mpp", DEFAULT_MPP, 0.05, 8, where)
    min_score = sidecar_number(cfg, "min_score", 0.25, 0.0, 1.0, where)
    if not positive or not negative or positive & negative:
        raise WeightsError(
            f"{where}: cannot tell positive from negative cells among the classes {sorted(names.values())}; name them "
            "'... positive ...' / '... negative ...' or list them in a sidecar JSON (positive_classes, negative_classes)"
        )
    return CellDetector(yolo=yolo, positive=positive, negative=negative, mpp=mpp, min_score=min_score)


def _ellipse_labels(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """Instance labels 1..N: the ellipse inscribed in each box (later boxes drawn over earlier ones)."""
    from skimage.draw import ellipse

    labels = np.zeros(shape, np.uint32)
    for k, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        cy, cx = (y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5
        ry, rx = max((y1 - y0) / 2, 0.75), max((x1 - x0) / 2, 0.75)
        rr, cc = ellipse(cy, cx, ry, rx, shape=shape)
        if len(rr) == 0:  # a box smaller than a pixel: mark its centre pixel
            rr = np.array([int(np.clip(round(cy), 0, shape[0] - 1))])
            cc = np.array([int(np.clip(round(cx), 0, shape[1] - 1))])
        labels[rr, cc] = k
    return labels


def analyze_ihc(detector: CellDetector, image: ImageData, args: ToolInput) -> ToolResult:
    """Detect and classify cells; build the ``ihc_quantification`` output (see the module docstring)."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    assert isinstance(args, IHCQuantificationInput)
    work = working_image(image, detector.mpp)
    dets = detector.yolo.detect(work, conf=detector.min_score, overlap=TILE_OVERLAP_PX)
    names = detector.yolo.names
    boxes = level0_to_array(image, dets.boxes_level0)
    h, w = image.shape
    boxes = np.clip(boxes, 0, [w, h, w, h])
    classes = dets.classes
    scored = np.isin(classes, sorted(detector.positive | detector.negative))
    labels = _ellipse_labels(image.shape, boxes)
    ids = np.arange(1, len(boxes) + 1)
    hed = rgb2hed(np.clip(image.pixels, 1, 255).astype(np.uint8))
    present = np.bincount(labels.ravel(), minlength=len(boxes) + 1)[1:] > 0
    dab = np.zeros(len(boxes))
    areas = np.bincount(labels.ravel(), minlength=len(boxes) + 1)[1:]
    if len(boxes) and present.any():
        dab[present] = np.asarray(ndi.mean(hed[..., 2], labels, ids[present]), dtype=float)
    is_pos = np.isin(classes, sorted(detector.positive))
    bins = np.where(is_pos, np.maximum(intensity_bins(dab, args.positive_threshold), 1), 0)
    n_pos, n_neg = int((is_pos & scored).sum()), int((~is_pos & scored).sum())
    n = n_pos + n_neg
    pct = 100.0 * n_pos / n if n else 0.0
    counts = [int(((bins == i) & scored).sum()) for i in (1, 2, 3)]
    mean_int = float(bins[is_pos].mean()) if n_pos else 0.0
    h_score = sum((i + 1) * 100.0 * c / n for i, c in enumerate(counts)) if n else 0.0
    cell_counts: dict[str, int] = {}
    for c in classes:
        cell_counts[names[int(c)]] = cell_counts.get(names[int(c)], 0) + 1
    cells = [
        Cell(
            x=sig((b[0] + b[2]) / 2, 6),
            y=sig((b[1] + b[3]) / 2, 6),
            positive=bool(p),
            intensity=int(bi),
            dab_od=sig(d),
            area_px=max(1, int(a)),
            cell_class=names[int(c)],
            score=round(float(sc), 4),
        )
        for b, p, bi, d, a, c, sc, s in zip(boxes, is_pos, bins, dab, areas, classes, dets.scores, scored)
        if s
    ]
    area_mm2 = image.area_mm2
    mpp_used = image.mpp if image.mpp is not None else detector.mpp
    out = IHCQuantificationOutput(
        backend="yolo",
        mode=args.mode,
        positive_cells=n_pos,
        negative_cells=n_neg,
        total_cells=n,
        positivity_index=sig(pct),
        weak_cells=counts[0],
        moderate_cells=counts[1],
        strong_cells=counts[2],
        h_score=sig(h_score) if args.mode == "er_pr" else None,
        allred=allred_score(pct, mean_int) if args.mode == "er_pr" else None,
        tps=sig(pct) if args.mode == "pdl1" else None,
        density_per_mm2=sig(n / area_mm2) if area_mm2 else None,
        mpp=sig(mpp_used),
        mpp_assumed=image.mpp is None,
        cells=cells,
        cell_counts=cell_counts,
    )
    geo_names = {
        int(i): ("Positive" if p else "Negative") if s else names[int(c)].capitalize()
        for i, p, s, c in zip(ids, is_pos, scored, classes)
    }
    meas = {
        int(i): {"DAB OD mean": sig(d), "Intensity": int(b), "Score": round(float(sc), 4)}
        for i, d, b, sc in zip(ids, dab, bins, dets.scores)
    }
    features = label_map_to_features(labels, image, geo_names, object_type="cell", measurements=meas)
    colors = {int(i): ((220, 30, 30) if p else (40, 80, 230)) if s else (240, 200, 0) for i, p, s in zip(ids, is_pos, scored)}
    overlay = outline_overlay(image.pixels, labels, colors)
    return ToolResult(output=out, labels=labels, mask=labels > 0, overlay=overlay, features=features)
