"""What the Library and Tools pages show: the case library of ``pathasst.memory`` and the tool catalogue."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

import pathasst.memory as memory
from pathasst.agent.outputs import OutputLayout
from pathasst.core.cases import Case, CaseError
from pathasst.core.settings import Settings
from pathasst.core.weights import file_sha256

__all__ = [
    "CaseLibrary",
    "LibraryStatus",
    "ToolInfo",
    "add_cases",
    "library_status",
    "open_case_library",
    "tool_infos",
]


@runtime_checkable
class CaseLibrary(Protocol):
    """What the app needs from ``pathasst.memory.open_library(settings)``."""

    def add_case(self, case: Case) -> Any:
        """Embed and store one case (idempotent); may return an object with ``status``/``reason``/``images``."""

    def stats(self) -> dict[str, Any]:
        """Counts and facts to show (flat scalars): cases, images, embedder, location ..."""


class LibraryStatus(BaseModel):
    available: bool
    message: str
    stats: dict[str, Any] = Field(default_factory=dict)


class ToolInfo(BaseModel):
    name: str
    version: str
    description: str
    backend: str = Field(..., description="Backend seen in the latest reports in the output folder.")
    weights_setting: str | None
    weights_status: str
    accuracy: dict[str, Any] | None = None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


def open_case_library(settings: Settings) -> CaseLibrary | None:
    """The case library of ``pathasst.memory`` (None when what it opens lacks the library interface)."""
    lib = memory.open_library(settings)
    return lib if isinstance(lib, CaseLibrary) else None


def library_status(settings: Settings) -> LibraryStatus:
    try:
        lib = open_case_library(settings)
        if lib is None:
            return LibraryStatus(available=False, message="case library not set up (pathasst.memory has no store yet)")
        return LibraryStatus(available=True, message="ready", stats=dict(lib.stats()))
    except (OSError, RuntimeError, ValueError) as exc:
        return LibraryStatus(available=False, message=f"case library unavailable: {exc}")


def add_cases(
    lib: CaseLibrary,
    cases: Iterable[tuple[str, Callable[[], Case]]],
    total: int,
    progress: Callable[[int, int, str, str], None] | None = None,
) -> list[tuple[str, str, bool]]:
    """Add (case id, loader) pairs one by one; ``progress(done, total, case_id, outcome)``; (id, outcome, ok)."""
    results: list[tuple[str, str, bool]] = []
    for i, (cid, load) in enumerate(cases, 1):
        try:
            res = lib.add_case(load())
        except (CaseError, OSError, ValueError, RuntimeError) as exc:
            outcome, ok = f"failed: {type(exc).__name__}: {exc}", False
        else:
            status = str(getattr(res, "status", "added"))
            ok = status != "failed"
            if not ok:
                outcome = f"failed: {getattr(res, 'reason', '')}"
            else:
                outcome = "already in the library (unchanged)" if status == "unchanged" else status
                images = getattr(res, "images", None)
                if images:
                    outcome += f" ({images} image{'s' if images != 1 else ''})"
        results.append((cid, outcome, ok))
        if progress is not None:
            progress(i, total, cid, outcome)
    return results


def _accuracy(path: Path | None) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _backends_seen(out_dir: Path, limit: int = 200) -> dict[str, str]:
    """Tool -> 'backend (status)' from the newest ``limit`` reports in the output folder."""
    seen: dict[str, str] = {}
    if not out_dir.is_dir():
        return seen
    reports = sorted(out_dir.glob(f"*/{OutputLayout.REPORT_JSON}"), key=lambda p: p.stat().st_mtime)[-limit:]
    for rep in reports:
        try:
            trace = json.loads(rep.read_text(encoding="utf-8")).get("trace", [])
        except (OSError, json.JSONDecodeError):
            continue
        for r in trace:  # a tool whose output names no backend still ran: say so, with its status
            out = r.get("output") or {}
            seen[r["tool"]] = f"{out.get('backend') or 'built-in'} ({out.get('status', r.get('status'))})"
    return seen


def _weights(settings: Settings, setting: str | None) -> str:
    if setting is None:
        return "none needed"
    value = getattr(settings, setting, None)
    env = f"PATHASST_{setting.upper()}"
    if not value:
        return f"not set ({env})"
    if not Path(value).is_file():
        return f"missing file {value} ({env})"
    return f"configured: {Path(value).name} (sha256 {file_sha256(Path(value))[:12]})"


def tool_infos(registry: Any, settings: Settings, out_dir: Path, accuracy_file: Path | None) -> list[ToolInfo]:
    """The catalogue with each tool's schemas, last-seen backend, weights status and measured accuracy."""
    accuracy = _accuracy(accuracy_file)
    seen = _backends_seen(Path(out_dir))
    out = []
    for c in registry.catalogue():
        acc = accuracy.get(c["name"]) or getattr(registry.tool_class(c["name"]), "measured_accuracy", None)
        out.append(
            ToolInfo(
                name=c["name"], version=c["version"], description=c["description"],
                backend=seen.get(c["name"], "not run yet"), weights_setting=c["weights_setting"],
                weights_status=_weights(settings, c["weights_setting"]),
                accuracy=acc if isinstance(acc, dict) else None,
                input_schema=c["input_schema"], output_schema=c["output_schema"],
            )
        )
    return out
