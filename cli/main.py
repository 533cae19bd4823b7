"""The ``pathasst`` command line (Typer + Rich)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pathasst.agent.demo import (
    DEMO_CASES,
    DEMO_LIBRARY,
    DEMO_OUT,
    DEMO_REPORTS,
    NEW_CASES_DIR,
    build_demo_cases,
    build_demo_library,
)
from pathasst.agent.engine import Engine
from pathasst.agent.executors import ExecutorError, make_executor
from pathasst.agent.exposure import InsecureBindError, check_bind, refuse_system_root
from pathasst.agent.outputs import OutputLayout, write_case
from pathasst.agent.predict import predict_folder
from pathasst.agent.runner import run_batch
from pathasst.agent.system import build_system
from pathasst.cli.eval import eval_app
from pathasst.cli.mcp import mcp_command
from pathasst.cli.slide import slide_app
from pathasst.core.cases import CaseError, CaseMeta, discover_cases, single_image_case
from pathasst.core.errors import UnknownToolError
from pathasst.core.settings import Settings, is_loopback
from pathasst.memory.cli import library_app
from pathasst.planning.base import PlannerError
from pathasst.planning.report import render_markdown
from pathasst.tools.eval_cli import tools_eval
from pathasst.ui.config import UISettings

__all__ = ["app", "main"]

app = typer.Typer(help="PathAsst: a runnable pathology AI assistant.", no_args_is_help=True, add_completion=False)
tools_app = typer.Typer(help="The pathology tool catalogue.", no_args_is_help=True)
app.add_typer(tools_app, name="tools")
console = Console(stderr=True)
out_console = Console()


def _settings(**overrides: Any):
    s = Settings()
    return s.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


PlannerOpt = Annotated[str | None, typer.Option("--planner", "-p", help="hybrid | rules | llamacpp | openai (default: settings)")]


def _run_batch(
    cases_dir: Path,
    out: Path,
    planner: str | None,
    question: str | None,
    force: bool,
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    **overrides: Any,
) -> int:
    settings = _settings(cases_root=cases_dir, **overrides)
    kind = executor or settings.executor
    n_workers = workers or settings.workers
    try:
        n = len(discover_cases(cases_dir))
        build_system(settings).planner(planner)  # an unknown planner name fails here, before any worker
        runner = make_executor(kind, settings, planner=planner or settings.planner, workers=n_workers,
                               address=address)
    except (CaseError, PlannerError, ExecutorError) as exc:
        _fail(str(exc))
    where = {"ray": f"Ray ({runner.workers} case slots)"}.get(kind, f"{n_workers} local worker(s)")
    console.print(f"{n} cases on {where}")
    try:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as bar:
            task = bar.add_task("cases", total=n)

            def tick(o) -> None:
                colour = {"ok": "green", "failed": "red", "skipped": "dim"}[o.status]
                bar.console.print(f"[{colour}]{o.status:>7}[/] {o.case_id} {o.reason}")
                bar.advance(task)

            result = run_batch(cases_dir, out, question=question, force=force, progress=tick, executor=runner)
    finally:
        runner.close()
    c = result.counts
    console.print(
        f"[bold]{c.get('ok', 0)} ok, {c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped[/]; "
        f"reports in [cyan]{out.resolve()}[/] (summary: {(out / 'summary.csv').resolve()})"
    )
    return 1 if c.get("failed") and not c.get("ok") and not c.get("skipped") else 0


ExecutorOpt = Annotated[
    str | None, typer.Option("--executor", "-x", help="local | ray (default: PATHASST_EXECUTOR, else local).")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-j", min=1, help="Local worker processes (default: PATHASST_WORKERS, 1).")
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address, e.g. ray://head:10001 (default: PATHASST_RAY_ADDRESS; "
                 "empty = a local Ray instance)."),
]


@app.command()
def run(
    cases_dir: Annotated[Path, typer.Argument(help="Folder of case folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out"),
    planner: PlannerOpt = None,
    question: Annotated[str | None, typer.Option("--question", "-q", help="Ask this of every case.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo cases that are already complete.")] = False,
    executor: ExecutorOpt = None,
    workers: WorkersOpt = None,
    address: AddressOpt = None,
) -> None:
    """Run every case under CASES_DIR and write one report per case plus OUT/summary.csv (resumable)."""
    raise typer.Exit(_run_batch(cases_dir, out, planner, question, force, executor, workers, address))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(DEMO_OUT),
    planner: PlannerOpt = None,
) -> None:
    """Build example cases from images shipped inside installed packages, a small case library from them, then run
    them (each report cites its similar cases)."""
    cases = build_demo_cases(out / DEMO_CASES)
    console.print(f"built {len(cases)} example cases in [cyan]{(out / DEMO_CASES).resolve()}[/]")
    lib = build_demo_library(out / DEMO_CASES, out / DEMO_LIBRARY, _settings())
    console.print(
        f"case library [cyan]{(out / DEMO_LIBRARY).resolve()}[/]: {lib.count('added')} cases added, "
        f"{lib.count('unchanged')} unchanged, {lib.count('failed')} not embeddable; "
        f"{len(lib.bad_files)} bad files skipped"
    )
    code = _run_batch(out / DEMO_CASES, out / DEMO_REPORTS, planner, None, False, chroma_path=out / DEMO_LIBRARY)
    for cid in cases:
        md = OutputLayout(out / DEMO_REPORTS).report_md(cid)
        if md.is_file():
            out_console.print(f"[green]report:[/] {md.resolve()}")
    raise typer.Exit(code)


@app.command()
def ask(
    image: Annotated[Path, typer.Argument(help="An image or whole-slide file.")],
    question: Annotated[str, typer.Argument(help="Your question.")],
    planner: PlannerOpt = None,
    stain: Annotated[str | None, typer.Option(help="Stain, e.g. H&E, Ki-67.")] = None,
    mpp: Annotated[float | None, typer.Option(help="Microns per pixel.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the report files here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json instead of Markdown.")] = False,
) -> None:
    """Ask one question about one image or slide."""
    settings = _settings()
    try:
        case = single_image_case(image, CaseMeta(stain=stain, mpp=mpp), settings)
        engine = Engine(settings, planner=planner)
    except (CaseError, PlannerError) as exc:
        _fail(str(exc))

    def show(event: str, payload: dict[str, Any]) -> None:
        if event == "tool_start":
            console.print(f"[dim]-> {payload['tool']} {json.dumps(payload['arguments'])}[/]")
        elif event == "tool_end":
            console.print(f"[dim]<- {payload['summary']} ({payload['duration_s']:.2f} s)[/]")

    report, artifacts = engine.run(case=case, question=question, on_event=show)
    if out is not None:
        folder = write_case(out, report, artifacts, overwrite=True)
        console.print(f"report written to [cyan]{folder.resolve()}[/]")
    if as_json:
        out_console.print_json(report.model_dump_json())
    else:
        out_console.print(render_markdown(report), markup=False, highlight=False)


@app.command("ui")
def ui_command(
    cases: Annotated[Path | None, typer.Option("--cases", help="Folder of case folders (default: PATHASST_CASES_ROOT).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: PATHASST_OUTPUT_DIR).")] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8501,
    address: Annotated[
        str, typer.Option("--address", help="Bind address. Default loopback; any other address exposes the app.")
    ] = "127.0.0.1",
    planner: PlannerOpt = None,
    hash_password: Annotated[
        bool, typer.Option("--hash-password", help="Prompt for a password, print its bcrypt hash and exit.")
    ] = False,
    insecure_bind: Annotated[
        bool, typer.Option("--insecure-bind", help="Allow a non-loopback --address without a login.")
    ] = False,
) -> None:
    """Start the case-review app (Streamlit) on 127.0.0.1; usage statistics off."""
    import os
    import signal
    import subprocess
    from importlib.util import find_spec

    if hash_password:
        import bcrypt

        pw = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        out_console.print(bcrypt.hashpw(pw.encode("utf-8"), bcrypt.gensalt()).decode("ascii"))
        console.print("set it as PATHASST_UI_PASSWORD_HASH (and PATHASST_UI_USER) in .env or the environment")
        raise typer.Exit(0)

    settings = _settings()
    try:
        ui_settings = UISettings()
        login = ui_settings.login_mode
    except ValueError as exc:
        _fail(f"invalid UI settings: {exc}")
    cases_dir = cases or settings.cases_root
    demo = Path(DEMO_OUT)
    if cases_dir is None and (demo / DEMO_CASES).is_dir():
        cases_dir = demo / DEMO_CASES
        console.print(f"no cases folder given: opening the demo's cases in [cyan]{cases_dir.resolve()}[/]")
    elif cases_dir is None:
        cases_dir = Path(NEW_CASES_DIR)
        cases_dir.mkdir(exist_ok=True)
        console.print(
            f"no cases folder given and no demo: starting with an empty one, [cyan]{cases_dir.resolve()}[/] "
            "(add cases there or upload them in the app; `make demo` builds example cases)"
        )
    if not Path(cases_dir).is_dir():
        _fail(f"cases folder not found: {cases_dir} (give --cases DIR or set PATHASST_CASES_ROOT)")

    try:
        refuse_system_root(Path(cases_dir))
        check_bind(address, login != "none", insecure_bind, "a login (PATHASST_UI_PASSWORD_HASH, PATHASST_UI_USER)")
    except (ValueError, InsecureBindError) as exc:
        _fail(str(exc))
    if not is_loopback(address):
        console.print(
            f"[bold yellow]warning:[/] binding to {address}: the app and its patient data are reachable from other "
            "machines. Use it only behind TLS on a trusted network"
            + (", and enable a login (PATHASST_UI_PASSWORD_HASH)." if login == "none" else ".")
        )
    spec = find_spec("pathasst.ui.app")
    if spec is None or spec.origin is None:
        _fail("the review app is not installed (pathasst.ui.app missing)")
    env = dict(os.environ)
    env["PATHASST_CASES_ROOT"] = str(Path(cases_dir).resolve())
    demo_root = Path(cases_dir).resolve().parent  # a demo's cases open with its reports and case library
    if out is None and "PATHASST_OUTPUT_DIR" not in env and (demo_root / DEMO_REPORTS).is_dir():
        out = demo_root / DEMO_REPORTS
    if "PATHASST_CHROMA_PATH" not in env and (demo_root / DEMO_LIBRARY).is_dir() and (demo_root / DEMO_REPORTS).is_dir():
        env["PATHASST_CHROMA_PATH"] = str(demo_root / DEMO_LIBRARY)
    if out is not None:
        env["PATHASST_OUTPUT_DIR"] = str(out.resolve())
    if planner is not None:
        env["PATHASST_PLANNER"] = planner
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    cmd = [
        sys.executable, "-m", "streamlit", "run", spec.origin,
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.maxUploadSize", str(ui_settings.max_upload_mb),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.toolbarMode", "viewer",
        "--client.showErrorDetails", "type",
    ]
    host = "127.0.0.1" if address in ("0.0.0.0", "::") else address
    console.print(f"PathAsst case review on [cyan]http://{host}:{port}[/] (cases: {env['PATHASST_CASES_ROOT']}); Ctrl+C stops it")
    proc = subprocess.Popen(cmd, env=env)

    def _forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    raise typer.Exit(code if code >= 0 else 0)


@tools_app.command("list")
def tools_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable catalogue.")] = False) -> None:
    """List the registered tools."""
    reg = build_system(_settings()).registry
    if as_json:
        out_console.print_json(json.dumps(reg.catalogue()))
        return
    table = Table(title=f"{len(reg)} tools")
    for col in ("name", "version", "weights setting", "description"):
        table.add_column(col)
    for c in reg.catalogue():
        setting = f"PATHASST_{c['weights_setting'].upper()}" if c["weights_setting"] else "-"
        table.add_row(c["name"], c["version"], setting, c["description"].split(". ")[0])
    out_console.print(table)


@tools_app.command("predict")
def tools_predict(
    tool: Annotated[str, typer.Argument(help="Tool name.")],
    input_dir: Annotated[Path, typer.Argument(help="Folder of images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    mpp: Annotated[float | None, typer.Option(help="Microns per pixel of the images.")] = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="Extra tool argument KEY=JSON_VALUE.")] = None,
) -> None:
    """Run one tool on every image of a folder: DIR/STEM.json (+ DIR/STEM.png 16-bit labels for segmentation)."""
    extra: dict[str, Any] = {}
    for a in arg or []:
        key, _, value = a.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    try:
        done, failed = predict_folder(tool, input_dir, out, _settings(), mpp=mpp, extra_args=extra)
    except (UnknownToolError, FileNotFoundError) as exc:
        _fail(str(exc))
    console.print(f"{done} images done, {len(failed)} failed; outputs in [cyan]{out.resolve()}[/]")
    for name, reason in failed:
        console.print(f"[red]failed[/] {name}: {reason}")
    raise typer.Exit(1 if failed and not done else 0)


def _mount_tools_eval() -> None:
    tools_app.command("eval")(tools_eval)


_mount_tools_eval()


def _mount_eval() -> None:
    app.add_typer(eval_app, name="eval")


_mount_eval()


def _mount_library() -> None:
    app.add_typer(library_app, name="library")


_mount_library()


def _mount_mcp() -> None:
    app.command("mcp")(mcp_command)


_mount_mcp()


def _mount_slide() -> None:
    app.add_typer(slide_app, name="slide")


_mount_slide()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
