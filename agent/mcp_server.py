"""Serve the pathology tool catalogue (and similar-case search) over the Model Context Protocol.

One MCP tool per tool of the registry. Each publishes the tool's own input model as its input schema and a typed
result (status, summary, the tool's output model, model info, image provenance) as its output schema. A call goes
through :func:`pathasst.tools.base.call_tool`, the one place where arguments are validated and errors are typed;
the text content is the short summary and the structured content the full typed result (artifacts such as label
maps stay on the server). A bad call, a failed tool, a corrupt image and a tool that is not configured come back as
an MCP error result (``is_error``) with the planner message, never as a crash.

The ``image`` argument is a path under the image root (``--root`` or ``PATHASST_CASES_ROOT``), relative to it or
absolute inside it; :func:`pathasst.core.cases.ensure_inside` refuses any path (or symlink) that leaves the root.
The nearest ``case.yaml`` above the image (up to the root) supplies its resolution and stain, as in a batch run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from pathasst.agent.exposure import InsecureBindError, check_bind, refuse_system_root
from pathasst.agent.system import build_system
from pathasst.core.cases import (
    CaseError,
    PathEscapeError,
    UnreadablePathError,
    clip,
    ensure_companions_inside,
    ensure_inside,
    path_error_reason,
    read_case_meta,
    single_image_case,
)
from pathasst.core.errors import ToolCallError, ToolExecutionError
from pathasst.core.imaging import ImageData
from pathasst.core.readers import CaseImageResolver
from pathasst.core.regions import Region
from pathasst.core.settings import Settings, get_settings
from pathasst.tools.base import PathologyTool, ToolCallRecord, ToolInput, ToolOutput, call_tool
from pathasst.tools.registry import ToolRegistry

__all__ = [
    "DEFAULT_PORT",
    "BearerTokenAuth",
    "ModelInfo",
    "RootImageResolver",
    "ToolCallResult",
    "Transport",
    "build_server",
    "mcp_token",
    "resolve_root",
    "run",
    "serve",
    "transport_security",
]

log = logging.getLogger(__name__)

Transport = Literal["stdio", "http"]
DEFAULT_PORT = 8765
IMAGE_NOTE = (
    "\n\nOver MCP, `image` is a path under the server's image root: relative to it (e.g. 'CASE_ID/tile.png') or "
    "absolute inside it. Paths outside the root are refused."
)
INSTRUCTIONS = (
    "PathAsst pathology tools: tissue quality control, nuclei segmentation, IHC quantification, mitosis detection, "
    "tissue and slide classification, tumour and region segmentation, and similar-case search in the case "
    "library. Every tool takes `image`, a path relative to the server's image root. Results are measurements for "
    "a pathologist to review, not diagnoses."
)


# --- structured output -----------------------------------------------------------------------------------------
class ModelInfo(BaseModel):
    """Which model produced an output (``PathologyTool.model_info`` plus the backend)."""

    model_config = ConfigDict(extra="allow")
    tool: str = Field(..., description="Tool name.")
    version: str = Field(..., description="Tool version.")
    weights: str | None = Field(None, description="Configured weights file, if any.")
    weights_sha256: str | None = Field(None, description="sha256 of the weights file, if any.")
    backend: str = Field(..., description="Backend that produced the output.")
    model: str | None = Field(None, description="Description of the loaded model, if any.")


class ToolCallResult(BaseModel):
    """Structured content of a tool call. Subclassed per tool so ``output`` carries the tool's own output model."""

    model_config = ConfigDict(extra="forbid")
    call_id: str = Field(..., description="Identifier of this call.")
    status: Literal["ok", "not_configured"] = Field(..., description="'not_configured' when weights are missing.")
    summary: str = Field(..., description="Short text summary of the output (also the call's text content).")
    output: ToolOutput = Field(..., description="The tool's typed output.")
    model: ModelInfo = Field(..., description="Tool, version, weights and backend that produced the output.")
    image: str = Field(..., description="Analysed image, relative to the server's image root.")
    image_mpp: float | None = Field(None, description="Microns per pixel of the analysed pixels (None = unknown).")
    image_origin: tuple[float, float] | None = Field(None, description="Level-0 (x, y) of the analysed pixels.")
    image_scale: float | None = Field(None, description="Level-0 pixels per analysed pixel.")
    notes: list[str] = Field(default_factory=list, description="Notes on the analysed pixels (e.g. window chosen).")
    duration_s: float = Field(..., ge=0, description="Wall time of the call, seconds.")


def _result_model(tool: PathologyTool) -> type[ToolCallResult]:
    name = "".join(part.capitalize() for part in tool.name.split("_")) + "Result"
    return create_model(
        name,
        __base__=ToolCallResult,
        __doc__=f"Structured content of a {tool.name} call.",
        output=(tool.output_model, Field(..., description=f"The typed output of {tool.name}.")),
    )


# --- images ----------------------------------------------------------------------------------------------------
def resolve_root(settings: Settings, root: Path | None = None) -> Path:
    """The image root: ``root`` or ``settings.cases_root``, resolved; ``CaseError`` when unset or not a folder."""
    chosen = root if root is not None else getattr(settings, "cases_root", None)
    if chosen is None:
        raise CaseError("no image root: give --root DIR or set PATHASST_CASES_ROOT")
    path = Path(chosen).resolve()
    if not path.is_dir():
        raise CaseError(f"image root not found or not a folder: {path}")
    try:
        refuse_system_root(path)
    except ValueError as exc:
        raise CaseError(f"image root refused: {exc}") from None
    return path


class RootImageResolver:
    """An ``ImageResolver`` for one MCP call: ``image`` names a file under ``root``, read as a one-image case.

    Use one per call and ``close()`` it after the tool ran (a slide stays open while the tool reads its tiles).
    ``relative`` holds the resolved image path relative to the root once resolved.
    """

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = Path(root).resolve()
        self.settings = settings
        self.relative: str | None = None
        self._case_resolver: CaseImageResolver | None = None

    def locate(self, image: str) -> Path:
        """The real path of ``image`` inside the root, or ``ToolCallError`` saying why not (the path shown as given,
        shortened; never where it resolves to)."""
        shown = clip(repr(image))
        try:
            path = Path(image)
            real = ensure_inside(path if path.is_absolute() else self.root / path, self.root)
            found = real.is_file()
            ensure_companions_inside(real, self.root)
        except PathEscapeError as exc:
            raise ToolCallError(f"image {shown} refused: it leads outside the cases root") from exc
        except UnreadablePathError as exc:
            raise ToolCallError(f"image {shown} is not a valid path ({path_error_reason(exc.__cause__ or exc)})") from exc
        except (OSError, ValueError) as exc:  # e.g. an embedded NUL byte, a name too long
            raise ToolCallError(f"image {shown} is not a valid path ({path_error_reason(exc)})") from exc
        if not found:
            raise ToolCallError(f"image {shown} not found under the image root")
        return real

    def __call__(self, name: str, region: Region | None, working_mpp: float | None) -> ImageData:
        real = self.locate(name)
        self.relative = real.relative_to(self.root).as_posix()
        try:
            # the case.yaml of the image's case folder (nearest one up to the root) gives mpp and stain
            meta = None
            for folder in [real.parent, *real.parent.parents]:
                if (folder / "case.yaml").is_file() or (folder / "case.yml").is_file():
                    meta = read_case_meta(folder)
                    break
                if folder == self.root:
                    break
            case = single_image_case(real, meta, settings=self.settings)
        except CaseError as exc:
            raise ToolExecutionError(f"cannot read {clip(name)}: {exc}") from exc
        self.close()
        self._case_resolver = CaseImageResolver(case, self.settings)
        return self._case_resolver(case.images[0].name, region, working_mpp)

    def close(self) -> None:
        if self._case_resolver is not None:
            self._case_resolver.close()
            self._case_resolver = None


# --- tools -----------------------------------------------------------------------------------------------------
class _RawArguments(ArgModelBase):
    """Every argument as sent: ``call_tool`` validates them against the tool's input model (one place for errors)."""

    arguments: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect(cls, data: Any) -> Any:
        return {"arguments": dict(data) if isinstance(data, dict) else {}}


def _parse_json_strings(model: type[ToolInput], arguments: dict[str, Any]) -> dict[str, Any]:
    """Decode object/array arguments sent as JSON strings (some MCP clients do), as the SDK's own tools do."""
    out = dict(arguments)
    for key, value in arguments.items():
        field = model.model_fields.get(key)
        if field is None or field.annotation is str or not isinstance(value, str):
            continue
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            continue
        if isinstance(parsed, dict | list):
            out[key] = parsed
    return out


def _to_mcp_result(record: ToolCallRecord, result_model: type[ToolCallResult], image: str | None) -> CallToolResult:
    text = [TextContent(type="text", text=record.summary)]
    if record.status in ("bad_call", "failed"):
        return CallToolResult(content=text, is_error=True)
    result = result_model(
        call_id=record.id,
        status=record.status,
        summary=record.summary,
        output=record.output,
        model=record.model,
        image=image or record.image or "",
        image_mpp=record.image_mpp,
        image_origin=record.image_origin,
        image_scale=record.image_scale,
        notes=record.notes,
        duration_s=record.duration_s,
    )
    # not configured is reported as an error so a client model does not read the empty output as a measurement
    return CallToolResult(
        content=text, structured_content=result.model_dump(mode="json"), is_error=record.status != "ok"
    )


def _mcp_tool(tool: PathologyTool, root: Path, settings: Settings, slots: threading.BoundedSemaphore) -> Tool:
    """The MCP tool of one pathology tool. A call takes one of the server's ``slots`` (the cap on concurrent calls
    across all tools) and this tool's lock (tools load lazily and keep state), runs in a worker thread under the
    call time limit, and stops at its next step when the client cancels or leaves."""
    result_model = _result_model(tool)
    lock = threading.Lock()
    timeout = getattr(settings, "call_timeout_s", None)

    def run_call(arguments: dict[str, Any], cancel: threading.Event) -> CallToolResult:
        waited = time.monotonic()
        if not slots.acquire(timeout=timeout or -1):
            return CallToolResult(content=[TextContent(type="text", text=(
                f"ERROR {tool.name} not run: the server is busy (its limit of concurrent calls stayed reached for "
                f"{timeout:g} s, PATHASST_MAX_CONCURRENT_CALLS). Try again later."))], is_error=True)
        resolver = RootImageResolver(root, settings)
        try:
            with lock:
                left = None if timeout is None else max(0.001, timeout - (time.monotonic() - waited))
                record, _ = call_tool(tool, _parse_json_strings(tool.input_model, arguments), resolver,
                                      timeout_s=left, cancel=cancel)
        finally:
            resolver.close()
            slots.release()
        log.info("%s: %s in %.2f s", tool.name, record.status, record.duration_s)
        return _to_mcp_result(record, result_model, resolver.relative)

    async def handler(arguments: dict[str, Any]) -> CallToolResult:
        import anyio

        cancel = threading.Event()
        try:
            return await anyio.to_thread.run_sync(run_call, arguments, cancel, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            cancel.set()  # the worker thread stops at its next tile batch and frees its slot
            raise

    return Tool(
        fn=handler,
        name=tool.name,
        description=tool.description + IMAGE_NOTE,
        parameters=tool.input_model.model_json_schema(),
        fn_metadata=FuncMetadata(arg_model=_RawArguments, output_model=result_model),
        is_async=True,
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )


def _version() -> str:
    try:
        return version("pathasst")
    except PackageNotFoundError:
        return "0"


def build_server(settings: Settings, root: Path | None = None, registry: ToolRegistry | None = None) -> MCPServer:
    """An MCP server with one tool per registered pathology tool, reading images under ``root``.

    ``root`` defaults to ``settings.cases_root``; ``CaseError`` when neither names a folder.
    """
    image_root = resolve_root(settings, root)
    registry = registry if registry is not None else build_system(settings).registry
    slots = threading.BoundedSemaphore(getattr(settings, "max_concurrent_calls", 2))
    tools = [_mcp_tool(t, image_root, settings, slots) for t in registry.tools()]
    return MCPServer(
        name="pathasst",
        title="PathAsst pathology tools",
        version=_version(),
        instructions=INSTRUCTIONS,
        tools=tools,
        log_level="WARNING",
    )


# --- serving ---------------------------------------------------------------------------------------------------
class BearerTokenAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer TOKEN`` (compared in constant time),
    else 401 with a ``WWW-Authenticate`` header and a JSON body that names the setting; lifespan events pass."""

    def __init__(self, app: Any, token: str) -> None:
        if not token:
            raise ValueError("the MCP bearer token must not be empty")
        self.app = app
        self._expected = b"Bearer " + token.encode("utf-8")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import hmac

        if scope["type"] in ("http", "websocket"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                from starlette.responses import JSONResponse

                body = {"error": "unauthorized",
                        "detail": "this MCP server needs 'Authorization: Bearer <token>' (PATHASST_MCP_TOKEN)"}
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="pathasst"'})(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def transport_security(host: str, allowed_hosts: list[str] | tuple[str, ...] = ()) -> TransportSecuritySettings:
    """Host/Origin checks (DNS-rebinding protection) for an HTTP server bound to ``host``: the loopback names, the
    bind address unless it is a wildcard (``0.0.0.0``, ``::``), and ``allowed_hosts``, each with any port."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    extra = [h for h in (host, *allowed_hosts) if h and h not in ("0.0.0.0", "::", "")]
    names += [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in extra]
    names = list(dict.fromkeys(names))
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*names, *(f"{n}:*" for n in names)],
        allowed_origins=[f"{scheme}://{n}{port}" for n in names for scheme in ("http", "https") for port in ("", ":*")],
    )


def serve(server: MCPServer, transport: Transport = "stdio", host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          token: str | None = None, *, insecure_bind: bool = False,
          allowed_hosts: list[str] | tuple[str, ...] = ()) -> None:
    """Serve on stdio (stdout carries only the protocol) or streamable HTTP at ``http://HOST:PORT/mcp``; with
    ``token`` (``PATHASST_MCP_TOKEN``) every HTTP request must carry it as a bearer token.

    Fails closed: a bind beyond loopback without a token raises :class:`InsecureBindError` unless ``insecure_bind``;
    every request's Host and Origin must name loopback, the bind address or one of ``allowed_hosts`` (421 / 403
    otherwise). On SIGTERM or Ctrl+C the server stops within a few seconds: running calls are cancelled at their
    next tile batch, not waited for."""
    if transport == "stdio":
        server.run("stdio")
        return
    check_bind(host, bool(token), insecure_bind, "PATHASST_MCP_TOKEN")
    import uvicorn

    app = server.streamable_http_app(host=host, transport_security=transport_security(host, allowed_hosts))
    uvicorn.run(BearerTokenAuth(app, token) if token else app, host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=1)


def run(
    transport: Transport = "stdio",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    settings: Settings | None = None,
    root: Path | None = None,
) -> None:
    """Build the server from ``settings`` (default: the process settings) and serve it."""
    if settings is None:
        settings = get_settings()
    serve(build_server(settings, root), transport, host, port, mcp_token(settings),
          allowed_hosts=getattr(settings, "mcp_allowed_hosts", ()))


def mcp_token(settings: Settings) -> str | None:
    """The bearer token HTTP clients must send (``PATHASST_MCP_TOKEN``), or None."""
    secret = getattr(settings, "mcp_token", None)
    value = secret.get_secret_value() if secret is not None else ""
    return value or None
