"""segment-anything backend of ``region_segmentation``: one object from a point or a box prompt.

Weights (``PATHASST_SAM_WEIGHTS``): an official segment-anything checkpoint (``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``), i.e. the plain state dict of ``Sam``; fine-tuned models saved the
same way (or as ``{"state_dict": ...}``, with or without a ``module.`` prefix) work too. The variant (``vit_b`` /
``vit_l`` / ``vit_h``) is read from the width of the patch embedding (768 / 1024 / 1280), so no config is needed. The
file is read with ``torch.load(weights_only=True)``; the model is built with ``sam_model_registry[variant]
(checkpoint=None)`` and the weights loaded strictly.

SAM sees a window of the image around the prompt (point: a square of 16 search radii, 256..1024 px; box: the box plus
half its size on each side, at least 256 px), resized by SAM to 1024 px. A point prompt keeps the best of SAM's three
masks (by predicted IoU) and its connected component under the point; a box prompt keeps one mask, clipped to the box,
its largest component. Holes are filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.tools.backends.runtime import configure_threads, load_state, read_checkpoint, torch_device
from pathasst.tools.deep import WeightsFormat
from pathasst.tools.errors import WeightsError

__all__ = ["SAM_VARIANTS", "SamResult", "SamSegmenter"]

#: patch-embedding width -> segment-anything variant
SAM_VARIANTS: dict[int, str] = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


@dataclass
class SamResult:
    """A mask over the whole analysed image, SAM's predicted IoU, and whether the mask touches the window edge."""

    mask: np.ndarray
    score: float
    touches_window: bool
    window: tuple[int, int, int, int]


class SamSegmenter:
    """A loaded SAM model behind ``segment_anything.SamPredictor``."""

    def __init__(self, predictor: Any, variant: str) -> None:
        self.predictor = predictor
        self.variant = variant

    @classmethod
    def load(cls, path: Path, setting: str, fmt: WeightsFormat, settings: Any) -> SamSegmenter:
        configure_threads(settings)
        ckpt = read_checkpoint(path, setting, fmt, sidecar=False)
        patch = ckpt.state_dict.get(_PATCH_KEY)
        if patch is None or patch.ndim != 4 or int(patch.shape[0]) not in SAM_VARIANTS:
            shape = tuple(patch.shape) if patch is not None else None
            raise WeightsError(
                f"weights {ckpt.where()} are not a segment-anything checkpoint ({_PATCH_KEY} "
                f"{'missing' if shape is None else f'has shape {shape}'}; expected width 768, 1024 or 1280)"
            )
        variant = SAM_VARIANTS[int(patch.shape[0])]
        try:
            from segment_anything import SamPredictor, sam_model_registry
        except ImportError as exc:  # pragma: no cover - segment-anything is a dependency
            raise WeightsError(f"the SAM backend needs the segment-anything package ({exc}); cannot use {ckpt.where()}") from exc
        model = sam_model_registry[variant](checkpoint=None)
        load_state(model, ckpt, f"segment-anything {variant}")
        model.to(torch_device()).eval()
        return cls(SamPredictor(model), variant)

    def describe(self) -> str:
        return f"segment-anything {self.variant}"

    # ---- prompts ------------------------------------------------------------------------------------------------
    @staticmethod
    def _window(shape: tuple[int, int], cx: float, cy: float, half_w: float, half_h: float) -> tuple[int, int, int, int]:
        h, w = shape
        x0, x1 = int(max(0, np.floor(cx - half_w))), int(min(w, np.ceil(cx + half_w)))
        y0, y1 = int(max(0, np.floor(cy - half_h))), int(min(h, np.ceil(cy + half_h)))
        return x0, y0, x1, y1

    def _run(self, rgb: np.ndarray, win: tuple[int, int, int, int], **prompt: Any) -> tuple[np.ndarray, float]:
        import torch

        x0, y0, x1, y1 = win
        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(rgb[y0:y1, x0:x1]), image_format="RGB")
            masks, scores, _ = self.predictor.predict(**prompt)
        best = int(np.argmax(scores))
        return np.asarray(masks[best], dtype=bool), float(scores[best])

    def segment_point(self, rgb: np.ndarray, x: float, y: float, radius: float) -> SamResult:
        """The object under array point ``(x, y)``; ``radius`` (px) sizes the context window."""
        from scipy import ndimage as ndi

        half = float(np.clip(8 * radius, 128, 512))
        win = self._window(rgb.shape[:2], x, y, half, half)
        x0, y0, x1, y1 = win
        local, score = self._run(
            rgb, win, point_coords=np.array([[x - x0, y - y0]], dtype=np.float32), point_labels=np.array([1]),
            multimask_output=True,
        )
        comps, _ = ndi.label(local)
        px, py = int(np.clip(round(x - x0), 0, x1 - x0 - 1)), int(np.clip(round(y - y0), 0, y1 - y0 - 1))
        keep = comps == comps[py, px] if comps[py, px] else np.zeros_like(local)
        return self._place(rgb.shape[:2], ndi.binary_fill_holes(keep), score, win)

    def segment_box(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> SamResult:
        """The object inside array box ``(x0, y0, x1, y1)``."""
        from scipy import ndimage as ndi

        bx0, by0, bx1, by1 = box
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        half_w = max((bx1 - bx0), 256) / 2 + (bx1 - bx0) / 2
        half_h = max((by1 - by0), 256) / 2 + (by1 - by0) / 2
        win = self._window(rgb.shape[:2], cx, cy, half_w, half_h)
        x0, y0, x1, y1 = win
        local, score = self._run(
            rgb, win, box=np.array([bx0 - x0, by0 - y0, bx1 - x0, by1 - y0], dtype=np.float32), multimask_output=False
        )
        inside = np.zeros_like(local)
        inside[int(max(0, by0 - y0)) : int(np.ceil(by1 - y0)), int(max(0, bx0 - x0)) : int(np.ceil(bx1 - x0))] = True
        local &= inside
        comps, n = ndi.label(local)
        if n > 1:
            sizes = np.bincount(comps.ravel())
            sizes[0] = 0
            local = comps == int(np.argmax(sizes))
        return self._place(rgb.shape[:2], ndi.binary_fill_holes(local), score, win)

    @staticmethod
    def _place(shape: tuple[int, int], local: np.ndarray, score: float, win: tuple[int, int, int, int]) -> SamResult:
        x0, y0, x1, y1 = win
        full = np.zeros(shape, dtype=bool)
        full[y0:y1, x0:x1] = local
        h, w = shape
        touches = bool(
            (x0 > 0 and local[:, 0].any()) or (y0 > 0 and local[0].any())
            or (x1 < w and local[:, -1].any()) or (y1 < h and local[-1].any())
        )
        return SamResult(mask=full, score=score, touches_window=touches, window=win)
