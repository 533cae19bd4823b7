"""Whole-slide classification: attention MIL (ABMIL) over tile embeddings, with an attention heatmap.

Embedded backend (``PATHASST_SLIDE_MIL_WEIGHTS`` unset): the shipped head ``tools/weights/slide_abmil.pt`` (model card
``tools/weights/SLIDE_MODEL_CARD.md``), trained on the UCSB breast TMA set (benign / malignant) over the weight-free
``hed-texture-v1`` descriptor of each tile (stain, texture, nuclear size and shape; it beat the tissue network's
features in the cross-validation, see the model card), a seed ensemble of ABMIL heads whose probabilities and
attention are averaged (a single head loads too). Configured: the ABMIL head in ``PATHASST_SLIDE_MIL_WEIGHTS``
(format and config in :mod:`pathasst.tools.backends.abmil`) over the embedder it names: PathCLIP
(``PATHASST_PATHCLIP_WEIGHTS``, else 'not configured'), the tissue network or hed-texture. Tiles: ``tile_size`` px squares at the head's
``tile_mpp`` holding at least ``min_tissue`` tissue, at most ``MAX_TILES`` (spread evenly; a note says so).

Where the tiles come from:

* when the analysed image carries its whole slide (an ``image.slide`` attribute with ``mpp``, ``tissue_tiles`` and
  ``read_region``, as :class:`pathasst.core.readers.SlideReader` has), every tissue tile of the slide (or of the
  requested region) is read at ``tile_mpp``: the whole-slide path;
* otherwise the tiles are cut from the analysed pixels, resampled to ``tile_mpp`` when their mpp is known (for a
  slide the resolver reads at 0.5 um/px; a slide larger than its pixel budget is then analysed in its
  most-tissue window, and the trace notes it).

The attention heatmap (each tile's attention relative to the highest) is drawn over the analysed image, and every
tile goes to the GeoJSON as a ``tile`` object with its attention as a measurement (QuPath can colour by it).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field

from pathasst.core.descriptor import HEDTextureEmbedder
from pathasst.core.errors import ToolExecutionError, WeightsError
from pathasst.core.imaging import ImageData, looks_like_he
from pathasst.core.regions import Region
from pathasst.core.weights import WeightsFormat, settings_env_var
from pathasst.tools.backends.abmil import ABMILHead
from pathasst.tools.backends.pathclip import pathclip_embedder
from pathasst.tools.backends.render import heatmap_overlay, level0_to_array
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.tissue_tiles import TissueNetEmbedder, shipped_tissue_net
from pathasst.tools.base import ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool
from pathasst.tools.geojson import polygon_feature
from pathasst.tools.planning import PlanExample, PlanningHints
from pathasst.tools.tissue_qc import tissue_mask

__all__ = ["MAX_TILES", "SHIPPED_SLIDE_WEIGHTS", "SlideClassificationInput", "SlideClassificationOutput",
           "SlideClassificationTool", "pixel_tiles"]

#: most tiles one call embeds
MAX_TILES = 2000
#: tiles embedded per batch
_BATCH = 32


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
    in_domain: bool | None = Field(
        None, description="Embedded head: False when the image is not H&E (the head was trained on H&E only)."
    )
    domain_warning: str | None = Field(None, description="Why the image is out of the head's domain, in plain words.")


class SlideClassificationTool(DeepTool):
    name: ClassVar[str] = "slide_classification"
    planning: ClassVar[PlanningHints] = PlanningHints(
        order=70, examples=(PlanExample(question="What is the overall diagnosis of this slide?", stain="H&E", image="wsi"),)
    )
    description: ClassVar[str] = (
        "Predicts a whole-slide or whole-image label by attention-based multi-instance learning (ABMIL) over the "
        "embeddings of its tissue tiles: by default benign vs malignant breast tissue (trained on breast tissue "
        "microarray cores); a configured head (PATHASST_SLIDE_MIL_WEIGHTS) predicts its own labels. Returns the "
        "label, its probability, the per-class probabilities and the most attended tiles (an attention heatmap "
        "goes to the case view). Use for slide- or core-level diagnosis questions ('is this benign or "
        "malignant?') and to pick regions for closer measurement; for the tissue type of a patch use "
        "tissue_classification."
    )
    version: ClassVar[str] = "0.4.0"
    input_model: ClassVar[type[ToolInput]] = SlideClassificationInput
    headline_fields: ClassVar[tuple[str, ...]] = ("label", "probability", "n_tiles", "domain_warning")
    output_model: ClassVar[type[ToolOutput]] = SlideClassificationOutput
    weights_setting: ClassVar[str] = "slide_mil_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".safetensors")
    weights_kind: ClassVar[str] = "an ABMIL head state dict (.pt, .pth or .safetensors)"
    backend_name: ClassVar[str] = "abmil"
    working_mpp: ClassVar[float | None] = 0.5

    def _pathclip_configured(self) -> bool:
        return bool(getattr(self.settings, "pathclip_weights", None))

    def shipped_weights(self) -> Path | None:
        return SHIPPED_SLIDE_WEIGHTS if SHIPPED_SLIDE_WEIGHTS.is_file() else None

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        if self.configured_weights() is None:
            return super().analyze(image, args)  # the embedded head, or 'not configured'
        self.load()
        if self._embedder is None:
            msg = (
                f"not configured: set {settings_env_var('pathclip_weights')} to the PathCLIP checkpoint "
                f"(the ABMIL head in {settings_env_var(self.weights_setting)} classifies PathCLIP tile embeddings)"
            )
            return ToolResult(output=SlideClassificationOutput(status="not_configured", message=msg, backend="none"))
        return self._analyze_deep(image, args)

    def _analyze_embedded(self, image: ImageData, args: ToolInput) -> ToolResult:
        with _LOAD_LOCK:
            if getattr(self, "_shipped_head", None) is None:
                head = ABMILHead.load(SHIPPED_SLIDE_WEIGHTS, "shipped slide head", "torch", self.settings)
                self._shipped_head = (head, self._embedder_for(head))

        self._head, self._embedder = self._shipped_head
        self.model_description = self._head.describe()
        result = self._analyze_deep(image, args)
        out = result.output
        assert isinstance(out, SlideClassificationOutput)
        out.in_domain = looks_like_he(image.pixels)
        if not out.in_domain:
            out.domain_warning = ("out of domain: the image is not H&E (no eosin: IHC, another stain or greyscale); "
                                  "the head was trained on H&E breast tissue only, so its answer here is not reliable")
            out.message = out.domain_warning
        return result

    def _embedder_for(self, head: Any) -> Any:
        """The tile embedder the head was trained on (None: PathCLIP, not configured)."""
        if head.config.embedder == "tissue_net":
            embedder = TissueNetEmbedder(shipped_tissue_net(self.settings), head.config.tile_mpp, head.config.embed_mpp)
        elif head.config.embedder == "hed_texture":
            embedder = HEDTextureEmbedder()
        elif not self._pathclip_configured():
            return None
        else:
            embedder = pathclip_embedder(self.settings)
        if embedder.dimension != head.config.in_dim:
            raise WeightsError(
                f"the ABMIL head in {settings_env_var(self.weights_setting)} takes {head.config.in_dim}-d tiles; "
                f"its embedder ({head.config.embedder}) gives {embedder.dimension}-d"
            )
        return embedder

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
        head = ABMILHead.load(path, self.weights_setting, fmt, self.settings)
        self._head, self._embedder = head, self._embedder_for(head)
        self.model_description = head.describe()

    # ---- tiles ----------------------------------------------------------------------------------------------
    def _tiles_from_slide(self, slide: Any, image: ImageData) -> tuple[list[tuple[float, float, float, float]], Any]:
        """Level-0 rectangles of the slide's tissue tiles (inside the analysed area) and a reader of their pixels."""
        cfg = self._head.config
        ds = max(1.0, cfg.tile_mpp / float(slide.mpp))
        tile0 = max(1, round(cfg.tile_size * ds))
        h, w = image.shape
        ax0, ay0 = image.origin
        ax1, ay1 = ax0 + w * image.scale, ay0 + h * image.scale
        rects = [
            (float(t.x), float(t.y), float(t.x + t.width), float(t.y + t.height))
            for t in slide.tissue_tiles(tile0, min_tissue=cfg.min_tissue)
            if t.width * t.height >= 0.5 * tile0 * tile0
            and t.x + t.width / 2 >= ax0 and t.x + t.width / 2 < ax1 and t.y + t.height / 2 >= ay0 and t.y + t.height / 2 < ay1
        ]

        def read(chunk: list[tuple[float, float, float, float]]) -> list[np.ndarray]:
            budget = 4 * cfg.tile_size * cfg.tile_size
            return [
                slide.read_region(Region(x=int(x0), y=int(y0), width=int(x1 - x0), height=int(y1 - y0)), ds, budget).pixels
                for x0, y0, x1, y1 in chunk
            ]

        return rects, read

    def _tiles_from_pixels(self, image: ImageData) -> tuple[list[tuple[float, float, float, float]], Any]:
        if image.mpp is None:
            image.notes.append("slide_classification: mpp unknown, tiles cut at the image's own resolution")
        cfg = self._head.config
        return pixel_tiles(image, cfg.tile_mpp, cfg.tile_size, cfg.min_tissue)

    def _analyze_deep(self, image: ImageData, args: ToolInput) -> ToolResult:
        assert isinstance(args, SlideClassificationInput)
        cfg = self._head.config
        slide = getattr(image, "slide", None)
        if slide is not None and getattr(slide, "mpp", None):
            rects, read = self._tiles_from_slide(slide, image)
            source = "slide"
        else:
            rects, read = self._tiles_from_pixels(image)
            source = "pixels"
        if not rects:
            raise ToolExecutionError(
                f"no tissue tiles: no {cfg.tile_size} px tile at {cfg.tile_mpp} um/px holds >= {cfg.min_tissue:.0%} tissue"
            )
        if len(rects) > MAX_TILES:
            keep = np.unique(np.round(np.linspace(0, len(rects) - 1, MAX_TILES)).astype(int))
            image.notes.append(f"slide_classification: {len(keep)} of {len(rects)} tissue tiles used (spread evenly)")
            rects = [rects[i] for i in keep]
        emb = np.concatenate(
            [self._embedder.embed_images(read(rects[i : i + _BATCH])) for i in range(0, len(rects), _BATCH)]
        )
        probs, att = self._head.predict(emb)
        labels = cfg.labels
        best = int(np.argmax(probs))
        order = np.argsort(-att, kind="stable")[: args.top_k_tiles]
        top = [
            Region(
                x=max(0, int(math.floor(rects[i][0]))), y=max(0, int(math.floor(rects[i][1]))),
                width=max(1, int(round(rects[i][2] - rects[i][0]))), height=max(1, int(round(rects[i][3] - rects[i][1]))),
            )
            for i in order
        ]
        out = SlideClassificationOutput(
            backend="abmil" if cfg.embedder == "pathclip" else f"abmil_{cfg.embedder}",
            label=labels[best],
            probability=round(float(probs[best]), 6),
            class_probabilities={lab: round(float(p), 6) for lab, p in zip(labels, probs)},
            n_tiles=len(rects),
            top_tiles=top,
        )
        rel = att / att.max()
        arr = level0_to_array(image, np.array(rects))
        h, w = image.shape
        heat = np.zeros((h, w), np.float32)
        covered = np.zeros((h, w), bool)
        features = []
        for k, (b, r) in enumerate(zip(arr, rel)):
            x0, y0 = int(np.clip(np.floor(b[0]), 0, w)), int(np.clip(np.floor(b[1]), 0, h))
            x1, y1 = int(np.clip(np.ceil(b[2]), 0, w)), int(np.clip(np.ceil(b[3]), 0, h))
            heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], r)
            covered[y0:y1, x0:x1] = True
            ring = np.array([[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]])
            meas = {"Attention": round(float(att[k]), 6), "Attention (relative)": round(float(r), 4)}
            features.append(polygon_feature([ring], image, "Tile", "tile", meas))
        overlay = heatmap_overlay(image.pixels, heat, mask=covered)
        if source == "pixels" and len(rects) == 1:
            image.notes.append("slide_classification: one tile only; attention is trivially 1")
        return ToolResult(output=out, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        if output.status != "ok" or not isinstance(output, SlideClassificationOutput) or output.label is None:
            return super().summarize(output)
        probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted((output.class_probabilities or {}).items(), key=lambda kv: -kv[1]))
        text = f"{self.name}: {output.label} (p={output.probability:.2f}) from {output.n_tiles} tissue tiles; {probs}"
        return text + (f"; WARNING {output.domain_warning}" if output.domain_warning else "")


def pixel_tiles(image: ImageData, tile_mpp: float, tile_size: int, min_tissue: float
                ) -> tuple[list[tuple[float, float, float, float]], Any]:
    """Tiles cut from an image's own pixels: ``tile_size`` px squares at ``tile_mpp`` (resampled when the image's mpp
    is known; as they are otherwise) holding at least ``min_tissue`` tissue (``tissue_qc``'s mask; an image smaller than one tile is one
    tile); returns their level-0 rectangles and a reader of their pixels. The trainer of the shipped head cuts its
    tiles with this function."""
    work = working_image(image, tile_mpp)
    t = tile_size
    hh, ww = work.shape
    if hh < t and ww < t:
        boxes = [(0, 0, ww, hh)]
    else:
        mask = tissue_mask(work.pixels, work.mpp or tile_mpp)
        boxes = [
            (x, y, min(x + t, ww), min(y + t, hh))
            for y in range(0, hh, t)
            for x in range(0, ww, t)
            if (min(x + t, ww) - x) * (min(y + t, hh) - y) >= 0.5 * t * t
            and mask[y : y + t, x : x + t].mean() >= min_tissue
        ]
    by_rect = {}
    rects = []
    for x0, y0, x1, y1 in boxes:
        c = work.to_level0(np.array([[x0, y0], [x1, y1]], dtype=float))
        r = (float(c[0, 0]), float(c[0, 1]), float(c[1, 0]), float(c[1, 1]))
        rects.append(r)
        by_rect[r] = (x0, y0, x1, y1)

    def read(chunk: list[tuple[float, float, float, float]]) -> list[np.ndarray]:
        return [work.pixels[by_rect[r][1] : by_rect[r][3], by_rect[r][0] : by_rect[r][2]] for r in chunk]

    return rects, read


#: the shipped ABMIL head over hed-texture tiles (model card tools/weights/SLIDE_MODEL_CARD.md)
SHIPPED_SLIDE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "slide_abmil.pt"
_LOAD_LOCK = threading.Lock()
