"""What every deep backend shares: device and threads, reading checkpoints with their metadata, resampling.

Checkpoint metadata (class names, input resolution, label names) travels with the weights in one of two ways:

* a **dict checkpoint** ``{"state_dict": {...tensors...}, "config": {...JSON-able...}}`` saved with ``torch.save``;
* a **JSON sidecar** next to the weights: same stem, suffix ``.json`` (``unet.pt`` + ``unet.json``); required for
  ``.safetensors`` files and for plain state dicts. When both exist the sidecar wins (it is easier to edit).

Checkpoints are read with ``torch.load(weights_only=True)`` (no code execution) or ``safetensors``. Every problem with
the file raises :class:`~pathasst.tools.errors.WeightsError` naming the setting and its environment variable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathasst.tools.deep import WeightsFormat, settings_env_var
from pathasst.tools.errors import WeightsError
from pathasst.tools.imaging import ImageData

if TYPE_CHECKING:
    from pathasst.agent.settings import Settings

__all__ = [
    "predict_padded",
    "Checkpoint",
    "configure_threads",
    "describe_setting",
    "load_state",
    "read_checkpoint",
    "resample",
    "sidecar_path",
    "torch_device",
    "working_image",
]


def describe_setting(setting: str, path: Path) -> str:
    """``PATHASST_X (x) = '/path'``: how every weights error names its setting."""
    return f"{settings_env_var(setting)} ({setting}) = {str(path)!r}"


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


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a weights file: same folder and stem, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: Path, where: str) -> dict[str, Any]:
    """The JSON object in the sidecar of weights ``path`` ({} when there is none); ``WeightsError`` naming the
    setting (``where``) when it is unreadable or not an object."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        loaded = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the sidecar {side} of {where}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise WeightsError(f"the sidecar {side} of {where} must hold a JSON object")
    return loaded


def sidecar_number(cfg: Mapping[str, Any], key: str, default: float, lo: float, hi: float, where: str) -> float:
    """``cfg[key]`` as a float in ``lo..hi`` (``default`` when absent); ``WeightsError`` naming ``where`` else."""
    if key not in cfg:
        return default
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
        raise WeightsError(f"sidecar of {where}: {key} must be a number in {lo:g}..{hi:g}, got {v!r}")
    return float(v)


class Checkpoint:
    """Tensors and metadata of a checkpoint: ``state_dict`` (name -> tensor) and ``config`` (dict, maybe empty)."""

    def __init__(self, state_dict: dict[str, Any], config: dict[str, Any], path: Path, setting: str) -> None:
        self.state_dict = state_dict
        self.config = config
        self.path = path
        self.setting = setting

    def where(self) -> str:
        return describe_setting(self.setting, self.path)

    def require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        """``config[key]``, checked to be of ``kind``; WeightsError naming the setting otherwise."""
        if key not in self.config:
            raise WeightsError(
                f"weights {self.where()} lack {key!r} in their config (give it in the checkpoint's 'config' or in "
                f"the sidecar {sidecar_path(self.path).name})"
            )
        value = self.config[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise WeightsError(f"weights {self.where()}: config {key!r} = {value!r} has the wrong type")
        return value


def read_checkpoint(path: Path, setting: str, fmt: WeightsFormat, sidecar: bool = True) -> Checkpoint:
    """Read a state dict (plain, or ``{"state_dict", "config"}``) and its config (sidecar JSON wins).

    ``fmt`` is what :func:`~pathasst.tools.deep.check_weights_file` found. Raises ``WeightsError``.
    """
    import torch

    path = Path(path)
    where = describe_setting(setting, path)
    try:
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw: Any = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
                meta = f.metadata() or {}
            if "config" in meta:  # optional: config stored as JSON in the safetensors header metadata
                raw = {"state_dict": raw, "config": json.loads(meta["config"])}
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a bad file; all mean "unreadable"
        raise WeightsError(f"cannot read weights {where}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    config: dict[str, Any] = {}
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        cfg = raw.get("config", {})
        if not isinstance(cfg, Mapping):
            raise WeightsError(f"weights {where}: 'config' must be a dict, got {type(cfg).__name__}")
        config = dict(cfg)
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(
            f"weights {where} are not a state dict of tensors (nor {{'state_dict': ..., 'config': ...}}); "
            f"got {type(raw).__name__}"
        )
    state = dict(raw)
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    if sidecar:
        config = {**config, **read_sidecar(path, where)}
    return Checkpoint(state, config, path, setting)


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
