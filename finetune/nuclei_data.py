"""Training data of the nuclei network: CoNSeP tiles as samples with their targets (nucleus mask, HoVer-Net HV maps,
type map) and the augmentation of :mod:`pathasst.finetune.nuclei_net` (scale, crop, dihedral flips with the HV maps
transformed alike, stain and colour jitter, blur, noise, low-resolution scans)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathasst.finetune.augment import colour_jitter
from pathasst.tools.evaluate import rescale_tile

__all__ = ["DEFAULT_VAL_SOURCES", "HV_TARGETS", "Sample", "augment", "hv_map", "load_samples", "rescale_tile"]

DEFAULT_VAL_SOURCES = (2, 11)


# ---- targets -------------------------------------------------------------------------------------------------------
def hv_map(labels: np.ndarray) -> np.ndarray:
    """HoVer-Net HV targets ``(2, H, W)`` float32: per nucleus, x (channel 0) and y (channel 1) offsets from its
    centroid, negative and positive sides each scaled to [-1, 0] / [0, 1]."""
    from scipy import ndimage as ndi

    out = np.zeros((2, *labels.shape), np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        obj = labels[sl] == i
        ys, xs = np.nonzero(obj)
        if ys.size < 2:
            continue
        cy, cx = ys.mean(), xs.mean()
        for c, d in ((0, xs - cx), (1, ys - cy)):
            d = d.astype(np.float32)
            neg, pos = d < 0, d > 0
            if neg.any():
                d[neg] /= -d[neg].min()
            if pos.any():
                d[pos] /= d[pos].max()
            out[c][sl][ys, xs] = d
    return out


@dataclass
class Sample:
    """One tile: RGB uint8 ``(H, W, 3)``, instance labels, HV targets, type map (0..4)."""

    name: str
    rgb: np.ndarray
    labels: np.ndarray
    hv: np.ndarray
    types: np.ndarray

    def true_types(self) -> dict[int, int]:
        """Type code of every labelled nucleus (``{id: 0..4}``)."""
        ids, first = np.unique(self.labels.ravel(), return_index=True)
        codes = self.types.ravel()[first]
        return {int(i): int(c) for i, c in zip(ids, codes) if i > 0}


def load_samples(data_dir: Path, names: list[str], scale: float = 1.0) -> list[Sample]:
    """Read tiles and compute their targets once; ``scale`` != 1 resamples each tile first (:func:`rescale_tile`:
    the samples of a network working at ``0.25 / scale`` um/px)."""
    from pathasst.finetune.nuclei_pixel import _load_tile
    from pathasst.tools.metrics import remap_label

    out = []
    for name in names:
        rgb, raw = rescale_tile(*_load_tile(data_dir, name), scale)
        labels = remap_label(raw).astype(np.int32)  # 1..N in increasing order of the original ids
        tmap = np.zeros(labels.shape, np.int64)
        tpath = data_dir / "types" / f"{name}.json"
        if tpath.is_file():
            codes = json.loads(tpath.read_text())["inst_type"]
            lut = np.zeros(labels.max() + 1, np.int64)
            lut[1 : 1 + len(codes)] = np.clip(codes[: labels.max()], 0, 4)
            tmap = lut[labels]
        out.append(Sample(name, np.ascontiguousarray(rgb[..., :3]), labels, hv_map(labels), tmap))
    return out


# ---- augmentation --------------------------------------------------------------------------------------------------
def _dihedral(rgb: np.ndarray, hv: np.ndarray, lab: np.ndarray, tp: np.ndarray, rng: np.random.Generator) -> tuple:
    h, v = hv[0], hv[1]
    if rng.random() < 0.5:  # transpose: x <-> y
        rgb, lab, tp = rgb.transpose(1, 0, 2), lab.T, tp.T
        h, v = v.T, h.T
    if rng.random() < 0.5:  # flip x
        rgb, lab, tp, h, v = rgb[:, ::-1], lab[:, ::-1], tp[:, ::-1], -h[:, ::-1], v[:, ::-1]
    if rng.random() < 0.5:  # flip y
        rgb, lab, tp, h, v = rgb[::-1], lab[::-1], tp[::-1], h[::-1], -v[::-1]
    return rgb, np.stack([h, v]), lab, tp


#: where the HV targets of a training crop come from: ``crop`` = computed on the crop's own instance map, so a nucleus
#: the crop cuts points at the centre of its visible part, as at inference (HoVer-Net's order: crop, then targets);
#: ``tile`` = cut out of the whole tile's targets (releases up to 0.6.0 trained so)
HV_TARGETS = ("crop", "tile")


def augment(s: Sample, crop: int, rng: np.random.Generator, lowres: float = 0.0,
            hv_targets: str = "crop") -> tuple[np.ndarray, ...]:
    """(rgb float (3, c, c) in [0, 1], np (c, c), hv (2, c, c), tp (c, c)) of a random augmented crop; with
    probability ``lowres`` the image is also scanned down by 1.5-2.2x and brought back (20x-like detail).
    ``hv_targets``: see :data:`HV_TARGETS`."""
    import torch
    from torch.nn import functional as F

    H, W = s.labels.shape
    scale = rng.uniform(0.875, 1.25)
    src = min(int(round(crop / scale)), H, W)
    y0, x0 = rng.integers(0, H - src + 1), rng.integers(0, W - src + 1)
    sl = (slice(y0, y0 + src), slice(x0, x0 + src))
    if hv_targets not in HV_TARGETS:
        raise ValueError(f"hv_targets must be one of {HV_TARGETS}, not {hv_targets!r}")
    hv_src = hv_map(s.labels[sl]) if hv_targets == "crop" else s.hv[:, sl[0], sl[1]]
    rgb, hv, lab, tp = _dihedral(s.rgb[sl], hv_src, s.labels[sl], s.types[sl], rng)
    rgb = colour_jitter(np.ascontiguousarray(rgb), rng).transpose(2, 0, 1)
    fg = (lab > 0).astype(np.float32)
    if src != crop:
        t = torch.from_numpy(np.concatenate([rgb, np.ascontiguousarray(hv)], 0))[None]
        t = F.interpolate(t, size=(crop, crop), mode="bilinear", align_corners=False)[0].numpy()
        rgb, hv = t[:3], t[3:]
        idx = np.round(np.linspace(0, src - 1, crop)).astype(np.int64)
        fg, tp = fg[np.ix_(idx, idx)], np.ascontiguousarray(tp)[np.ix_(idx, idx)]
        hv = hv * fg[None]
    if lowres > 0 and rng.random() < lowres:  # a lower-resolution scan (e.g. 20x) brought up to the model's mpp
        f = rng.uniform(1.5, 2.2)
        t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))[None]
        small = F.interpolate(t, scale_factor=1 / f, mode="bilinear", antialias=True, align_corners=False)
        rgb = F.interpolate(small, size=(crop, crop), mode="bilinear", align_corners=False)[0].clamp(0, 1).numpy()
    return (np.ascontiguousarray(rgb), np.ascontiguousarray(fg).astype(np.int64), np.ascontiguousarray(hv),
            np.ascontiguousarray(tp))
