"""Whole-slide classification: attention MIL (ABMIL) over PathCLIP tile embeddings, with an attention heatmap.

Weights: the ABMIL head in ``PATHASST_SLIDE_MIL_WEIGHTS`` (format and config in :mod:`pathasst.tools.backends.abmil`)
and PathCLIP in ``PATHASST_PATHCLIP_WEIGHTS`` (tile embeddings). Tiles: ``tile_size`` px squares at the head's
``tile_mpp`` holding at least ``min_tissue`` tissue, at most ``MAX_TILES`` (spread evenly; a note says so).

Where the tiles come from:

* when the analysed image carries its whole slide (an ``image.slide`` attribute with ``mpp``, ``tissue_tiles`` and
  ``read_region``, as :class:`pathasst.agent.readers.SlideReader` has), every tissue tile of the slide (or of the
  requested region) is read at ``tile_mpp``: the whole-slide path;
* otherwise the tiles are cut from the analysed pixels, resampled to ``tile_mpp`` when their mpp is known (for a
  slide the resolver reads at 0.5 um/px; a slide larger than its pixel budget is then analysed in its
  most-tissue window, and the trace notes it).

The attention heatmap (each tile's attention relative to the highest) is drawn over the analysed image, and every
tile goes to the GeoJSON as a ``tile`` object with its attention as a measurement (QuPath can colour by it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field

from pathasst.tools.base import Region, ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool, WeightsFormat, settings_env_var
from pathasst.tools.errors import ToolExecutionError
from pathasst.tools.imaging import ImageData

__all__ = ["MAX_TILES", "SlideClassificationInput", "SlideClassificationOutput", "SlideClassificationTool"]

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


class SlideClassificationTool(DeepTool):
    name: ClassVar[str] = "slide_classification"
    description: ClassVar[str] = (
        "Predicts a whole-slide label (e.g. tumour vs normal, subtype or grade, as trained) by attention-based "
        "multi-instance learning (ABMIL) over PathCLIP embeddings of the slide's tissue tiles; returns the label, "
        "its probability, the per-class probabilities and the most attended tiles (an attention heatmap goes to "
        "the case view). Use for slide-level diagnosis questions on whole-slide images, and to pick regions for "
        "closer measurement; not for single small patches (use tissue_classification). Requires the ABMIL head "
        "(PATHASST_SLIDE_MIL_WEIGHTS) and PathCLIP weights, otherwise it answers 'not configured'."
    )
    version: ClassVar[str] = "0.2.0"
    input_model: ClassVar[type[ToolInput]] = SlideClassificationInput
    output_model: ClassVar[type[ToolOutput]] = SlideClassificationOutput
    weights_setting: ClassVar[str] = "slide_mil_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".safetensors")
    weights_kind: ClassVar[str] = "an ABMIL head state dict (.pt, .pth or .safetensors)"
    backend_name: ClassVar[str] = "abmil"
    working_mpp: ClassVar[float | None] = 0.5

    def _pathclip_configured(self) -> bool:
        return bool(getattr(self.settings, "pathclip_weights", None))

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        if self.configured_weights() is not None and not self._pathclip_configured():
            msg = (
                f"not configured: set {settings_env_var('pathclip_weights')} to the PathCLIP checkpoint "
                f"(the ABMIL head in {settings_env_var(self.weights_setting)} classifies PathCLIP tile embeddings)"
            )
            return ToolResult(output=SlideClassificationOutput(status="not_configured", message=msg, backend="none"))
        return super().analyze(image, args)

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
        from pathasst.tools.backends.abmil import ABMILHead
        from pathasst.tools.backends.pathclip import pathclip_embedder
        from pathasst.tools.errors import WeightsError

        head = ABMILHead.load(path, self.weights_setting, fmt, self.settings)
        if not self._pathclip_configured():
            return  # analyze answers 'not configured' (PathCLIP missing) before any embedding is needed
        embedder = pathclip_embedder(self.settings)
        if embedder.dimension != head.config.in_dim:
            raise WeightsError(
                f"the ABMIL head in {settings_env_var(self.weights_setting)} ({path}) takes {head.config.in_dim}-d "
                f"tiles; PathCLIP gives {embedder.dimension}-d"
            )
        self._head, self._embedder = head, embedder
        self.model_description = head.describe() + " over PathCLIP ViT-B-16"

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
        from pathasst.tools.backends.runtime import working_image
        from pathasst.tools.imaging import tissue_mask

        cfg = self._head.config
        work = working_image(image, cfg.tile_mpp)
        if image.mpp is None:
            image.notes.append("slide_classification: mpp unknown, tiles cut at the image's own resolution")
        t = cfg.tile_size
        hh, ww = work.shape
        if hh < t and ww < t:
            boxes = [(0, 0, ww, hh)]
        else:
            mask = tissue_mask(work.pixels)
            boxes = [
                (x, y, min(x + t, ww), min(y + t, hh))
                for y in range(0, hh, t)
                for x in range(0, ww, t)
                if (min(x + t, ww) - x) * (min(y + t, hh) - y) >= 0.5 * t * t
                and mask[y : y + t, x : x + t].mean() >= cfg.min_tissue
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

    def _analyze_deep(self, image: ImageData, args: ToolInput) -> ToolResult:
        from pathasst.tools.backends.render import heatmap_overlay, level0_to_array
        from pathasst.tools.geojson import polygon_feature

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
            backend="abmil",
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
        return f"{self.name}: {output.label} (p={output.probability:.2f}) from {output.n_tiles} tissue tiles; {probs}"
