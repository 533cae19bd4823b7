"""Stain, scanner and image-quality augmentation shared by the project's trainers (numpy, float images in [0, 1]).

* :func:`colour_jitter`: HED stain jitter (each stain's optical density scaled and shifted after colour
  deconvolution), brightness / contrast / saturation / hue jitter, sometimes blur and noise;
* :func:`jpeg_round_trip`: a JPEG re-encoding at a random quality (scanner compression);
* :func:`dihedral`: one of the 8 flips / rotations, applied alike to an image and its masks.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["colour_jitter", "dihedral", "jpeg_round_trip"]

_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HED stain jitter, brightness / contrast / saturation / hue jitter, sometimes blur and noise; float [0, 1]."""
    from scipy import ndimage as ndi

    x = rgb.astype(np.float32) / 255.0
    if rng.random() < 0.9:
        od = -np.log(np.clip(x, 1 / 255, 1.0))
        c = od.reshape(-1, 3) @ _HED_FROM_RGB
        c = c * rng.uniform(0.7, 1.3, 3).astype(np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32) * c.std(0)
        x = np.exp(-(c @ _RGB_FROM_HED)).reshape(x.shape)
    if rng.random() < 0.8:
        x = x + rng.uniform(-0.1, 0.1)
        m = x.mean()
        x = (x - m) * rng.uniform(0.75, 1.25) + m
        g = x.mean(-1, keepdims=True)
        x = g + (x - g) * rng.uniform(0.6, 1.4)
    if rng.random() < 0.5:  # hue: rotate chroma around the grey axis
        a = rng.uniform(-0.25, 0.25)
        k = np.ones(3, np.float32) / np.sqrt(3)
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], np.float32)
        rot = np.eye(3, dtype=np.float32) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
        x = x @ rot.T
    if rng.random() < 0.2:
        x = ndi.gaussian_filter(x, (rng.uniform(0.3, 1.2),) * 2 + (0,))
    if rng.random() < 0.2:
        x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32)


def jpeg_round_trip(x: np.ndarray, rng: np.random.Generator, quality: tuple[int, int] = (40, 95)) -> np.ndarray:
    """``x`` (float RGB in [0, 1]) encoded as JPEG at a random quality in ``quality`` and decoded again."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=int(rng.integers(quality[0], quality[1] + 1)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def dihedral(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / transpose of every array (first two axes are y, x)."""
    if rng.random() < 0.5:
        arrays = [a.swapaxes(0, 1) for a in arrays]
    if rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if rng.random() < 0.5:
        arrays = [a[::-1] for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]
