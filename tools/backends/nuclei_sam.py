"""segment-anything weights for ``nuclei_segmentation``: SAM outlines the nuclei that a nuclei detector finds.

SAM on its own (automatic mask generation) does not know what a nucleus is; as a prompted outliner it is strong. So
``PATHASST_NUCLEI_WEIGHTS`` may name a segment-anything checkpoint (any variant, recognised by content as in
:mod:`pathasst.tools.backends.sam`, e.g. a SAM fine-tuned on nuclei): the project's nuclei network (the shipped one)
finds the nuclei and their types; each nucleus's bounding box (plus 2 px) prompts SAM, many boxes per image encoding
(:meth:`SamSegmenter.segment_boxes`: 256 px cells, upscaled by SAM to 1024 px); SAM's mask replaces the detector's
outline unless SAM disagrees with the detection (IoU with it below ``min_agreement``, or smaller than
``min_area_px``), in which case the detector's outline stays. Nuclei are painted largest first, so a small nucleus is
not hidden by a large neighbour's mask. Types are the detector's. Works at the detector's resolution (0.25 um/px).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pathasst.core.imaging import ImageData
from pathasst.tools.backends.nuclei_net import NucleiNet, NucleiPrediction, to_image_labels
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.sam import SamSegmenter

__all__ = ["NucleiSam", "SamRefinement"]


@dataclass
class SamRefinement:
    """What the last call did: prompts sent, SAM masks kept, detector outlines kept instead."""

    prompts: int = 0
    sam_kept: int = 0
    detector_kept: int = 0
    ious: list[float] = field(default_factory=list)


class NucleiSam:
    """A SAM checkpoint prompted with the boxes of a :class:`NucleiNet`'s nuclei."""

    def __init__(self, sam: SamSegmenter, detector: NucleiNet, min_agreement: float = 0.3, min_area_px: int = 10,
                 box_pad: int = 2) -> None:
        self.sam = sam
        self.detector = detector
        self.min_agreement = min_agreement
        self.min_area_px = min_area_px
        self.box_pad = box_pad
        self.last = SamRefinement()

    def describe(self) -> str:
        return f"{self.sam.describe()} prompted by {self.detector.describe()}"

    def refine(self, rgb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """SAM outlines for the instances of ``labels`` (same shape as ``rgb``); returns new labels and a map from
        each new id to the detector's id it came from."""
        from skimage.measure import regionprops

        h, w = labels.shape
        props = regionprops(labels)
        stats = SamRefinement(prompts=len(props))
        self.last = stats
        if not props:
            return np.zeros_like(labels, dtype=np.int32), {}
        pad = self.box_pad
        boxes = np.array([[max(0, p.bbox[1] - pad), max(0, p.bbox[0] - pad), min(w, p.bbox[3] + pad),
                           min(h, p.bbox[2] + pad)] for p in props], dtype=np.float64)
        masks = self.sam.segment_boxes(rgb, boxes)
        chosen: list[tuple[int, int, tuple[slice, slice], np.ndarray]] = []  # (area, detector id, where, mask)
        for p, ((oy, ox), m, _score) in zip(props, masks, strict=True):
            sl = (slice(oy, oy + m.shape[0]), slice(ox, ox + m.shape[1]))  # holds the detector's box (+ padding)
            inter = int(np.logical_and(labels[sl] == p.label, m).sum())
            union = int(p.area + m.sum() - inter)
            iou = inter / union if union else 0.0
            stats.ious.append(round(iou, 4))
            if m.sum() >= self.min_area_px and iou >= self.min_agreement:
                stats.sam_kept += 1
                chosen.append((int(m.sum()), p.label, sl, m))
            else:
                stats.detector_kept += 1
                chosen.append((int(p.area), p.label, p.slice, p.image))
        out = np.zeros((h, w), np.int32)
        origin: dict[int, int] = {}
        for k, (_, det_id, sl, m) in enumerate(sorted(chosen, key=lambda c: -c[0]), 1):
            out[sl][m] = k
            origin[k] = det_id
        present = set(np.unique(out).tolist()) - {0}  # a nucleus fully covered by smaller ones disappears
        return out, {k: v for k, v in origin.items() if k in present}

    def segment(self, image: ImageData) -> NucleiPrediction:
        """Instances (labels with the shape of ``image``) and their types, as :meth:`NucleiNet.segment`."""
        work = working_image(image, self.detector.config.mpp)
        pred = self.detector.segment_array(work.pixels)
        labels, origin = self.refine(np.asarray(work.pixels)[..., :3], pred.labels)
        types = {k: pred.types[d] for k, d in origin.items() if d in pred.types}
        return to_image_labels(labels, types, image.shape, pred.type_classes)
