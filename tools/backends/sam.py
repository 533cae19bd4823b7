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

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import fill_holes
from pathasst.core.settings import Settings
from pathasst.core.weights import WeightsFormat, load_torch_file, read_checkpoint
from pathasst.tools.backends.runtime import configure_threads, load_state, torch_device

__all__ = ["SAM_VARIANTS", "SamResult", "SamSegmenter", "is_sam_checkpoint"]

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


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask``, holes filled."""
    from scipy import ndimage as ndi

    comps, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        mask = comps == int(np.argmax(sizes))
    return fill_holes(mask)


def is_sam_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a torch file holding a segment-anything state dict (plain, ``{"state_dict": ...}`` or
    ``module.``-prefixed), recognised by its patch embedding (read with ``weights_only=True``)."""
    try:
        raw = load_torch_file(path, str(path))
    except WeightsError:  # any unreadable file is simply "not SAM"
        return False
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        return False
    patch = raw.get(_PATCH_KEY, raw.get("module." + _PATCH_KEY))
    return getattr(patch, "ndim", 0) == 4 and int(patch.shape[0]) in SAM_VARIANTS


class SamSegmenter:
    """A loaded SAM model behind ``segment_anything.SamPredictor``."""

    def __init__(self, predictor: Any, variant: str) -> None:
        self.predictor = predictor
        self.variant = variant

    @classmethod
    def load(cls, path: Path, setting: str, fmt: WeightsFormat, settings: Settings) -> SamSegmenter:
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
        return self._place(rgb.shape[:2], fill_holes(keep), score, win)

    def segment_box(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> SamResult:
        """The object inside array box ``(x0, y0, x1, y1)``."""
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
        return self._place(rgb.shape[:2], _largest_filled(local), score, win)

    def segment_boxes(
        self, rgb: np.ndarray, boxes: np.ndarray, window: int = 256, context: int = 32, pad: int = 3
    ) -> list[tuple[tuple[int, int], np.ndarray, float]]:
        """One object per box ``(x0, y0, x1, y1)`` (array px, end exclusive), many boxes per SAM image encoding.

        The image is cut into ``window`` px cells; the boxes whose centres fall in a cell are prompted on one
        crop (the cell plus ``context`` px, grown to hold its boxes), which SAM resizes to 1024 px (small objects
        such as nuclei get ~4x more pixels). Each mask is clipped to its box plus ``pad`` px, reduced to its largest
        component and hole-filled. Returns, per box in input order, ``((y0, x0), local mask, predicted IoU)``
        with the mask's top-left corner in the image; an empty mask where SAM found nothing.
        """
        import torch

        h, w = rgb.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out: list[tuple[tuple[int, int], np.ndarray, float] | None] = [None] * len(boxes)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        cell = np.stack([np.clip(cy // window, 0, None), np.clip(cx // window, 0, None)], 1).astype(np.int64)
        for key in sorted({(int(a), int(b)) for a, b in cell}):
            idx = np.flatnonzero((cell[:, 0] == key[0]) & (cell[:, 1] == key[1]))
            sub = boxes[idx]
            x0 = int(max(0, min(key[1] * window - context, np.floor(sub[:, 0].min()) - pad)))
            y0 = int(max(0, min(key[0] * window - context, np.floor(sub[:, 1].min()) - pad)))
            x1 = int(min(w, max((key[1] + 1) * window + context, np.ceil(sub[:, 2].max()) + pad)))
            y1 = int(min(h, max((key[0] + 1) * window + context, np.ceil(sub[:, 3].max()) + pad)))
            crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            with torch.inference_mode():
                self.predictor.set_image(crop, image_format="RGB")
                for k, (bx0, by0, bx1, by1) in zip(idx, sub):
                    local_box = np.array([bx0 - x0, by0 - y0, bx1 - x0, by1 - y0], dtype=np.float32)
                    masks, scores, _ = self.predictor.predict(box=local_box, multimask_output=False)
                    m = np.asarray(masks[0], dtype=bool)
                    ky0, kx0 = int(max(0, np.floor(by0 - y0) - pad)), int(max(0, np.floor(bx0 - x0) - pad))
                    ky1 = int(min(y1 - y0, np.ceil(by1 - y0) + pad))
                    kx1 = int(min(x1 - x0, np.ceil(bx1 - x0) + pad))
                    m = m[ky0:ky1, kx0:kx1]
                    out[k] = ((y0 + ky0, x0 + kx0), _largest_filled(m), float(scores[0]))
        return [o for o in out if o is not None]

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
