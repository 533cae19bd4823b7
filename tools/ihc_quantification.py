"""DAB immunohistochemistry quantification (Ki-67, ER/PR, PD-L1) on the embedded default.

Nuclei come from ``nuclei_segmentation`` itself: on a DAB immunostain its network reads the image's normalised
nuclear stain (:mod:`pathasst.tools.ihc_nuclei`), so both tools report the same nuclei and the counterstain's or
the DAB's strength does not change them. A nucleus is **positive** when its normalised DAB fraction exceeds
``dab_fraction_threshold`` (default 0.35, the best mean index error over the four DeepLIIF Ki-67 images; figures leave-one-image-out: README). Positive
nuclei get an intensity bin from their mean DAB optical density (rgb2hed units):

=========  ========================  ====================
intensity  mean nuclear DAB OD       meaning
=========  ========================  ====================
1          < 1.5 x ``positive_threshold`` (0.15)   weak (1+)
2          up to 2.2 x (0.22)        moderate (2+)
3          >= 0.22                   strong (3+)
=========  ========================  ====================

There is no intensity ground truth here, so H-score and Allred intensity are indicative. Scores:

* ``positivity_index`` = 100 x positive / all nuclei (Ki-67 index; ER/PR percent positive).
* ``h_score`` = 1 x %weak + 2 x %moderate + 3 x %strong (0-300).
* ``allred`` = proportion score (0: none, 1: <1 %, 2: 1-10 %, 3: 11-33 %, 4: 34-66 %, 5: >66 %) + intensity score
  (mean intensity 1-3 of the positive nuclei; 0 when none), 0-8.
* ``tps`` (PD-L1 tumour proportion score) = percent of nuclei with DAB staining. Caveat: PD-L1 is a membrane stain
  and this method neither separates tumour from immune cells nor reads membranes; TPS here is an approximation that
  a pathologist must confirm.

The index is withheld (``positivity_index`` None, ``in_domain`` False, a typed warning) on an H&E image, an image
without DAB, an image mostly DAB, no nuclei, and, for the nuclear markers (ki67, er_pr), DAB lying mainly outside
nuclei (membranous or cytoplasmic). Evaluation: :mod:`pathasst.tools.evaluate_ihc`.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from pathasst.core.errors import ToolExecutionError
from pathasst.core.imaging import ImageData, looks_like_he
from pathasst.core.regions import Region
from pathasst.core.weights import check_weights_file
from pathasst.tools.backends.render import caption, outline_overlay
from pathasst.tools.backends.yolo_cells import analyze_ihc, load_cell_detector
from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult, sig
from pathasst.tools.geojson import label_map_to_features, polygon_feature
from pathasst.tools.ihc_models import (
    Cell,
    IHCQuantificationInput,
    IHCQuantificationOutput,
    allred_score,
    intensity_bins,
)
from pathasst.tools.ihc_nuclei import (
    dab_fraction,
    dab_outside_nuclei,
    dab_sheet_share,
    has_dab,
    hot_spot,
    index_heatmap,
    stain_maps,
)
from pathasst.tools.nuclei_classical import MODEL_MPP
from pathasst.tools.nuclei_segmentation import NucleiSegmentationInput, NucleiSegmentationTool
from pathasst.tools.planning import PlanExample, PlanningHints

__all__ = [
    "Cell",
    "IHCQuantificationInput",
    "IHCQuantificationOutput",
    "IHCQuantificationTool",
    "allred_score",
    "intensity_bins",
]

#: above this many pixels at the working resolution (2048^2), the stain pattern is checked on a sample first
LARGE_IMAGE_PX = 2048 * 2048
#: sample windows (pixels at the working resolution) read before counting a large image
SAMPLE_WINDOWS, SAMPLE_WINDOW_PX = 4, 512
#: smallest image side (pixels at the working 0.25 um/px) the nuclei network reads
MIN_SIDE_PX = 32
#: above this median DAB optical density the whole image is brown (DeepLIIF Ki-67: 0.012-0.018; demo sample 0.054)
MAX_DAB_BACKGROUND = 0.1
#: above this share of the image DAB-dominant, the image is over-stained or background (DeepLIIF Ki-67: <= 0.1)
MAX_DAB_COVER = 0.6
#: in a nuclear mode (ki67, er_pr): DAB away from nuclei above this share of the DAB and this cover of the image
#: reads as a membranous or cytoplasmic stain (DeepLIIF Ki-67: <= 0.15 and <= 0.03; scikit-image sample 0.34, 0.10)
MEMBRANOUS_SHARE = 0.25
MEMBRANOUS_COVER = 0.05
#: ... or above this share of the DAB in sheets larger than nuclei (:func:`dab_sheet_share`; DeepLIIF Ki-67: 0 under
#: the stain sweep; scikit-image sample >= 0.18), whatever the detector took for nuclei
MEMBRANOUS_SHEET = 0.1
_POS_COLOR = (220, 30, 30)
_NEG_COLOR = (40, 80, 230)


class IHCQuantificationTool(PathologyTool):
    """DAB-positive and -negative nuclei (the nuclei network on the normalised nuclear stain): Ki-67 index, ER/PR
    H-score and Allred, PD-L1 TPS."""

    name = "ihc_quantification"
    planning = PlanningHints(
        order=30, examples=(PlanExample(question="What fraction of tumour cells are Ki-67 positive?", stain="Ki-67", image="patch"),)
    )
    description = (
        "Count DAB-positive and negative nuclei in an IHC image (Ki-67, ER/PR, PD-L1); returns the positivity index "
        "(%), H-score and Allred (er_pr), TPS (pdl1), and one point per cell; withholds the index with a warning on "
        "H&E, no DAB, or membranous DAB in a nuclear mode."
    )
    version = "0.4.0"
    input_model = IHCQuantificationInput
    output_model = IHCQuantificationOutput
    headline_fields = ("positivity_index", "hotspot_index", "positive_cells", "negative_cells", "h_score", "tps")
    working_mpp = MODEL_MPP
    segmentation = True
    #: deep backend: a YOLO cell detector with cell classes (pathasst.tools.backends.yolo_cells); empty = classical
    weights_setting = "ihc_weights"

    def _load(self) -> None:
        path = self.weights_path()
        if path is not None:
            check_weights_file(path, "ihc_weights", (".pt",))
            self._cells = load_cell_detector(path, self.settings)

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        if getattr(self, "_cells", None) is not None:
            info["model"] = self._cells.describe()
        return info

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        from scipy import ndimage as ndi

        if self.weights_path() is not None:  # deep backend
            self.load()
            return analyze_ihc(self._cells, image, args)
        a = cast(IHCQuantificationInput, args)
        mpp = image.mpp if image.mpp is not None else a.assumed_mpp
        side = min(image.shape) * mpp / MODEL_MPP
        if side < MIN_SIDE_PX:
            raise ToolExecutionError(f"image is {image.shape[1]}x{image.shape[0]} px at {mpp:g} um/px; nuclei are read "
                                     f"at {MODEL_MPP} um/px and need at least {MIN_SIDE_PX} px on each side there")
        maps = stain_maps(image.pixels)
        labels, sampled = self._sampled_if_withheld(image, mpp, a, maps)
        if labels is None:
            labels = self._nuclei(image, mpp, a)
        ids = np.arange(1, int(labels.max()) + 1)
        n = int(ids.size)
        if n:
            dab = np.asarray(ndi.mean(maps.d, labels, ids), dtype=float)
            frac = dab_fraction(labels, maps)
            yx = np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids), dtype=float).reshape(-1, 2)
            areas = np.bincount(labels.ravel())[1:]
        else:
            dab, frac, yx, areas = np.zeros(0), np.zeros(0), np.zeros((0, 2)), np.zeros(0, int)
        pos = frac > a.dab_fraction_threshold
        bins = np.where(pos, np.maximum(intensity_bins(dab, a.positive_threshold), 1), 0)
        share, cover = sampled if sampled is not None else dab_outside_nuclei(labels, maps)
        warnings = self._warnings(image.pixels, maps, a.mode, n, share, cover, mpp)
        if sampled is not None:
            warnings.append(f"large image with the index withheld: nuclei counted on {SAMPLE_WINDOWS} sample windows "
                            f"of {SAMPLE_WINDOW_PX * MODEL_MPP:g} um only")
        n_pos = int(pos.sum())
        pct = 100.0 * n_pos / n if n else 0.0
        counts = [int((bins == i).sum()) for i in (1, 2, 3)]
        mean_int = float(bins[pos].mean()) if n_pos else 0.0
        h_score = sum((i + 1) * 100.0 * c / n for i, c in enumerate(counts)) if n else 0.0
        ok = not warnings
        spot = hot_spot(yx[:, ::-1], pos, a.hotspot_nuclei) if ok else None
        region = None
        if spot is not None:
            (x0, y0), (x1, y1) = image.to_level0(np.array([spot.box[:2], spot.box[2:]], float))
            region = Region(x=max(0, int(x0)), y=max(0, int(y0)), width=max(1, int(round(x1 - x0))),
                            height=max(1, int(round(y1 - y0))))
        cells = [
            Cell(x=sig(x, 6), y=sig(y, 6), positive=bool(p), intensity=int(b), dab_od=sig(d), area_px=int(ar),
                 dab_fraction=sig(f))
            for (y, x), p, b, d, ar, f in zip(yx, pos, bins, dab, areas, frac)
        ]
        area_mm2 = image.area_mm2
        out = IHCQuantificationOutput(
            mode=a.mode,
            positive_cells=n_pos,
            negative_cells=n - n_pos,
            total_cells=n,
            positivity_index=sig(pct) if ok else None,
            weak_cells=counts[0],
            moderate_cells=counts[1],
            strong_cells=counts[2],
            h_score=sig(h_score) if a.mode == "er_pr" and ok else None,
            allred=allred_score(pct, mean_int) if a.mode == "er_pr" and ok else None,
            tps=sig(pct) if a.mode == "pdl1" and ok else None,
            density_per_mm2=sig(n / area_mm2) if area_mm2 else None,
            mpp=sig(mpp),
            mpp_assumed=image.mpp is None,
            cells=cells,
            in_domain=ok,
            warnings=warnings,
            dab_outside_nuclei=sig(share),
            hotspot_index=sig(spot.index) if spot is not None else None,
            hotspot_region=region,
        )
        names = {int(i): ("Positive" if p else "Negative") for i, p in zip(ids, pos)}
        meas = {int(i): {"DAB OD mean": sig(d), "DAB fraction": sig(f), "Intensity": int(b)}
                for i, d, f, b in zip(ids, dab, frac, bins)}
        features = label_map_to_features(labels, image, names, measurements=meas)
        colors = {int(i): (_POS_COLOR if p else _NEG_COLOR) for i, p in zip(ids, pos)}
        overlay = outline_overlay(image.pixels, labels, colors)
        legend = [f"positive {n_pos} (red)", f"negative {n - n_pos} (blue)"]
        legend.append(f"index {pct:.1f} %" if ok else "index withheld: " + warnings[0].split(":")[0])
        if spot is not None:
            overlay = _hot_spot_overlay(overlay, yx[:, ::-1], pos, spot, a.hotspot_nuclei)
            legend.append(f"hot spot {spot.index:.1f} % ({spot.k} nuclei, yellow box)")
            box = spot.box
            ring = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]], [box[0], box[1]]])
            features.append(polygon_feature([ring], image, "Hot spot", object_type="annotation",
                                            measurements={"Positivity index %": sig(spot.index), "Nuclei": spot.k}))
        overlay = caption(overlay, legend)
        return ToolResult(output=out, labels=labels, mask=labels > 0, overlay=overlay, features=features)

    def _nuclei(self, image: ImageData, mpp: float, a: IHCQuantificationInput) -> np.ndarray:
        """Nuclei of the image exactly as ``nuclei_segmentation`` finds them (one detector for both tools)."""
        from skimage.segmentation import relabel_sequential


        if getattr(self, "_nuclei_tool", None) is None:
            self._nuclei_tool = NucleiSegmentationTool(self.settings)
        work = image if image.mpp is not None else ImageData(image.pixels, image.name, mpp, image.origin, image.scale,
                                                             image.notes, image.slide)
        res = self._nuclei_tool.analyze(work, NucleiSegmentationInput(image=image.name, min_area_px=a.min_area_px))
        return relabel_sequential(np.asarray(res.labels))[0].astype(np.uint32)

    def _sampled_if_withheld(self, image: ImageData, mpp: float, a: IHCQuantificationInput, maps: Any
                             ) -> tuple[np.ndarray | None, tuple[float, float] | None]:
        """On a large image (> LARGE_IMAGE_PX at the working resolution), the stain pattern is first read on the
        SAMPLE_WINDOWS most stained windows: when the index would be withheld anyway (H&E, no DAB, DAB everywhere,
        membranous DAB in a nuclear mode), their nuclei (the rest of the label map 0) and their pooled
        (outside share, cover) are returned, and the whole image is not counted. Otherwise (None, None)."""
        k = mpp / MODEL_MPP
        h, w = image.shape
        win = int(round(SAMPLE_WINDOW_PX / k))
        if h * w * k * k <= LARGE_IMAGE_PX or min(h, w) < win:
            return None, None
        nuc = maps.nuclear
        grid = [(y, x) for y in range(0, h - win + 1, win) for x in range(0, w - win + 1, win)]
        picks = sorted(grid, key=lambda yx: -float(nuc[yx[0] : yx[0] + win, yx[1] : yx[1] + win].mean()))
        labels = np.zeros((h, w), np.uint32)
        outside = dab = 0.0
        for y, x in picks[:SAMPLE_WINDOWS]:
            origin = tuple(image.to_level0(np.array([[x, y]], float))[0])
            sub = ImageData(np.ascontiguousarray(image.pixels[y : y + win, x : x + win]), image.name, mpp, origin,
                            image.scale, image.notes)
            lab = self._nuclei(sub, mpp, a)
            sub_maps = stain_maps(sub.pixels)
            share, cover = dab_outside_nuclei(lab, sub_maps)
            outside, dab = outside + cover * lab.size, dab + (cover / share if share > 0 else 0.0) * lab.size
            labels[y : y + win, x : x + win] = np.where(lab > 0, lab + labels.max(), 0)
        n_px = SAMPLE_WINDOWS * win * win
        pooled = (outside / dab if dab > 0 else 0.0, outside / n_px)
        n = int(labels.max())
        if not self._warnings(image.pixels, maps, a.mode, n, *pooled, mpp):
            return None, None
        return labels, pooled

    @staticmethod
    def _warnings(rgb: np.ndarray, maps: Any, mode: str, n: int, share: float, cover: float, mpp: float) -> list[str]:
        """Why no index can be read on this image (empty: it can)."""

        stained = -np.log(np.maximum(np.asarray(rgb)[..., :3].astype(np.float32), 1.0) / 255.0).sum(-1) > 0.3
        if int(stained.sum()) < 100:
            return ["no stained tissue found (blank image): no index read"]
        if looks_like_he(rgb):
            return ["looks like H&E (eosin present), not a DAB immunostain: no index read"]
        if maps.d_background > MAX_DAB_BACKGROUND:
            return [f"DAB covers the whole image (median DAB optical density {maps.d_background:.2f}): over-staining "
                    "or not a DAB immunostain, index withheld"]
        if not has_dab(maps):
            return ["no DAB staining found: index withheld (a true 0 % needs the control slide checked)"]
        dab_cover = float(maps.dab_dominant().mean())
        if dab_cover > MAX_DAB_COVER:
            return [f"DAB covers {100 * dab_cover:.0f} % of the image: over-staining or background, index withheld"]
        if n == 0:
            return ["no nuclei found: index withheld"]
        if mode not in ("ki67", "er_pr"):
            return []
        marker = "Ki-67" if mode == "ki67" else "ER/PR"
        if share > MEMBRANOUS_SHARE and cover > MEMBRANOUS_COVER:
            return [f"DAB lies mainly outside nuclei ({100 * share:.0f} % of it, membranous or cytoplasmic): "
                    f"{marker} is a nuclear stain, index withheld"]
        if (sheet := dab_sheet_share(maps, mpp)) > MEMBRANOUS_SHEET:
            return [f"DAB forms sheets larger than nuclei ({100 * sheet:.0f} % of it, membranous or cytoplasmic): "
                    f"{marker} is a nuclear stain, index withheld"]
        return []

    def summarize(self, output: ToolOutput) -> str:
        o = cast(IHCQuantificationOutput, output)
        if o.status != "ok":
            return super().summarize(o)
        head = f"{self.name} ({o.mode}): {o.positive_cells} positive / {o.total_cells} nuclei"
        if o.positivity_index is None:
            return f"{head}; WARNING {'; '.join(o.warnings) or 'index withheld'}"
        spot = f", hot spot {o.hotspot_index:g}%" if o.hotspot_index is not None else ""
        if o.mode == "ki67":
            return f"{head}, ki67 positivity index {o.positivity_index:g}%{spot}"
        if o.mode == "er_pr":
            return f"{head}, {o.positivity_index:g}% positive{spot}, H-score {o.h_score:g}, Allred {o.allred}"
        return f"{head}, TPS {o.tps:g}% (approximation: nuclear DAB, no tumour/immune separation)"


def _hot_spot_overlay(overlay: np.ndarray, xy: np.ndarray, positive: np.ndarray, spot: Any, k: int) -> np.ndarray:
    """The overlay with the index heat map (transparent blue 0 % to red at the hot spot's index) and the hot-spot
    box in yellow."""
    heat = index_heatmap(xy, positive, overlay.shape[:2], k) / max(spot.index, 1e-6)
    colour = np.stack([255 * heat, np.zeros_like(heat), 255 * (1 - heat)], -1).clip(0, 255)
    out = (0.7 * overlay + 0.3 * colour).astype(np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in spot.box)
    t = max(2, min(out.shape[:2]) // 200)
    out[y0 : y0 + t, x0:x1] = out[max(y0, y1 - t) : y1, x0:x1] = (255, 230, 0)
    out[y0:y1, x0 : x0 + t] = out[y0:y1, max(x0, x1 - t) : x1] = (255, 230, 0)
    return out
