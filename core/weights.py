"""Weights IO, the one place that reads weights files: format checks, checkpoints with their metadata, hashes.

Checkpoint metadata (class names, input resolution, label names) travels with the weights in one of two ways:

* a **dict checkpoint** ``{"state_dict": {...tensors...}, "config": {...JSON-able...}}`` saved with ``torch.save``;
* a **JSON sidecar** next to the weights: same stem, suffix ``.json`` (``unet.pt`` + ``unet.json``); required for
  ``.safetensors`` files and for plain state dicts. When both exist the sidecar wins (it is easier to edit).

Files are read with ``torch.load(weights_only=True)`` (no code execution), ``safetensors`` or ``numpy.load`` without
pickles. Every problem raises :class:`~pathasst.core.errors.WeightsError` naming the setting and its environment
variable. Format checks read only a few bytes (and, for torch zip archives, the zip directory); torch is imported
only when a checkpoint is read.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pathasst.core.errors import WeightsError

__all__ = [
    "WEIGHTS_SUFFIXES",
    "Checkpoint",
    "WeightsFormat",
    "check_weights_file",
    "describe_setting",
    "file_sha256",
    "load_torch_file",
    "read_checkpoint",
    "read_sidecar",
    "settings_env_var",
    "sidecar_number",
    "sidecar_path",
    "sniff_weights_format",
]

WeightsFormat = Literal["torch", "safetensors"]

#: file suffix -> the format its bytes must have
WEIGHTS_SUFFIXES: dict[str, WeightsFormat] = {
    ".pt": "torch",
    ".pth": "torch",
    ".ckpt": "torch",
    ".bin": "torch",
    ".safetensors": "safetensors",
}

_FORMAT_WORDS: dict[WeightsFormat, str] = {
    "torch": "a torch checkpoint (zip archive with data.pkl, or legacy pickle)",
    "safetensors": "a safetensors file",
}


def settings_env_var(setting: str) -> str:
    """The environment variable of a settings field: ``mitosis_weights`` -> ``PATHASST_MITOSIS_WEIGHTS``."""
    return f"PATHASST_{setting.upper()}"


def sniff_weights_format(path: Path, head: bytes, size: int) -> WeightsFormat | None:
    """The format the first bytes of ``path`` show, or None when they match none we know."""
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return "torch" if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names) else None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch"  # legacy (pre-1.6) torch.save: a pickle stream
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return None


def check_weights_file(path: Path, setting: str, suffixes: tuple[str, ...]) -> WeightsFormat:
    """Check that ``path`` exists, is a non-empty readable file of an accepted kind; return its format.

    Raises :class:`WeightsError` whose message names the setting, its environment variable and the path.
    """
    where = f"{settings_env_var(setting)} ({setting}) = {str(path)!r}"
    if not path.exists():
        raise WeightsError(f"weights file not found: {where}")
    if not path.is_file():
        raise WeightsError(f"weights path is not a file: {where}")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise WeightsError(f"weights file {where} has suffix {suffix!r}; expected one of {', '.join(suffixes)}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {where}: {exc}") from exc
    if size == 0:
        raise WeightsError(f"weights file is empty: {where}")
    expected = WEIGHTS_SUFFIXES[suffix]
    found = sniff_weights_format(path, head, size)
    if found != expected:
        got = f"looks like {_FORMAT_WORDS[found]}" if found else "unrecognised or corrupt content"
        raise WeightsError(f"weights file {where} is not {_FORMAT_WORDS[expected]} ({got})")
    return found


def describe_setting(setting: str, path: Path) -> str:
    """``PATHASST_X (x) = '/path'``: how every weights error names its setting; a command-line option (``--x``) is
    named as it is."""
    if setting.startswith("-"):
        return f"{setting} {str(path)!r}"
    return f"{settings_env_var(setting)} ({setting}) = {str(path)!r}"


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

    ``fmt`` is what :func:`check_weights_file` found. Raises ``WeightsError``.
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
            raw = load_torch_file(path, where)
    except WeightsError:
        raise
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


_SHA_CACHE: dict[tuple[str, float, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, mtime, size)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def load_torch_file(path: Path, where: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; ``WeightsError`` naming ``where`` when it cannot be read."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; all mean "unreadable"
        raise WeightsError(f"cannot read weights {where}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc

