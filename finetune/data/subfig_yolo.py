"""The learned sub-figure backend: ultralytics YOLO trained from scratch on the synthetic compound figures
(``pathasst-train data subfig-train``). No pretrained weights: the network is built from ``yolov8n.yaml`` (one
class, ``panel``); nothing is downloaded (``YOLO_OFFLINE=1``; ultralytics' settings go to ``RUN/.ultralytics``
unless ``YOLO_CONFIG_DIR`` is set; its own AMP check, which wants ``yolov8n.pt``, is off: ``amp=False``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["predict_yolo", "train_yolo", "yolo_available"]


def yolo_available() -> bool:
    """Whether ultralytics is installed."""
    from importlib.util import find_spec

    return find_spec("ultralytics") is not None


def _offline(run: Path | None = None) -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if "YOLO_CONFIG_DIR" not in os.environ and run is not None:
        (run / ".ultralytics").mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str((run / ".ultralytics").resolve())


def train_yolo(data: Path, run: Path, epochs: int = 15, imgsz: int = 320, batch: int = 16, workers: int = 0,
               seed: int = 0, fraction: float = 1.0, model: str = "yolov8n.yaml",
               minutes: float | None = None) -> dict[str, Any]:
    """Train from scratch on ``data`` (a ``subfig-build`` folder, its ``data.yaml``); weights in
    ``run/train/weights/best.pt``. ``minutes``: ultralytics' own time budget (it then fits the epochs, and the
    learning-rate schedule, into it). Returns the run's summary (time, final validation mAP)."""
    data, run = Path(data), Path(run)
    if not (data / "data.yaml").is_file():
        raise FileNotFoundError(f"{data / 'data.yaml'} not found: build the data set with `pathasst-train data "
                                "subfig-build`")
    _offline(run)
    from ultralytics import YOLO

    t0 = time.time()
    net = YOLO(model)  # a .yaml: built from scratch, no download
    res = net.train(data=str((data / "data.yaml").resolve()), epochs=epochs, imgsz=imgsz, batch=batch,
                    workers=workers, device="cpu", project=str(run.resolve()), name="train", exist_ok=True,
                    pretrained=False, amp=False, plots=False, seed=seed, deterministic=True, fraction=fraction,
                    verbose=False, val=True, cache=False, time=minutes / 60 if minutes else None,
                    # figures are not photos: no mosaic of four figures, no colour shifts beyond brightness
                    mosaic=0.0, hsv_h=0.0, hsv_s=0.2, fliplr=0.5, scale=0.3, translate=0.05)
    best = run / "train" / "weights" / "best.pt"
    metrics = getattr(res, "results_dict", {}) if res is not None else {}
    csv = run / "train" / "results.csv"
    done = max(0, len(csv.read_text().splitlines()) - 1) if csv.is_file() else None
    return {"weights": str(best), "exists": best.is_file(), "minutes": round((time.time() - t0) / 60, 2),
            "epochs_asked": epochs, "epochs_run": done, "imgsz": imgsz,
            "val_metrics": {k: round(float(v), 4) for k, v in metrics.items()}}


def predict_yolo(weights: Path | str, images: list[np.ndarray], imgsz: int = 320, conf: float = 0.25,
                 iou: float = 0.5, with_scores: bool = False) -> list[list[Any]]:
    """Panel boxes ``(x0, y0, x1, y1)`` of each RGB image (reading order), from trained YOLO weights;
    ``with_scores``: ``(box, confidence)`` pairs instead (not reordered)."""
    _offline()
    from ultralytics import YOLO

    from pathasst.finetune.data.subfigures import reading_order

    path = Path(weights)
    if not path.is_file():
        from pathasst.core.errors import WeightsError

        raise WeightsError(f"YOLO weights {path} not found (train them with `pathasst-train data subfig-train`)")
    net = YOLO(str(path))
    out = []
    for rgb in images:
        r = net.predict(np.ascontiguousarray(rgb[..., ::-1]), imgsz=imgsz, conf=conf, iou=iou, device="cpu",
                        verbose=False)[0]  # ultralytics takes arrays as BGR
        h, w = rgb.shape[:2]
        boxes, scores = [], []
        for (x0, y0, x1, y1), s in zip(r.boxes.xyxy.cpu().numpy().tolist(), r.boxes.conf.cpu().numpy().tolist()):
            b = (max(0, round(x0)), max(0, round(y0)), min(w, round(x1)), min(h, round(y1)))
            if b[2] > b[0] and b[3] > b[1]:
                boxes.append(b)
                scores.append(float(s))
        out.append(list(zip(boxes, scores)) if with_scores else reading_order(boxes))
    return out
