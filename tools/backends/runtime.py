"""What every deep backend shares: device and threads, loading a checkpoint into a module, resampling, padded
prediction. Reading weights files is :mod:`pathasst.core.weights`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData
from pathasst.core.settings import Settings
from pathasst.core.weights import Checkpoint

__all__ = [
    "predict_padded",
    "configure_threads",
    "load_state",
    "resample",
    "torch_device",
    "working_image",
]


def torch_device() -> Any:
    """``cuda`` when torch sees a GPU, else ``cpu`` (never hard-coded)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: /proc/cpuinfo flags of CPUs that compute bfloat16 natively (x86 AVX512-BF16 / AMX, Arm's BF16 extension)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU does bfloat16 arithmetic natively (from the flags of ``/proc/cpuinfo``, or of ``cpuinfo``):
    True / False, None when that cannot be read (not Linux). Without it torch emulates bfloat16, several times
    slower than float32 (measured 6x for the nuclei network on an AVX2-only CPU)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    flags = {f for line in cpuinfo.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
             for f in line.partition(":")[2].split()}
    if not flags:
        return None
    return bool(flags & NATIVE_BF16_FLAGS)


def configure_threads(settings: Settings) -> None:
    """Apply ``Settings.torch_threads`` (None = torch's default) to torch's intra-op pool."""
    threads = getattr(settings, "torch_threads", None)
    if threads:
        import torch

        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))


def load_state(module: Any, ckpt: Checkpoint, what: str) -> None:
    """``module.load_state_dict(ckpt.state_dict, strict=True)`` with a WeightsError that lists the mismatch."""
    try:
        module.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        own = set(module.state_dict())
        missing, unexpected = sorted(own - set(ckpt.state_dict)), sorted(set(ckpt.state_dict) - own)
        detail = (
            f"missing {len(missing)} keys (e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]})"
            if missing or unexpected
            else str(exc).splitlines()[-1].strip()[:300]
        )
        raise WeightsError(f"weights {ckpt.where()} do not fit {what}: {detail}") from exc


def resample(rgb: np.ndarray, factor: float, order: int = 1) -> np.ndarray:
    """Rescale an image by ``factor`` (>1 enlarges); no-op within 2 %. uint8 in, uint8 out for RGB."""
    if abs(factor - 1.0) <= 0.02:
        return rgb
    from skimage.transform import rescale

    arr = np.asarray(rgb)
    out = rescale(
        arr, factor, order=order, channel_axis=-1 if arr.ndim == 3 else None, anti_aliasing=factor < 1,
        preserve_range=True,
    )
    if arr.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out.astype(arr.dtype)


def working_image(image: ImageData, target_mpp: float | None, tolerance: float = 0.1) -> ImageData:
    """``image`` resampled to ``target_mpp`` (kept as is when its mpp is unknown or within ``tolerance``).

    The result maps to the same level-0 coordinates (``origin`` kept, ``scale`` adjusted to the new pixel size).
    """
    if target_mpp is None or image.mpp is None:
        return image
    factor = image.mpp / target_mpp
    if abs(factor - 1.0) <= tolerance:
        return image
    h, w = image.shape
    pixels = resample(image.pixels, factor)
    nh, nw = pixels.shape[:2]
    actual = 0.5 * (nh / h + nw / w)
    return ImageData(
        pixels=pixels,
        name=image.name,
        mpp=image.mpp / actual,
        origin=image.origin,
        scale=image.scale / actual,
        notes=list(image.notes),
    )


def predict_padded(
    tiles: list[np.ndarray],
    forward: Any,
    multiple: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: Any,
) -> list[np.ndarray]:
    """Run a fully convolutional ``forward`` (NCHW float tensor -> NCHW tensor) over RGB uint8 ``tiles``.

    Tiles of one batch share a shape except at an image's far edges, so they are grouped by shape; each group is
    padded (reflect, or edge when the tile is too small to reflect) to a multiple of ``multiple``, normalised
    (``/255``, then ``mean``/``std``), run in one batch, and cropped back. Returns one ``(C, h, w)`` array per tile.
    """
    import torch

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tiles):
        groups.setdefault(t.shape[:2], []).append(i)
    result: dict[int, np.ndarray] = {}
    for (h, w), idx in groups.items():
        ph, pw = (-h) % multiple, (-w) % multiple
        mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
        arr = np.stack([np.pad(tiles[i][..., :3], ((0, ph), (0, pw), (0, 0)), mode=mode) for i in idx])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        x = ((x - mean_t) / std_t).to(device)
        with torch.inference_mode():
            p = forward(x)[:, :, :h, :w].float().cpu().numpy()
        for k, i in enumerate(idx):
            result[i] = p[k]
    return [result[i] for i in range(len(tiles))]
