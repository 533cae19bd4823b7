"""Deep backend of ``nuclei_segmentation`` for ultralytics YOLO-seg weights.

Weights (``PATHASST_NUCLEI_WEIGHTS``): an ultralytics instance-segmentation checkpoint ``.pt`` (``yolo11n-seg``-style,
see :mod:`.yolo`) trained on nuclei (every class counts as a nucleus). Optional sidecar ``NAME.json``:
``{"mpp": 0.25, "min_score": 0.25}``: the resolution the model was trained at (default 0.25 um/px, CoNSeP-like 40x;
images of known, different resolution are resampled to it and the labels brought back) and the confidence below
which detections are dropped (default 0.25). Large images are tiled at the model's image
size with 64 px overlap; detections are merged across tiles in level-0 coordinates, each keeping the mask of its
best whole (not border-cut) member. Masks are painted lowest score first, so where two overlap the more confident
one keeps the pixel.

:func:`load_nuclei_backend` dispatches on the file's content: a torch checkpoint whose config names the project's
own nuclei network (``architecture: pathasst-nuclei-net``, see :mod:`.nuclei_net`) loads as that network; a
segment-anything state dict loads as SAM prompted by the shipped network (:mod:`.nuclei_sam`); any other ``.pt`` must
be an ultralytics -seg checkpoint. Anything else is refused with a message naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData
from pathasst.core.settings import Settings
from pathasst.core.weights import check_weights_file, describe_setting, read_sidecar, sidecar_number
from pathasst.tools.backends.nuclei_net import SHIPPED_NET_WEIGHTS, NucleiNet, is_nuclei_net_checkpoint
from pathasst.tools.backends.nuclei_sam import NucleiSam
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.sam import SamSegmenter, is_sam_checkpoint
from pathasst.tools.backends.yolo import YoloBackend

__all__ = ["NucleiYolo", "load_nuclei_backend"]

SETTING = "nuclei_weights"
DEFAULT_MPP = 0.25
TILE_OVERLAP_PX = 64


@dataclass
class NucleiYolo:
    """A YOLO-seg nuclei model: :meth:`segment` gives an instance label map of the analysed image."""

    yolo: YoloBackend
    mpp: float
    min_score: float = 0.25

    def describe(self) -> str:
        return f"{self.yolo.describe()} nuclei at {self.mpp} um/px"

    def segment(self, image: ImageData, min_score: float | None = None, min_area_px: int = 1) -> np.ndarray:
        """uint32 labels ``1..N`` (0 = background) with the shape of ``image`` (``min_score`` default: the model's)."""
        from skimage.segmentation import relabel_sequential
        from skimage.transform import resize

        work = working_image(image, self.mpp)
        conf = self.min_score if min_score is None else min_score
        dets = self.yolo.detect(work, conf=conf, overlap=TILE_OVERLAP_PX)
        h, w = work.shape
        labels = np.zeros((h, w), np.int64)
        if dets.masks is not None and dets.mask_origins is not None:
            for k in np.argsort(dets.scores, kind="stable"):
                m, (ox, oy) = dets.masks[k], dets.mask_origins[k]
                y0, x0 = max(oy, 0), max(ox, 0)
                y1, x1 = min(oy + m.shape[0], h), min(ox + m.shape[1], w)
                if y1 <= y0 or x1 <= x0:
                    continue
                sub = m[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
                labels[y0:y1, x0:x1][sub] = k + 1
        if (h, w) != image.shape:
            labels = resize(labels, image.shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
        if min_area_px > 1 and labels.any():
            counts = np.bincount(labels.ravel())
            small = counts < min_area_px
            small[0] = False
            labels[small[labels]] = 0
        return relabel_sequential(labels)[0].astype(np.uint32)


def load_nuclei_backend(path: Path, settings: Settings) -> NucleiYolo | NucleiNet | NucleiSam:
    """Load ``PATHASST_NUCLEI_WEIGHTS``: the project's nuclei network, a segment-anything checkpoint (prompted by the
    shipped network, :mod:`pathasst.tools.backends.nuclei_sam`) or a YOLO-seg checkpoint, by content; WeightsError
    naming the setting otherwise."""
    path = Path(path)
    where = describe_setting(SETTING, path)
    fmt = check_weights_file(path, SETTING, (".pt", ".pth"))
    if is_nuclei_net_checkpoint(path):
        return NucleiNet.load(path, SETTING, settings, fmt)
    if is_sam_checkpoint(path):
        if not SHIPPED_NET_WEIGHTS.is_file():
            raise WeightsError(
                f"{where} is a segment-anything checkpoint; SAM outlines the nuclei the shipped nuclei network finds, "
                f"and that network ({SHIPPED_NET_WEIGHTS}) is missing from this installation"
            )
        detector = NucleiNet.load(SHIPPED_NET_WEIGHTS, SETTING, settings)
        return NucleiSam(SamSegmenter.load(path, SETTING, fmt, settings), detector)
    try:
        yolo = YoloBackend.load(path, SETTING, settings, tasks=("segment",))
    except WeightsError as exc:
        if "ultralytics" in str(exc) and "holds a YOLO" not in str(exc):
            raise WeightsError(
                f"{exc}. The nuclei backend loads ultralytics YOLO-seg checkpoints and the project's own nuclei "
                "network (a state dict whose config has architecture 'pathasst-nuclei-net', written by "
                "python -m pathasst.finetune.nuclei_net) and segment-anything checkpoints"
            ) from exc
        raise
    cfg = read_sidecar(path, where)
    mpp = sidecar_number(cfg, "mpp", DEFAULT_MPP, 0.05, 8, where)
    min_score = sidecar_number(cfg, "min_score", 0.25, 0.0, 1.0, where)
    return NucleiYolo(yolo=yolo, mpp=mpp, min_score=min_score)
