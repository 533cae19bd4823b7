"""ultralytics YOLO backend (detection and instance segmentation), shared by mitosis, IHC cells and nuclei.

Weights format: an ultralytics checkpoint ``.pt`` exactly as ``yolo train`` or ``YOLO.save()`` writes it (a dict
with ``model``/``ema`` modules; class names in ``model.names``; the training image size in ``train_args.imgsz``,
default 640). The file is first read with ultralytics' restricted loader (``weights_only=True`` against its
allow-list of model classes), so a checkpoint that would run arbitrary code on load is refused before the regular
load. ``YOLO_OFFLINE=1`` is set (unless already set) before ultralytics is imported: nothing is downloaded.

Inference runs tile by tile at the model's image size (:func:`pathasst.tools.backends.tiling.detect_tiled`), tiles in
RGB converted to the BGR order ultralytics expects of numpy arrays, with ultralytics' own letterboxing and NMS inside
each tile and cross-tile merging in level-0 coordinates.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData
from pathasst.core.settings import Settings
from pathasst.core.weights import describe_setting
from pathasst.tools.backends.runtime import configure_threads
from pathasst.tools.backends.tiling import Detections, TiledDetections, detect_tiled

__all__ = ["DEFAULT_IMGSZ", "YoloBackend"]

DEFAULT_IMGSZ = 640
_TASK_WORDS = {"detect": "a detection model", "segment": "an instance-segmentation (-seg) model"}


class YoloBackend:
    """A loaded ultralytics model: ``names`` (class id -> name), ``task``, ``imgsz``; :meth:`detect` over an image."""

    def __init__(self, yolo: Any, path: Path, setting: str) -> None:
        self.yolo = yolo
        self.path = path
        self.setting = setting
        self.task: str = str(yolo.task)
        self.names: dict[int, str] = {int(k): str(v) for k, v in dict(yolo.names).items()}
        imgsz = yolo.overrides.get("imgsz") or DEFAULT_IMGSZ
        self.imgsz = int(imgsz[0] if isinstance(imgsz, (list, tuple)) else imgsz)
        ckpt = getattr(yolo, "ckpt", None)
        #: ultralytics version that wrote the checkpoint ("" when unknown)
        self.version = str(ckpt.get("version") or "") if isinstance(ckpt, dict) else ""

    # ---- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, setting: str, settings: Settings, tasks: tuple[str, ...]) -> YoloBackend:
        """Load ``path`` (checked ultralytics ``.pt``); its task must be one of ``tasks``. Raises ``WeightsError``."""
        os.environ.setdefault("YOLO_OFFLINE", "1")
        where = describe_setting(setting, path)
        try:
            import torch
            from ultralytics import YOLO
            from ultralytics.nn.tasks import torch_safe_load
            from ultralytics.utils import patches as _ul_patches
        except ImportError as exc:  # pragma: no cover - ultralytics is a dependency
            raise WeightsError(f"the YOLO backend needs the ultralytics package ({exc}); cannot use {where}") from exc
        # ultralytics patches PIL.Image.open process-wide to install a HEIF plugin on the first unreadable image (a
        # package download at run time). Mark its plugins as registered so unreadable files stay plain PIL errors.
        _ul_patches._pil_plugins_registered = True
        configure_threads(settings)
        try:
            ckpt, _ = torch_safe_load(str(path), safe_only=True)
        except (TypeError, ModuleNotFoundError, pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
            raise WeightsError(f"{where} is not a loadable ultralytics YOLO checkpoint: {_first_line(exc)}") from exc
        module = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
        if not isinstance(module, torch.nn.Module):
            keys = sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise WeightsError(
                f"{where} is a torch file but not an ultralytics YOLO checkpoint (no 'model' module; found {keys}). "
                "Save models with ultralytics (`yolo train` or `YOLO.save()`)"
            )
        try:
            yolo = YOLO(str(path))
        except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, ModuleNotFoundError) as exc:
            raise WeightsError(f"cannot build the YOLO model from {where}: {_first_line(exc)}") from exc
        if str(yolo.task) not in tasks:
            wanted = " or ".join(_TASK_WORDS.get(t, t) for t in tasks)
            raise WeightsError(f"{where} holds a YOLO '{yolo.task}' model; this tool needs {wanted}")
        return cls(yolo, Path(path), setting)

    def describe(self) -> str:
        return f"ultralytics YOLO {self.task} ({len(self.names)} classes, imgsz {self.imgsz})"

    # ---- inference ----------------------------------------------------------------------------------------------
    def _device(self) -> Any:
        import torch

        return 0 if torch.cuda.is_available() else "cpu"

    def predict_tiles(self, tiles: list[np.ndarray], conf: float, iou: float, max_det: int = 300) -> list[Detections]:
        """ultralytics' predictor on RGB tiles; boxes (and masks for -seg models) in tile pixel coordinates."""
        if not tiles:
            return []
        bgr = [np.ascontiguousarray(t[..., ::-1]) for t in tiles]
        results = self.yolo.predict(
            source=bgr,
            imgsz=self.imgsz,
            conf=conf,
            iou=iou,
            max_det=max_det,
            device=self._device(),
            verbose=False,
            save=False,
            retina_masks=True,  # masks at the tile's own resolution
        )
        out: list[Detections] = []
        for r in results:
            boxes = r.boxes
            det = Detections(
                boxes=boxes.xyxy.cpu().numpy().astype(np.float64).reshape(-1, 4),
                scores=boxes.conf.cpu().numpy().astype(np.float64),
                classes=boxes.cls.cpu().numpy().astype(np.int64),
            )
            if self.task == "segment":
                det.masks, det.mask_origins = [], []
                data = r.masks.data.cpu().numpy() > 0.5 if r.masks is not None else np.zeros((0, 1, 1), bool)
                for k, b in enumerate(det.boxes):
                    x0, y0 = int(np.floor(b[0])), int(np.floor(b[1]))
                    x1, y1 = int(np.ceil(b[2])), int(np.ceil(b[3]))
                    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
                    det.masks.append(data[k, y0:y1, x0:x1].copy() if k < len(data) else np.ones((y1 - y0, x1 - x0), bool))
                    det.mask_origins.append((x0, y0))
            out.append(det)
        return out

    def detect(
        self, image: ImageData, conf: float, iou: float = 0.7, overlap: int = 64, batch: int = 8, max_det: int = 300
    ) -> TiledDetections:
        """Tiled detection over ``image`` (tiles of ``imgsz`` px, ``overlap`` px), merged across tiles."""
        overlap = min(overlap, self.imgsz // 2)
        return detect_tiled(
            image,
            lambda tiles: self.predict_tiles(tiles, conf, iou, max_det),
            tile=self.imgsz,
            overlap=overlap,
            batch=batch,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
