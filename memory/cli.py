"""``pathasst library ...``: build, search, inspect and evaluate the case library (mounted by ``cli/main.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pathasst.core.cases import PATCH_EXTENSIONS, SLIDE_EXTENSIONS, CaseError, discover_cases, single_image_case
from pathasst.core.embedders import EmbedderError, image_embedder
from pathasst.core.errors import ToolError
from pathasst.core.settings import Settings
from pathasst.memory.evaluation import evaluate_folders
from pathasst.memory.ingest import case_image_vector
from pathasst.memory.library import open_library
from pathasst.memory.migrate import Endpoint, migrate
from pathasst.memory.store import StoreError

__all__ = ["library_app", "parse_where"]

library_app = typer.Typer(
    help="The case library: past cases embedded in Chroma for similar-case retrieval.", no_args_is_help=True
)
console = Console(stderr=True)
out_console = Console()

EmbedderOpt = Annotated[
    str | None,
    typer.Option("--embedder", "-e", help="Image embedder: pathclip | hed-texture (default: pathclip if "
                 "PATHASST_PATHCLIP_WEIGHTS is set, else hed-texture)."),
]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option("--where", "-w", help="Metadata filter KEY=VALUE (repeatable, all must match) or a Chroma where "
                 "JSON object, e.g. organ=colon or '{\"stain\": {\"$in\": [\"H&E\", \"HE\"]}}'."),
]


def _settings(**overrides: Any) -> Any:
    s = Settings()
    return s.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _errors() -> tuple[type[BaseException], ...]:
    return (CaseError, EmbedderError, StoreError, ToolError, OSError)


def parse_where(values: list[str] | None) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs (values read as JSON when they parse, else as text) and/or JSON objects -> a where."""
    clauses: list[dict[str, Any]] = []
    for raw in values or []:
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"--where {raw!r}: not valid JSON ({exc})") from exc
            if not isinstance(obj, dict):
                raise typer.BadParameter(f"--where {raw!r}: expected a JSON object")
            clauses.append(obj)
            continue
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--where {raw!r}: expected KEY=VALUE or a JSON object")
        try:
            parsed = json.loads(value)
            if not isinstance(parsed, (str, int, float, bool)):
                parsed = value
        except json.JSONDecodeError:
            parsed = value
        clauses.append({key.strip(): parsed})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


@library_app.command("add")
def add(
    cases_dir: Annotated[Path, typer.Argument(help="Folder of case folders (diagnosis/organ/stain from case.yaml).")],
    embedder: EmbedderOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Re-embed cases that are already stored and unchanged.")] = False,
    texts: Annotated[bool, typer.Option("--texts/--no-texts", help="Also embed reports/captions (MiniLM).")] = True,
) -> None:
    """Embed every case under CASES_DIR into the library (PATHASST_CHROMA_PATH, or the Chroma server of
    PATHASST_CHROMA_HOST). Resumable: unchanged cases are skipped; bad files are skipped and listed."""
    settings = _settings()
    lib = open_library(settings, image_embedder_name=embedder)
    try:
        total = len(discover_cases(cases_dir))
        iemb = lib.image_embedder
        console.print(f"library: [cyan]{lib.store.location}[/] ({lib.store.mode}); image embedder {iemb.name}"
                      + (f", text embedder {lib.text_embedder.name}" if texts else ""))
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("cases", total=total)

            def tick(res: Any, done: int, n: int) -> None:
                colour = {"added": "green", "unchanged": "dim", "failed": "red"}[res.status]
                extra = f" ({res.images} images, {res.texts} texts)" if res.status == "added" else f" {res.reason}"
                bar.console.print(f"[{colour}]{res.status:>9}[/] {res.case_id}{extra}")
                bar.advance(task)

            report = lib.add_cases(cases_dir, force=force, texts=texts, progress=tick)
    except _errors() as exc:
        _fail(str(exc))
    console.print(
        f"[bold]{report.count('added')} added, {report.count('unchanged')} unchanged, {report.count('failed')} failed[/] "
        f"in {report.seconds:.1f} s ({report.images} images)"
    )
    for name, why in report.bad_files:
        console.print(f"[yellow]skipped file[/] {name}: {why}")
    for c in report.cases:
        if c.status == "failed":
            console.print(f"[red]failed case[/] {c.case_id}: {c.reason}")
    raise typer.Exit(1 if report.count("failed") and not (report.count("added") + report.count("unchanged")) else 0)


@library_app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="An image file (search by image) or a text (search by text).")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=100, help="Number of cases.")] = 5,
    text: Annotated[str | None, typer.Option("--text", "-t", help="Also search by this text (image + text).")] = None,
    where: WhereOpt = None,
    embedder: EmbedderOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the k most similar cases: case id, distance, diagnosis."""
    settings = _settings()
    lib = open_library(settings, image_embedder_name=embedder)
    flt = parse_where(where)
    path = Path(query)
    is_image = path.suffix.lower() in PATCH_EXTENSIONS | SLIDE_EXTENSIONS and path.is_file()
    if path.suffix.lower() in PATCH_EXTENSIONS | SLIDE_EXTENSIONS and not path.is_file():
        _fail(f"image file not found: {query}")
    if not lib.exists():
        _fail(f"no case library at {settings.chroma_path}: run `pathasst library add CASES_DIR` first")
    try:
        if is_image:
            case = single_image_case(path, settings=settings)
            vec, _ = case_image_vector(lib.image_embedder, case, case.images[0], settings)
            hits = lib.search(image_vector=vec, text=text, k=k, where=flt)
        else:
            hits = lib.search(text=query + (" " + text if text else ""), k=k, where=flt)
    except (ValueError, *_errors()) as exc:
        _fail(str(exc))
    if as_json:
        out_console.print_json(json.dumps([h.model_dump(exclude={"text"}) for h in hits]))
        return
    table = Table(title=f"{len(hits)} similar cases ({'image' if is_image else 'text'}{' + text' if is_image and text else ''})")
    for col in ("#", "case", "distance", "diagnosis", "organ", "stain", "image"):
        table.add_column(col)
    for i, h in enumerate(hits, 1):
        dist = ", ".join(f"{m} {d:.4f}" for m, d in h.distances.items()) if len(h.distances) > 1 else f"{h.distance:.4f}"
        table.add_row(str(i), h.case_id, dist, h.diagnosis or "-", h.organ or "-", h.stain or "-", h.image or "-")
    out_console.print(table)


@library_app.command("stats")
def stats(
    embedder: EmbedderOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Cases, images and texts in the library, its embedders, location and size."""
    lib = open_library(_settings(), image_embedder_name=embedder)
    try:
        facts = lib.stats()
        cols = lib.store.collections() if lib.exists() else []
    except _errors() as exc:
        _fail(str(exc))
    if as_json:
        out_console.print_json(json.dumps({**facts, "collections": cols}))
        return
    table = Table(title="case library", show_header=False)
    for key, value in facts.items():
        table.add_row(key.replace("_", " "), str(value))
    out_console.print(table)
    if cols:
        ct = Table(title="collections")
        for col in ("name", "embedder", "dimension", "records"):
            ct.add_column(col)
        for c in cols:
            ct.add_row(c["name"], str(c["metadata"].get("fingerprint")), str(c["metadata"].get("dimension")), str(c["count"]))
        out_console.print(ct)


@library_app.command("delete")
def delete(
    case: Annotated[list[str] | None, typer.Option("--case", help="Remove this case (repeatable).")] = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Drop a whole collection (see stats).")] = None,
) -> None:
    """Remove cases from the library, or drop a collection built with an embedder no longer used."""
    if not case and not collection:
        _fail("give --case ID and/or --collection NAME")
    lib = open_library(_settings())
    if not lib.exists():
        _fail("no case library")
    try:
        for cid in case or []:
            n = lib.delete_case(cid)
            console.print(f"{cid}: {n} records deleted" if n else f"[yellow]{cid}: not in the library[/]")
        if collection:
            lib.store.drop_collection(collection)
            console.print(f"collection {collection} dropped")
    except (ValueError, *_errors()) as exc:
        _fail(str(exc))


@library_app.command("eval")
def evaluate(
    library: Annotated[Path, typer.Option("--library", help="Folder of library images (or case folders).")],
    queries: Annotated[Path, typer.Option("--queries", help="Folder of query images (or case folders).")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV with columns id (or image/case_id/name) and label.")],
    embedder: EmbedderOpt = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=50, help="Neighbours for Acc@k and majority vote.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Retrieval accuracy of an embedder: Acc@1, Acc@k and majority vote at k (mMV@k), with baselines."""
    settings = _settings()
    for p in (library, queries):
        if not p.is_dir():
            _fail(f"folder not found: {p}")
    if not labels.is_file():
        _fail(f"labels file not found: {labels}")
    try:
        emb = image_embedder(settings, embedder)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("embedding", total=None)
            res = evaluate_folders(emb, library, queries, labels, settings, k=k, progress=lambda n: bar.advance(task, n))
    except (ValueError, *_errors()) as exc:
        _fail(str(exc))
    if as_json:
        out_console.print_json(res.model_dump_json())
        return
    m = res.metrics
    table = Table(title=f"retrieval with {res.embedder}: {res.n_queries} queries, {res.n_library} library items")
    for col in ("metric", "value"):
        table.add_column(col)
    for key in ("acc@1", f"acc@{k}", f"mmv@{k}", f"macro_mmv@{k}"):
        table.add_row(key.replace("acc", "Acc").replace("macro_mmv", "macro mMV").replace("mmv", "mMV"), f"{m[key]:.3f}")
    for key, v in res.baselines.items():
        table.add_row(f"baseline: {key.replace('_', ' ')}", f"{v:.3f}")
    for cls, v in m[f"mv@{k}_per_class"].items():
        table.add_row(f"MV@{k} class {cls}", f"{v:.3f}")
    out_console.print(table)
    console.print(f"embedding {res.seconds['embed']:.1f} s ({res.seconds['embed_per_image'] * 1000:.0f} ms/image), "
                  f"search {res.seconds['search']:.2f} s; {len(res.skipped)} items skipped")
    for s in res.skipped[:20]:
        console.print(f"[yellow]skipped[/] {s}")


def _endpoint(path: Path | None, host: str | None, port: int, side: str) -> Any:
    if (path is None) == (host is None):
        flags = "--from PATH or --from-host HOST" if side == "from" else "--to-host HOST or --to-path PATH"
        _fail(f"give exactly one of {flags}")
    return Endpoint(path=path, host=host, port=port)


@library_app.command("migrate")
def migrate_library(
    source: Annotated[Path | None, typer.Option("--from", help="Embedded library folder to copy from.")] = None,
    from_host: Annotated[str | None, typer.Option("--from-host", help="Or: Chroma server to copy from.")] = None,
    from_port: Annotated[int, typer.Option("--from-port", min=1, max=65535, help="Port of --from-host.")] = 8000,
    to_host: Annotated[str | None, typer.Option("--to-host", help="Chroma server to copy into.")] = None,
    to_port: Annotated[int, typer.Option("--to-port", min=1, max=65535, help="Port of --to-host.")] = 8000,
    to_path: Annotated[Path | None, typer.Option("--to-path", help="Or: embedded library folder to copy into.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=100_000, help="Records read per page.")] = 1000,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and count what would be copied; write nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Copy the case library between an embedded folder and a Chroma server (either way).

    Every PathAsst collection is copied with its ids, embeddings, documents, metadatas, collection metadata and
    index space. Idempotent and resumable: only new or changed records are written, so a rerun completes an
    interrupted copy. A target collection built with another embedder or dimension is refused before anything is
    written. Record counts are verified per collection (exit code 1 if they differ). Thumbnails are files and stay
    where they are (the copied metadata keeps their paths).
    """
    src = _endpoint(source, from_host, from_port, "from")
    dst = _endpoint(to_path, to_host, to_port, "to")
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=as_json) as bar:
            tasks: dict[str, Any] = {}

            def tick(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done)

            report = migrate(src, dst, batch=batch, dry_run=dry_run, progress=tick)
    except _errors() as exc:
        _fail(str(exc))
    if as_json:
        out_console.print_json(report.model_dump_json())
    else:
        table = Table(title=f"{report.source} -> {report.target}{' (dry run)' if dry_run else ''}",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("collection", no_wrap=True)
        for col in ("dim", "source", "before", "to copy" if dry_run else "copied", "after"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("status", no_wrap=True)
        for c in report.collections:
            colour = {"ok": "green", "mismatch": "red", "dry-run": "yellow"}[c.status]
            table.add_row(c.name, str(c.dimension or "-"), str(c.source_count),
                          "[dim]new[/]" if c.created else str(c.target_before), str(c.copied), str(c.target_after),
                          f"[{colour}]{c.status}[/]")
        out_console.print(table)
        if not report.collections:
            console.print("[yellow]the source holds no PathAsst collections: nothing to copy[/]")
        console.print(f"[bold]{report.copied} records {'would be copied' if dry_run else 'copied'}[/] "
                      f"in {report.seconds:.1f} s"
                      + ("" if dry_run else "; counts verified" if report.verified else "; [red]counts differ[/]"))
    raise typer.Exit(0 if dry_run or report.verified else 1)
