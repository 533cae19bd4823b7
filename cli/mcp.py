"""``pathasst mcp``: serve the pathology tools over the Model Context Protocol (mounted by the main CLI).

``pathasst mcp --root DIR`` speaks MCP on stdin/stdout (for a client that starts the server itself, e.g. Claude
Desktop); ``pathasst mcp --transport http --root DIR`` serves streamable HTTP at ``http://127.0.0.1:8765/mcp``.
In stdio mode nothing but the protocol is written to stdout: messages and logs go to stderr.
Also runnable as ``python -m pathasst.cli.mcp``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from pathasst.agent.exposure import InsecureBindError, check_bind
from pathasst.core.cases import CaseError
from pathasst.core.settings import Settings

__all__ = ["main", "mcp_command"]

console = Console(stderr=True)


def mcp_command(
    transport: Annotated[
        Literal["stdio", "http"],
        typer.Option("--transport", "-t", help="stdio (the client starts the server) or http (streamable HTTP)."),
    ] = "stdio",
    host: Annotated[
        str, typer.Option("--host", help="HTTP bind address. Default loopback; any other address exposes the tools.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="HTTP port.")] = 8765,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="Folder image paths are resolved in (default: PATHASST_CASES_ROOT); nothing outside is read."
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", help="Host name clients use to reach the server (repeatable; adds to "
                     "PATHASST_MCP_ALLOWED_HOSTS). Requests naming any other Host are refused."),
    ] = None,
    insecure_bind: Annotated[
        bool, typer.Option("--insecure-bind", help="Allow a non-loopback --host without PATHASST_MCP_TOKEN.")
    ] = False,
) -> None:
    """Serve the pathology tools and similar-case search over MCP (stdio or streamable HTTP on 127.0.0.1)."""
    from pathasst.agent.mcp_server import build_server, mcp_token, serve

    settings = Settings()
    try:
        server = build_server(settings, root)
    except CaseError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    token = mcp_token(settings)
    try:
        if transport == "http":
            check_bind(host, bool(token), insecure_bind, "PATHASST_MCP_TOKEN")
    except InsecureBindError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    where = "stdio" if transport == "stdio" else f"http://{host}:{port}/mcp"
    if transport == "http":
        where += " (bearer token required)" if token else " (no authentication: PATHASST_MCP_TOKEN is not set)"
    console.print(f"PathAsst MCP server on {where}; Ctrl+C stops it", highlight=False)
    hosts = [*settings.mcp_allowed_hosts, *(allowed_host or [])]
    try:
        serve(server, transport, host, port, token, insecure_bind=insecure_bind, allowed_hosts=hosts)
    except InsecureBindError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    if transport == "http":
        _exit_without_waiting_for_calls()


def _exit_without_waiting_for_calls() -> None:
    """The HTTP server has stopped (SIGTERM, Ctrl+C): leave now rather than wait for a tool call still winding down
    in a worker thread (it was cancelled; it writes nothing)."""
    import os
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stderr.flush()
        os._exit(0)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    typer.run(mcp_command)


if __name__ == "__main__":
    main()
