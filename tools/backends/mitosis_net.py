"""The project's own mitosis detector: a small fully convolutional network that marks mitotic figures as points.

Trained by :mod:`pathasst.finetune.mitosis_net` on AMi-Br (breast cancer, MIDOG 2021 and TUPAC16 slides, 40x);
shipped as ``tools/weights/mitosis_net.pt`` (model card ``tools/weights/MITOSIS_MODEL_CARD.md``).

Weights: ``torch.save({"state_dict": fp16_state_dict, "config": {...}}, "mitosis_net.pt")``. Config keys:

=================  ========  ==========================================================================================
key                required  meaning
=================  ========  ==========================================================================================
``architecture``   yes       ``"pathasst-mitosis-net"``
``mpp``            yes       microns per pixel the network was trained at (0.25: 40x)
``widths``         no        channels per level, stem first (default ``[24, 48, 96, 160, 256]``)
``decoder``        no (64)   decoder channels
``threshold``      no (0.5)  smallest peak P(mitosis) reported as a figure (chosen on the validation slides)
``min_distance``   no (8.0)  smallest distance between two figures, um
``tile_size``      no (512)  tile side at ``mpp`` for large images (overlap 64 px, maps blended)
=================  ========  ==========================================================================================

Outputs, at 1/4 of the input resolution: a mitosis logit (a peak at each figure's centre, trained on Gaussian
targets with CenterNet's penalty-reduced focal loss) and an atypical logit (read at the peak: P(atypical | figure)).
Figures are the local maxima of P(mitosis) above ``threshold`` at least ``min_distance`` apart.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.settings import Settings
from pathasst.core.weights import Checkpoint, read_checkpoint
from pathasst.tools.backends.blocks import conv_blocks
from pathasst.tools.backends.runtime import configure_threads, load_state, torch_device
from pathasst.tools.backends.tiling import dense_tiled

__all__ = ["ARCHITECTURE", "MitosisFigures", "MitosisNet", "MitosisNetConfig", "build_mitosis_net", "find_peaks"]

ARCHITECTURE = "pathasst-mitosis-net"
DEFAULT_WIDTHS = (24, 48, 96, 160, 256)
#: total stride of the encoder (inputs are padded to a multiple) and stride of the output maps
STRIDE, OUT_STRIDE = 32, 4


def build_mitosis_net(widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS, decoder: int = 64) -> Any:
    """The network (torch imported here): ``forward(x (N, 3, H, W)) -> (N, 2, H/4, W/4)`` logits (mitosis,
    atypical); H, W multiples of 32."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    if len(widths) != 5:
        raise ValueError(f"widths needs 5 levels, got {list(widths)}")

    cbr, Res = conv_blocks()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = list(widths)
            self.stem = nn.Sequential(cbr(3, w[0], 3, 2), Res(w[0], False))
            self.stages = nn.ModuleList(
                [nn.Sequential(cbr(w[i], w[i + 1], 3, 2), Res(w[i + 1], i + 1 >= 2), *([Res(w[i + 1], True)] if i == 2 else []))
                 for i in range(4)]
            )
            self.lateral = nn.ModuleList([nn.Conv2d(c, decoder, 1) for c in w[1:]])
            self.head = nn.Sequential(cbr(decoder, decoder), cbr(decoder, decoder), nn.Conv2d(decoder, 2, 1))
            with torch.no_grad():  # start with a low prior of mitosis everywhere (CenterNet's -2.19: p = 0.1)
                self.head[-1].bias[0].fill_(-2.19)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = [self.stem(x)]
            for stage in self.stages:
                f.append(stage(f[-1]))
            y = self.lateral[-1](f[-1])
            for i in range(len(f) - 2, 0, -1):
                y = F.interpolate(y, size=f[i].shape[-2:], mode="bilinear", align_corners=False) + self.lateral[i - 1](f[i])
            return self.head(y)

    return Net()


@dataclass
class MitosisNetConfig:
    """The metadata a mitosis-network checkpoint carries (see the module docstring)."""

    mpp: float
    architecture: str = ARCHITECTURE
    widths: list[int] = field(default_factory=lambda: list(DEFAULT_WIDTHS))
    decoder: int = 64
    threshold: float = 0.5
    min_distance: float = 8.0
    tile_size: int = 512
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> MitosisNetConfig:
        arch = ckpt.config.get("architecture")
        if arch != ARCHITECTURE:
            raise WeightsError(f"weights {ckpt.where()} are not a {ARCHITECTURE} checkpoint (architecture {arch!r})")
        mpp = float(ckpt.require("mpp", (int, float)))
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "mpp")}
        kwargs = {k: ckpt.config[k] for k in known if k in ckpt.config}
        extra = {k: v for k, v in ckpt.config.items() if k not in known and k != "mpp"}
        cfg = cls(mpp=mpp, extra=extra, **kwargs)
        if not 0 < cfg.threshold < 1 or cfg.min_distance <= 0 or cfg.tile_size % STRIDE:
            raise WeightsError(f"weights {ckpt.where()}: need 0 < threshold < 1, min_distance > 0 and tile_size a "
                               f"multiple of {STRIDE}")
        return cfg


@dataclass
class MitosisFigures:
    """Figures found in an image (pixels of the analysed array): centres ``xy`` (N, 2), peak ``score`` (N,),
    ``atypical`` probability (N,)."""

    xy: np.ndarray
    score: np.ndarray
    atypical: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def subset(self, keep: np.ndarray) -> MitosisFigures:
        """The figures where boolean ``keep`` is true."""
        return MitosisFigures(self.xy[keep].reshape(-1, 2), self.score[keep], self.atypical[keep])


def find_peaks(prob: np.ndarray, threshold: float, min_distance_px: float) -> np.ndarray:
    """``(N, 2)`` (row, col) of the local maxima of ``prob`` above ``threshold`` at least ``min_distance_px`` apart
    (highest first; a plateau gives one peak)."""
    from skimage.feature import peak_local_max

    if prob.size == 0 or float(prob.max()) <= threshold:
        return np.zeros((0, 2), np.int64)
    return peak_local_max(prob, min_distance=max(1, int(round(min_distance_px))), threshold_abs=threshold,
                          exclude_border=False)


class MitosisNet:
    """A loaded mitosis network: :meth:`maps` (P(mitosis), P(atypical) at 1/4 resolution) and :meth:`detect`."""

    def __init__(self, model: Any, config: MitosisNetConfig, device: Any) -> None:
        self.model = model
        self.config = config
        self.device = device
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, setting: str, settings: Settings = None) -> MitosisNet:
        if settings is not None:
            configure_threads(settings)
        ckpt = read_checkpoint(Path(path), setting, "torch")
        cfg = MitosisNetConfig.from_checkpoint(ckpt)
        model = build_mitosis_net(cfg.widths, cfg.decoder)
        ckpt.state_dict = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
        load_state(model, ckpt, f"a {ARCHITECTURE} with widths {cfg.widths}")
        device = torch_device()
        return cls(model.to(device).eval(), cfg, device)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"{ARCHITECTURE} ({n / 1e6:.2f} M params, {self.config.mpp} um/px, figures at P >= {self.config.threshold:.2f})"

    def _predict(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """Per tile, ``(2, h, w)`` probabilities upsampled to the tile's pixels (for blending across tiles)."""
        import torch
        from torch.nn import functional as F

        out = []
        mean = torch.tensor(self.config.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std).view(1, 3, 1, 1)
        for t in tiles:
            h, w = t.shape[:2]
            ph, pw = (-h) % STRIDE, (-w) % STRIDE
            mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
            arr = np.pad(t[..., :3], ((0, ph), (0, pw), (0, 0)), mode=mode)
            x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div_(255.0)
            x = ((x - mean) / std).to(self.device)
            with torch.inference_mode():
                p = torch.sigmoid(self.model(x).float())
                p = F.interpolate(p, scale_factor=OUT_STRIDE, mode="bilinear", align_corners=False)
            out.append(p[0, :, :h, :w].cpu().numpy())
        return out

    def maps(self, rgb: np.ndarray) -> np.ndarray:
        """``(2, H, W)`` P(mitosis) and P(atypical | figure) of an RGB image at the network's mpp (tiled, blended)."""
        with self._lock:
            return dense_tiled(rgb, self._predict, 2, self.config.tile_size, 64, batch=1)

    def detect(self, rgb: np.ndarray, threshold: float | None = None) -> MitosisFigures:
        """Figures in an RGB image at the network's mpp: peaks of P(mitosis) above ``threshold`` (default: the
        checkpoint's), at least ``min_distance`` um apart."""
        probs = self.maps(rgb)
        thr = self.config.threshold if threshold is None else threshold
        rc = find_peaks(probs[0], thr, self.config.min_distance / self.config.mpp)
        if len(rc) == 0:
            return MitosisFigures(np.zeros((0, 2)), np.zeros(0), np.zeros(0))
        return MitosisFigures(rc[:, ::-1].astype(np.float64), probs[0][rc[:, 0], rc[:, 1]].astype(np.float64),
                              probs[1][rc[:, 0], rc[:, 1]].astype(np.float64))
