"""Shared behaviour of the deep-learning tools: weights-file checks and the honest 'not configured' path.

A deep tool reads its weights path from one settings field (``weights_setting``). Three cases:

* the setting is empty: a tool with an embedded backend (shipped weights the project trained, see
  :meth:`DeepTool.shipped_weights`) answers with it (``_analyze_embedded``); one without returns its output with
  ``status="not_configured"``, a message naming the environment variable to set, and every measurement
  ``None``/empty (never an invented number);
* the setting names a file that is missing, empty, unreadable or not of the expected format: ``_load`` raises
  :class:`WeightsError` naming the setting and its environment variable;
* the file is valid: ``_load_backend`` builds the model (the backends live in :mod:`pathasst.tools.backends`;
  a tool without one raises :class:`ToolExecutionError` saying so). A file of the right kind whose content does not
  fit the backend (wrong architecture, missing metadata) also raises :class:`WeightsError` naming the setting.

Format checks read only a few bytes (and, for torch zip archives, the zip directory); nothing heavy is imported.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult
from pathasst.tools.errors import ToolExecutionError, WeightsError
from pathasst.tools.imaging import ImageData

__all__ = [
    "WEIGHTS_SUFFIXES",
    "DeepTool",
    "WeightsFormat",
    "check_weights_file",
    "settings_env_var",
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


class DeepTool(PathologyTool):
    """A tool whose only backend is a network loaded from ``weights_setting``.

    Subclasses set ``weights_setting``, ``weights_suffixes``, ``weights_kind`` (words for the message, e.g.
    ``"a YOLO .pt file"``) and ``backend_name``, and implement ``_load_backend`` / ``_analyze_deep`` when a backend
    exists. Every measurement field of their output model must default to None or empty.
    """

    weights_setting: ClassVar[str]
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth")
    weights_kind: ClassVar[str] = "a weights file"
    backend_name: ClassVar[str] = "deep"

    def configured_weights(self) -> Path | None:
        """The configured weights path, or None when the setting is empty."""
        path = self.weights_path()
        if path is None or str(path) in ("", "."):
            return None
        return path

    def not_configured_message(self) -> str:
        return f"not configured: set {settings_env_var(self.weights_setting)} to {self.weights_kind}"

    def _load(self) -> None:
        path = self.configured_weights()
        if path is None:
            return
        fmt = check_weights_file(path, self.weights_setting, self.weights_suffixes)
        self._load_backend(path, fmt)

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
        """Build the network from a checked weights file. Imports of torch etc. belong here."""
        raise ToolExecutionError(
            f"{self.backend_name} backend not implemented in this version "
            f"(weights {path.name} from {settings_env_var(self.weights_setting)} are valid but cannot be used yet)"
        )

    #: what the loaded backend is (architecture, classes); set by ``_load_backend``, reported by ``model_info``
    model_description: str | None = None

    def model_info(self) -> dict[str, Any]:
        """Base info (tool, version, weights, sha256) plus, once loaded, a description of the model."""
        from pathasst.tools.base import file_sha256

        info = super().model_info()
        shipped = self.shipped_weights() if self.configured_weights() is None else None
        if shipped is not None:  # 'weights' stays the user's setting (None)
            info["shipped_weights"] = f"pathasst/tools/weights/{shipped.name}"
            info["shipped_weights_sha256"] = file_sha256(shipped)
        if self.model_description:
            info["model"] = self.model_description
        return info

    def not_configured_output(self, image: ImageData, args: ToolInput) -> ToolOutput:
        """The typed output for an unconfigured tool: status, message, and no measurements."""
        return self.output_model(status="not_configured", message=self.not_configured_message(), backend="none")

    # ---- the embedded backend (answers when the weights setting is empty) ---------------------------------------
    def shipped_weights(self) -> Path | None:
        """The embedded backend's weights file shipped with the package, or None when the tool has none."""
        return None

    def _analyze_embedded(self, image: ImageData, args: ToolInput) -> ToolResult:
        raise ToolExecutionError(f"{self.name} has no embedded backend")

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        if self.configured_weights() is None:
            if self.shipped_weights() is not None:
                return self._analyze_embedded(image, args)
            return ToolResult(output=self.not_configured_output(image, args))
        self.load()
        return self._analyze_deep(image, args)

    def _analyze_deep(self, image: ImageData, args: ToolInput) -> ToolResult:
        raise ToolExecutionError(f"{self.backend_name} backend not implemented in this version")
