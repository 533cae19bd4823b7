"""The project's own tissue network: one compact encoder, a tissue-class head, a lesion-segmentation head.

Trained by :mod:`pathasst.finetune.tissue_net` on EBHI-Seg (colorectal biopsies, six diagnostic classes, lesion
masks); shipped as ``tools/weights/tissue_net.pt`` (model card ``tools/weights/TISSUE_MODEL_CARD.md``). The same
encoder serves ``tissue_classification`` (class head), ``tumor_segmentation`` (segmentation head) and
``slide_classification`` (its pooled features are the tile embeddings of the ABMIL head).

Weights: ``torch.save({"state_dict": fp16_state_dict, "config": {...}}, "tissue_net.pt")``. Config keys:

=================  ========  ==========================================================================================
key                required  meaning
=================  ========  ==========================================================================================
``architecture``   yes       ``"pathasst-tissue-net"``
``mpp``            yes       microns per pixel the network was trained at (images of known mpp are resampled to it)
``classes``        yes       names of the class head's outputs, in order
``widths``         no        channels per level, stem first (default ``[32, 64, 128, 192, 256]``)
``blocks``         no        residual blocks per level (default ``[1, 1, 2, 2, 2]``)
``decoder``        no (64)   channels of the segmentation decoder
``tile_size``      no (224)  tile side at ``mpp`` (the training image size; a multiple of 32)
``mean``, ``std``  no        per-channel normalisation of RGB in [0, 1]
``ood_threshold``  no        squared Mahalanobis distance of an embedding to the training embeddings above which a
                             tile is out of the training domain (with the buffers ``ood_mean``, ``ood_precision``)
``seg_threshold``  no (0.5)  P(lesion) above which a pixel is lesion
=================  ========  ==========================================================================================

Network: a ResNet-style encoder (stride-2 stem, four stride-2 stages of residual blocks, depthwise-separable from
the third level), global average pooling -> dropout -> linear class head; an FPN-style decoder (1x1 laterals from
stride 32 to 4, summed top-down, two 3x3 convolutions) -> 2 logits (background / lesion), upsampled to the input.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.settings import Settings
from pathasst.core.weights import Checkpoint, read_checkpoint
from pathasst.tools.backends.blocks import conv_blocks
from pathasst.tools.backends.runtime import configure_threads, load_state, predict_padded, torch_device
from pathasst.tools.backends.tiling import dense_tiled

log = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE",
    "EBHI_CLASSES",
    "TissueNet",
    "TissueNetConfig",
    "TilePredictions",
    "build_tissue_net",
    "is_tissue_net_checkpoint",
]

ARCHITECTURE = "pathasst-tissue-net"
#: EBHI-Seg's six diagnostic classes, spelled as its folders (IN = intraepithelial neoplasia)
EBHI_CLASSES = ("Normal", "Polyp", "Low-grade IN", "High-grade IN", "Adenocarcinoma", "Serrated adenoma")
DEFAULT_WIDTHS = (32, 64, 128, 192, 256)
DEFAULT_BLOCKS = (1, 1, 2, 2, 2)
#: the encoder's total stride: tile sides are padded to a multiple of it
STRIDE = 32


def build_tissue_net(
    n_classes: int,
    widths: tuple[int, ...] | list[int] = DEFAULT_WIDTHS,
    blocks: tuple[int, ...] | list[int] = DEFAULT_BLOCKS,
    decoder: int = 64,
    dropout: float = 0.2,
) -> Any:
    """The network (torch imported here). ``forward(x) -> (class logits (N, C), seg logits (N, 2, H, W),
    embedding (N, widths[-1]))``; ``embed(x)`` gives the pooled features alone. H, W multiples of 32."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    if len(widths) != 5 or len(blocks) != 5:
        raise ValueError(f"widths and blocks need 5 levels, got {list(widths)} / {list(blocks)}")

    cbr, Res = conv_blocks()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w, b = list(widths), list(blocks)
            self.stem = nn.Sequential(cbr(3, w[0], 3, 2), *[Res(w[0], False) for _ in range(b[0])])
            self.stages = nn.ModuleList(
                [
                    nn.Sequential(cbr(w[i], w[i + 1], 3, 2), *[Res(w[i + 1], i + 1 >= 2) for _ in range(b[i + 1])])
                    for i in range(4)
                ]
            )
            self.lateral = nn.ModuleList([nn.Conv2d(c, decoder, 1) for c in w[1:]])
            self.seg_head = nn.Sequential(cbr(decoder, decoder), cbr(decoder, decoder), nn.Conv2d(decoder, 2, 1))
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(w[-1], n_classes)
            # out-of-domain statistics of the training embeddings (filled by the trainer; zeros = not fitted)
            self.register_buffer("ood_mean", torch.zeros(w[-1]))
            self.register_buffer("ood_precision", torch.zeros(w[-1], w[-1]))

        def features(self, x: torch.Tensor) -> list[torch.Tensor]:
            f = [self.stem(x)]
            for stage in self.stages:
                f.append(stage(f[-1]))
            return f

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x)[-1].mean((2, 3))

        def segment(self, f: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
            y = self.lateral[-1](f[-1])
            for i in range(len(f) - 2, 0, -1):
                y = F.interpolate(y, size=f[i].shape[-2:], mode="bilinear", align_corners=False) + self.lateral[i - 1](f[i])
            return F.interpolate(self.seg_head(y), size=size, mode="bilinear", align_corners=False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            f = self.features(x)
            emb = f[-1].mean((2, 3))
            return self.classifier(self.dropout(emb)), self.segment(f, x.shape[-2:]), emb

    return Net()


@dataclass
class TissueNetConfig:
    """The metadata a tissue-network checkpoint carries (see the module docstring)."""

    classes: list[str]
    mpp: float
    architecture: str = ARCHITECTURE
    widths: list[int] = field(default_factory=lambda: list(DEFAULT_WIDTHS))
    blocks: list[int] = field(default_factory=lambda: list(DEFAULT_BLOCKS))
    decoder: int = 64
    tile_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    ood_threshold: float | None = None
    seg_threshold: float = 0.5
    #: anything else the trainer recorded (data, split, figures); carried, not interpreted
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> TissueNetConfig:
        arch = ckpt.config.get("architecture")
        if arch != ARCHITECTURE:
            raise WeightsError(f"weights {ckpt.where()} are not a {ARCHITECTURE} checkpoint (architecture {arch!r})")
        classes = ckpt.require("classes", list)
        if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes):
            raise WeightsError(f"weights {ckpt.where()}: 'classes' must be >= 2 distinct names, got {classes!r}")
        mpp = float(ckpt.require("mpp", (int, float)))
        if not 0.05 <= mpp <= 64:
            raise WeightsError(f"weights {ckpt.where()}: mpp {mpp} outside 0.05..64")
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "classes", "mpp")}
        kwargs = {k: ckpt.config[k] for k in known if k in ckpt.config}
        extra = {k: v for k, v in ckpt.config.items() if k not in known and k not in ("classes", "mpp")}
        cfg = cls(classes=list(classes), mpp=mpp, extra=extra, **kwargs)
        if cfg.tile_size % STRIDE or cfg.tile_size < STRIDE:
            raise WeightsError(f"weights {ckpt.where()}: tile_size {cfg.tile_size} is not a multiple of {STRIDE}")
        return cfg


def is_tissue_net_checkpoint(config: dict[str, Any]) -> bool:
    return config.get("architecture") == ARCHITECTURE


@dataclass
class TilePredictions:
    """Per-tile outputs of the class head: ``probabilities`` (N, C), ``ood_distance`` (N,) squared Mahalanobis
    distances of the embeddings (NaN when the checkpoint has no statistics) and the embeddings (N, D)."""

    probabilities: np.ndarray
    ood_distance: np.ndarray
    embeddings: np.ndarray


class TissueNet:
    """A loaded tissue network: :meth:`classify` tiles, :meth:`lesion_probability` of an image, :meth:`embed`."""

    def __init__(self, model: Any, config: TissueNetConfig, device: Any, path: Path | None = None) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.path = path
        self._lock = threading.Lock()
        mean = model.ood_mean.detach().cpu().double().numpy()
        prec = model.ood_precision.detach().cpu().double().numpy()
        self._ood = (mean, prec) if np.any(prec) else None

    @classmethod
    def load(cls, path: Path, setting: str, settings: Settings = None) -> TissueNet:
        import torch

        if settings is not None:
            configure_threads(settings)
        ckpt = read_checkpoint(Path(path), setting, "torch")
        cfg = TissueNetConfig.from_checkpoint(ckpt)
        model = build_tissue_net(len(cfg.classes), cfg.widths, cfg.blocks, cfg.decoder)
        ckpt.state_dict = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
        load_state(model, ckpt, f"a {ARCHITECTURE} with widths {cfg.widths} and {len(cfg.classes)} classes")
        device = torch_device()
        return cls(model.to(device).eval(), cfg, device, Path(path))

    def describe(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.model.parameters())
        return f"{ARCHITECTURE} ({n / 1e6:.2f} M params, {len(c.classes)} classes + lesion map, {c.mpp} um/px)"

    @property
    def embedding_dim(self) -> int:
        return int(self.config.widths[-1])

    # ---- inference ---------------------------------------------------------------------------------------------
    def _tensor(self, tiles: list[np.ndarray]) -> Any:
        """Tiles of one shape (padded by reflection to a multiple of 32) as a normalised NCHW tensor."""
        import torch

        h, w = tiles[0].shape[:2]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
        arr = np.stack([np.pad(t[..., :3], ((0, ph), (0, pw), (0, 0)), mode=mode) for t in tiles])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.config.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    def classify(self, tiles: list[np.ndarray], batch: int = 16) -> TilePredictions:
        """Class probabilities, out-of-domain distances and embeddings of RGB uint8 tiles at the network's mpp
        (tiles of different shapes are run in groups of one shape)."""
        import torch

        n = len(tiles)
        k = len(self.config.classes)
        probs = np.zeros((n, k), np.float64)
        emb = np.zeros((n, self.embedding_dim), np.float64)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tiles):
            groups.setdefault(t.shape[:2], []).append(i)
        with self._lock, torch.inference_mode():
            for idx in groups.values():
                for s in range(0, len(idx), batch):
                    part = idx[s : s + batch]
                    e = self.model.embed(self._tensor([tiles[i] for i in part]))
                    p = torch.softmax(self.model.classifier(e), dim=1)
                    probs[part] = p.double().cpu().numpy()
                    emb[part] = e.double().cpu().numpy()
        return TilePredictions(probs, self.ood_distance(emb), emb)

    def ood_distance(self, emb: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of embeddings to the training embeddings (NaN without statistics)."""
        if self._ood is None:
            return np.full(len(emb), np.nan)
        mean, prec = self._ood
        d = np.asarray(emb, np.float64) - mean
        return np.einsum("ij,jk,ik->i", d, prec, d)

    def embed(self, tiles: list[np.ndarray], batch: int = 16) -> np.ndarray:
        """Pooled encoder features ``(N, D)`` of RGB uint8 tiles at the network's mpp."""
        return self.classify(tiles, batch).embeddings

    def _lesion_tiles(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        def forward(x: Any) -> Any:
            f = self.model.features(x)
            return torch.softmax(self.model.segment(f, x.shape[-2:]), dim=1)[:, 1:2]

        with self._lock:
            return predict_padded(tiles, forward, STRIDE, tuple(self.config.mean), tuple(self.config.std), self.device)

    def lesion_probability(self, rgb: np.ndarray, tile: int | None = None, overlap: int = 64) -> np.ndarray:
        """``(H, W)`` P(lesion) of an RGB image at the network's mpp: tiles of ``tile`` px (default twice the
        training size) overlapping by ``overlap`` px, blended linearly across the overlap (no seams)."""
        t = tile or 2 * self.config.tile_size
        return dense_tiled(rgb, self._lesion_tiles, 1, t, overlap, batch=4)[0]
