"""A plain U-Net (Ronneberger et al. 2015) for tissue-region segmentation, its weights format and tiled inference.

Weights: a torch state dict of :class:`UNet` with its config, either as
``torch.save({"state_dict": model.state_dict(), "config": {...}}, "unet.pt")`` or as a plain state dict
(``.pt``/``.pth``/``.safetensors``) with a sidecar ``unet.json`` holding the config. Config keys:

==================  ========  =====================================================================================
key                 required  meaning
==================  ========  =====================================================================================
``classes``         yes       output channel names in order, e.g. ``["background", "tumor", "stroma"]``
``input_mpp``       yes       microns per pixel the network was trained at (images are resampled to it)
``base_channels``   no (32)   channels of the first level (doubling at each level down)
``depth``           no (4)    number of 2x downsamplings (tile sides must be multiples of 2**depth)
``norm``            no        ``"batch"`` (default) or ``"none"``
``tile_size``       no (512)  tile side for inference, pixels at ``input_mpp``
``overlap``         no (64)   overlap of neighbouring tiles, pixels (probabilities are blended across it)
``mean``, ``std``   no        per-channel normalisation of RGB in [0, 1] (default 0.5 / 0.5)
==================  ========  =====================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.settings import Settings
from pathasst.core.weights import Checkpoint, WeightsFormat, read_checkpoint
from pathasst.tools.backends.runtime import configure_threads, load_state, predict_padded, torch_device
from pathasst.tools.backends.tiling import dense_tiled

__all__ = ["UNetConfig", "UNetSegmenter", "build_unet"]


@dataclass
class UNetConfig:
    """The metadata a U-Net checkpoint carries (see the module docstring)."""

    classes: list[str]
    input_mpp: float
    base_channels: int = 32
    depth: int = 4
    norm: str = "batch"
    tile_size: int = 512
    overlap: int = 64
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, allowed: tuple[str, ...]) -> UNetConfig:
        classes = ckpt.require("classes", list)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise WeightsError(f"U-Net {ckpt.where()}: 'classes' must list >= 2 distinct names, got {classes!r}")
        unknown = [c for c in classes if c not in allowed]
        if unknown:
            raise WeightsError(f"U-Net {ckpt.where()}: unknown classes {unknown}; allowed: {', '.join(allowed)}")
        mpp = ckpt.require("input_mpp", (int, float))
        if not 0.05 <= float(mpp) <= 64:
            raise WeightsError(f"U-Net {ckpt.where()}: input_mpp {mpp} outside 0.05..64")
        cfg = cls(classes=list(classes), input_mpp=float(mpp))
        for key, kind in (("base_channels", int), ("depth", int), ("tile_size", int), ("overlap", int), ("norm", str)):
            if key in ckpt.config:
                setattr(cfg, key, ckpt.require(key, kind))
        for key in ("mean", "std"):
            if key in ckpt.config:
                v = ckpt.require(key, list)
                if len(v) != 3:
                    raise WeightsError(f"U-Net {ckpt.where()}: {key!r} must have 3 values")
                setattr(cfg, key, [float(x) for x in v])
        if cfg.norm not in ("batch", "none"):
            raise WeightsError(f"U-Net {ckpt.where()}: norm must be 'batch' or 'none', got {cfg.norm!r}")
        m = 2**cfg.depth
        if not (1 <= cfg.depth <= 6 and cfg.base_channels >= 1 and cfg.tile_size % m == 0 and 0 <= cfg.overlap < cfg.tile_size):
            raise WeightsError(
                f"U-Net {ckpt.where()}: need depth 1..6, tile_size a multiple of 2**depth ({m}) and "
                f"0 <= overlap < tile_size (got depth {cfg.depth}, tile_size {cfg.tile_size}, overlap {cfg.overlap})"
            )
        return cfg


def build_unet(n_classes: int, base_channels: int = 32, depth: int = 4, norm: str = "batch", in_channels: int = 3) -> Any:
    """The U-Net module (torch imported here, not at module import)."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for a in (cin, cout):
            layers.append(nn.Conv2d(a, cout, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            ch = [base_channels * 2**i for i in range(depth + 1)]
            self.down = nn.ModuleList([block(in_channels, ch[0])] + [block(ch[i], ch[i + 1]) for i in range(depth)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in reversed(range(depth))])
            self.dec = nn.ModuleList([block(2 * ch[i], ch[i]) for i in reversed(range(depth))])
            self.head = nn.Conv2d(ch[0], n_classes, 1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for i, enc in enumerate(self.down):
                x = enc(x if i == 0 else self.pool(x))
                skips.append(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet()


class UNetSegmenter:
    """A loaded U-Net: ``config``; :meth:`probabilities` gives stitched softmax maps of an RGB image."""

    def __init__(self, model: Any, config: UNetConfig, device: Any) -> None:
        self.model = model
        self.config = config
        self.device = device

    @classmethod
    def load(cls, path: Path, setting: str, fmt: WeightsFormat, settings: Settings, allowed: tuple[str, ...]) -> UNetSegmenter:
        configure_threads(settings)
        ckpt = read_checkpoint(path, setting, fmt)
        cfg = UNetConfig.from_checkpoint(ckpt, allowed)
        model = build_unet(len(cfg.classes), cfg.base_channels, cfg.depth, cfg.norm)
        load_state(model, ckpt, f"a U-Net with {len(cfg.classes)} classes, base_channels {cfg.base_channels}, depth {cfg.depth}, norm {cfg.norm}")
        device = torch_device()
        return cls(model.to(device).eval(), cfg, device)

    def describe(self) -> str:
        c = self.config
        return f"U-Net (depth {c.depth}, base {c.base_channels}, classes {c.classes}, {c.input_mpp} um/px)"

    def _predict(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        c = self.config
        return predict_padded(tiles, lambda x: torch.softmax(self.model(x), dim=1), 2**c.depth, c.mean, c.std, self.device)

    def probabilities(self, rgb: np.ndarray, tile: int | None = None, overlap: int | None = None, batch: int = 4) -> np.ndarray:
        """``(C, H, W)`` class probabilities of an RGB image at ``input_mpp`` (tiled, blended)."""
        c = self.config
        return dense_tiled(rgb, self._predict, len(c.classes), tile or c.tile_size, c.overlap if overlap is None else overlap, batch)
