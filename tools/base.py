"""The tool contract: every pathology sub-model is a ``PathologyTool`` with a typed input and output model.

A tool declares ``name``, ``description``, ``version``, ``input_model`` and ``output_model`` as class attributes,
loads its model lazily in ``_load`` (never at import or construction), and implements ``analyze``. Calling a tool
from the planner goes through :func:`call_tool`, the single place where arguments are validated, the image is
resolved, errors are typed and converted to planner messages, and a :class:`ToolCallRecord` is written for the trace.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathasst.core.deadline import call_deadline
from pathasst.core.errors import ToolCallError, ToolError, ToolExecutionError, to_planner_message
from pathasst.core.imaging import ImageData
from pathasst.core.regions import Region
from pathasst.core.settings import Settings
from pathasst.core.weights import file_sha256
from pathasst.tools.planning import PlanningHints

__all__ = [
    "sig",
    "ImageResolver",
    "PathologyTool",
    "ToolCallRecord",
    "ToolInput",
    "ToolOutput",
    "ToolResult",
    "bounded_arguments",
    "call_tool",
]


class ToolInput(BaseModel):
    """Fields every tool call has. Subclasses add the tool's own parameters."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(..., description="Name of the case image or slide to analyse, exactly as listed in the case.")
    region: Region | None = Field(
        None, description="Optional level-0 rectangle to analyse; default: the whole image (tissue area for slides)."
    )


class ToolOutput(BaseModel):
    """Fields every tool output has. Subclasses add the tool's measurements."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["ok", "not_configured"] = Field("ok", description="'not_configured' when weights are missing.")
    message: str | None = Field(None, description="Human-readable note, e.g. which setting to configure.")
    backend: str = Field("classical", description="Backend that produced this output.")


@dataclass
class ToolResult:
    """What ``analyze`` returns: the typed output plus array artifacts (never sent to the planner)."""

    output: ToolOutput
    labels: np.ndarray | None = None  # instance label map (0 = background), same H x W as the analysed pixels
    mask: np.ndarray | None = None  # boolean or class mask, same H x W
    overlay: np.ndarray | None = None  # RGB uint8 overlay of the analysed pixels
    features: list[dict[str, Any]] = field(default_factory=list)  # GeoJSON features, level-0 coordinates


ImageResolver = Callable[[str, Region | None, float | None], ImageData]
"""``resolver(image_name, region, working_mpp) -> ImageData``; raises ``ToolCallError`` for unknown images."""


class PathologyTool(ABC):
    """Base class of the pathology tools. Subclasses set the class attributes and implement ``analyze``."""

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = "0.1.0"
    input_model: ClassVar[type[ToolInput]] = ToolInput
    output_model: ClassVar[type[ToolOutput]] = ToolOutput
    #: microns per pixel the tool works at on whole slides (None = native resolution / thumbnail-level)
    working_mpp: ClassVar[float | None] = None
    #: True if the tool produces an instance label map (``tools predict`` writes it as a 16-bit PNG)
    segmentation: ClassVar[bool] = False
    #: settings field holding the weights path, if the tool has a deep backend
    weights_setting: ClassVar[str | None] = None
    #: output fields quoted in the templated answer (default: the first few scalar fields)
    headline_fields: ClassVar[tuple[str, ...]] = ()
    #: what planners need to call this tool: trigger patterns, example requests, its place in a plan
    planning: ClassVar[PlanningHints] = PlanningHints()

    def __init__(self, settings: Settings) -> None:
        if settings is None:
            raise ToolError(f"tool {self.name} needs the settings: build tools through "
                            "pathasst.agent.system.build_system(settings) or ToolRegistry(settings)")
        self.settings = settings
        self._loaded = False

    # ---- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load models on first use (idempotent)."""
        if not self._loaded:
            self._load()
            self._loaded = True

    def _load(self) -> None:  # pragma: no cover - classical tools have nothing to load
        """Override to load weights. Raise ``WeightsError`` naming the setting on a bad file."""

    # ---- the work ------------------------------------------------------------------------------
    @abstractmethod
    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        """Analyse ``image`` with validated ``args`` and return the typed result."""

    def summarize(self, output: ToolOutput) -> str:
        """A short text for the planner (the full output goes to the trace). Override for a better one."""
        data = output.model_dump(exclude={"status", "message", "backend"}, exclude_none=True)
        scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))}
        body = ", ".join(f"{k}={_fmt(v)}" for k, v in list(scalars.items())[:12])
        if output.status != "ok":
            return f"{self.name}: {output.status}: {output.message}"
        return f"{self.name}: {body}" if body else f"{self.name}: done"

    # ---- metadata ------------------------------------------------------------------------------
    def weights_path(self) -> Path | None:
        if self.weights_setting is None:
            return None
        value = getattr(self.settings, self.weights_setting, None)
        return Path(value) if value else None

    def model_info(self) -> dict[str, Any]:
        """Model name, version, backend and weights checksum, for reports."""
        path = self.weights_path()
        return {
            "tool": self.name,
            "version": self.version,
            "weights": str(path) if path else None,
            "weights_sha256": file_sha256(path) if path and path.is_file() else None,
        }

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return cls.input_model.model_json_schema()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class ToolCallRecord(BaseModel):
    """One tool call in the trace: inputs, outputs, timing, version, and what the planner was told."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    id: str = Field(default_factory=lambda: "call_" + uuid.uuid4().hex[:10])
    tool: str
    arguments: dict[str, Any]
    status: Literal["ok", "not_configured", "bad_call", "failed"]
    output: dict[str, Any] | None = None
    summary: str = Field(..., description="What the planner was told.")
    error: str | None = None
    duration_s: float = 0.0
    tool_version: str | None = None
    model: dict[str, Any] | None = None
    image: str | None = None
    image_origin: tuple[float, float] | None = None
    image_scale: float | None = None
    image_mpp: float | None = None
    notes: list[str] = Field(default_factory=list, description="Notes on the analysed pixels (e.g. window chosen).")


def bounded_arguments(arguments: dict[str, Any], limit: int = 1000) -> dict[str, Any]:
    """``arguments`` as a record keeps them: string values cut to ``limit`` characters (no echo of huge input)."""
    return {str(k)[:limit]: (v if not isinstance(v, str) or len(v) <= limit else f"{v[:limit]}... ({len(v)} characters)")
            for k, v in arguments.items()}


def call_tool(
    tool: PathologyTool, arguments: dict[str, Any], resolver: ImageResolver, call_id: str | None = None,
    timeout_s: float | None = None, cancel: threading.Event | None = None,
) -> tuple[ToolCallRecord, ToolResult | None]:
    """Validate, resolve, run and record one tool call. Never raises for tool-side problems. With ``timeout_s`` (or
    once ``cancel`` is set) the call stops at its next step (:mod:`pathasst.core.deadline`) and fails with the
    reason."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"tool": tool.name, "arguments": bounded_arguments(arguments), "tool_version": tool.version}
    if call_id:
        rec["id"] = call_id
    try:
        try:
            args = tool.input_model.model_validate(arguments)
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            raise ToolCallError(f"invalid arguments ({errs})") from exc
        with call_deadline(timeout_s, cancel):
            image = resolver(args.image, args.region, tool.working_mpp)
            try:
                tool.load()
                result = tool.analyze(image, args)
            except ToolError:
                raise
            except (MemoryError, ValueError, RuntimeError, OSError, ArithmeticError, IndexError, TypeError,
                    ImportError) as exc:
                raise ToolExecutionError(f"{type(exc).__name__}: {exc}") from exc
    except ToolError as exc:
        status = "bad_call" if isinstance(exc, ToolCallError) else "failed"
        record = ToolCallRecord(
            **rec,
            status=status,
            summary=to_planner_message(tool.name, exc),
            error=str(exc),
            duration_s=time.perf_counter() - t0,
        )
        return record, None
    out = result.output
    record = ToolCallRecord(
        **rec,
        status=out.status,
        output=out.model_dump(mode="json"),
        summary=tool.summarize(out),
        duration_s=time.perf_counter() - t0,
        model={**tool.model_info(), "backend": out.backend},
        image=image.name,
        image_origin=tuple(image.origin),
        image_scale=image.scale,
        image_mpp=image.mpp,
        notes=list(image.notes),
    )
    return record, result


def sig(x: float | None, digits: int = 4) -> float | None:
    """Round to ``digits`` significant digits and return a plain float (None stays None)."""
    if x is None:
        return None
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")
