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

from pathlib import Path
from typing import Any, ClassVar

from pathasst.core.errors import ToolExecutionError
from pathasst.core.imaging import ImageData
from pathasst.core.weights import WeightsFormat, check_weights_file, file_sha256, settings_env_var
from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult

__all__ = [
    "DeepTool",
]


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
