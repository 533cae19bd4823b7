"""Pathology image filter: is a figure (or panel) a brightfield pathology image (H&E, IHC) or something else?

A small CNN (about 0.3 M parameters, 128 px input: the whole image resized to 128 x 128, aspect not kept) trained by
:mod:`pathasst.finetune.data.filter_train` on :mod:`pathasst.finetune.data.filter_data`. The project's own weights
ship as ``finetune/data/weights/image_filter.pt`` (model card ``finetune/model_cards/image_filter.md``) and are the
default of every function here; nothing is downloaded.

    is_pathology(image)                      -> (bool, probability)
    filter_images(in_dir, out_jsonl)         -> keep / drop every image of a folder, with its probability

Weights: ``torch.save({"state_dict": ..., "config": {...}})``; config keys ``architecture``
(``"pathasst-image-filter"``), ``widths``, ``input_size``, ``threshold`` (chosen on the validation split).
Bad input raises the typed errors of :mod:`pathasst.finetune.data.image_io`; bad weights raise
:class:`~pathasst.core.errors.WeightsError`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.finetune.data.image_io import IMAGE_SUFFIXES, CaseError, as_rgb

__all__ = [
    "ARCHITECTURE",
    "DEFAULT_WEIGHTS",
    "FilterModel",
    "build_filter_net",
    "filter_images",
    "is_pathology",
    "load_filter",
    "prepare",
]

ARCHITECTURE = "pathasst-image-filter"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "image_filter.pt"
DEFAULT_WIDTHS = (24, 48, 96, 160)
INPUT_SIZE = 128
_MEAN, _STD = 0.5, 0.25


def build_filter_net(widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS, dropout: float = 0.2) -> Any:
    """The network (torch imported here): four stride-2 stages (plain 3x3 convolutions, then depthwise-separable
    residual blocks), average + max pooling, one logit (pathology)."""
    import torch
    from torch import nn

    def cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    class DwBlock(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.dw = cbr(c, c, groups=c)
            self.pw = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.pw(self.dw(x)))

    class FilterNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = list(widths)
            self.features = nn.Sequential(
                cbr(3, w[0], 2),
                cbr(w[0], w[1], 2), cbr(w[1], w[1]),
                cbr(w[1], w[2], 2), DwBlock(w[2]),
                cbr(w[2], w[3], 2), DwBlock(w[3]), DwBlock(w[3]),
            )
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(2 * w[3], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features((x - _MEAN) / _STD)
            pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
            return self.head(self.drop(pooled))[:, 0]

    return FilterNet()


def prepare(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(3, size, size) float32 in [0, 1]: the whole image resized (antialiased bilinear), aspect not kept."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0


@dataclass
class FilterModel:
    """Loaded weights: the network (eval mode), its threshold, its input size and where it came from."""

    net: Any
    threshold: float
    input_size: int
    path: Path

    def probabilities(self, images: list[np.ndarray], batch: int = 64) -> np.ndarray:
        """P(pathology) of each RGB image."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = torch.from_numpy(np.stack([prepare(im, self.input_size) for im in images[i : i + batch]]))
                out.append(torch.sigmoid(self.net(x)).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


_CACHE: dict[str, FilterModel] = {}
_LOCK = threading.Lock()


def load_filter(weights: Path | str | None = None) -> FilterModel:
    """The filter of ``weights`` (default: the shipped weights), cached; ``WeightsError`` when the file is missing,
    unreadable or not image-filter weights."""
    from pathasst.core.weights import load_torch_file

    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    key = str(path.resolve())
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if not path.is_file():
            raise WeightsError(f"image-filter weights {path} not found (train them with `pathasst-train data "
                               "filter-train`)")
        ckpt = load_torch_file(path, str(path))
        cfg = ckpt.get("config", {}) if isinstance(ckpt, dict) else {}
        if cfg.get("architecture") != ARCHITECTURE or "state_dict" not in ckpt:
            raise WeightsError(f"{path} is not image-filter weights (config architecture "
                               f"{cfg.get('architecture')!r}, expected {ARCHITECTURE!r})")
        net = build_filter_net(cfg.get("widths", DEFAULT_WIDTHS))
        try:
            net.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
        except (RuntimeError, AttributeError) as exc:
            raise WeightsError(f"{path}: weights do not fit the image-filter network ({str(exc)[:300]})") from exc
        model = FilterModel(net.eval(), float(cfg.get("threshold", 0.5)), int(cfg.get("input_size", INPUT_SIZE)), path)
        _CACHE[key] = model
        return model


def is_pathology(image: np.ndarray | Path | str, weights: Path | str | None = None,
                 threshold: float | None = None) -> tuple[bool, float]:
    """(is it brightfield pathology, P(pathology)) of an image path or RGB array; ``threshold`` defaults to the
    weights' own. Typed input errors (:mod:`~pathasst.finetune.data.image_io`) for unusable images."""
    rgb = as_rgb(image)  # bad input fails first, whatever the weights
    model = load_filter(weights)
    p = float(model.probabilities([rgb])[0])
    return p >= (model.threshold if threshold is None else threshold), p


def filter_images(in_dir: Path, out_file: Path, weights: Path | str | None = None, threshold: float | None = None,
                  batch: int = 32) -> dict[str, Any]:
    """Score every image under ``in_dir`` (recursive, sorted) and write one JSON line per file to ``out_file``:
    ``{"image", "keep", "probability"}``, or ``{"image", "keep": false, "error", "reason"}`` for a file that is not
    a usable image (the run goes on). Returns counts."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise NotADirectoryError(f"{in_dir} is not a folder")
    model = load_filter(weights)
    thr = model.threshold if threshold is None else threshold
    files = sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(in_dir).parts))
    rows: list[dict[str, Any]] = []
    for i in range(0, len(files), batch):
        good, pix = [], []
        for p in files[i : i + batch]:
            rel = p.relative_to(in_dir).as_posix()
            try:
                pix.append(as_rgb(p))
                good.append(rel)
            except CaseError as exc:
                rows.append({"image": rel, "keep": False, "error": exc.code, "reason": str(exc)})
        for rel, prob in zip(good, model.probabilities(pix)):
            rows.append({"image": rel, "keep": bool(prob >= thr), "probability": round(float(prob), 4)})
    rows.sort(key=lambda r: r["image"])
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out_file)
    kept = sum(r["keep"] for r in rows)
    errors = sum("error" in r for r in rows)
    return {"images": len(rows), "kept": kept, "dropped": len(rows) - kept - errors, "errors": errors,
            "threshold": thr, "weights": str(model.path), "out": str(out_file)}
