"""``pathasst slide ...``: whole-slide runs (mounted by the main CLI as the ``slide`` sub-app).

``pathasst slide nuclei SLIDE --out DIR`` segments every nucleus of a slide's tissue into ``DIR/nuclei.sqlite``,
with a progress bar and ETA; running it again resumes (see :mod:`pathasst.tools.wsi.run`). ``pathasst slide query
DIR X0 Y0 X1 Y1`` prints the nuclei of a level-0 rectangle as QuPath GeoJSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pathasst.core.case_model import CaseError
from pathasst.core.errors import ToolError
from pathasst.core.regions import Region
from pathasst.core.settings import Settings
from pathasst.tools.wsi.run import SlideNucleiRun
from pathasst.tools.wsi.segment import SLIDE_PATHS, build_segmenter
from pathasst.tools.wsi.store import NucleiStore

__all__ = ["slide_app"]

slide_app = typer.Typer(help="Whole-slide runs: every nucleus of a slide, on disk, resumable.", no_args_is_help=True)
console = Console(stderr=True)


@slide_app.callback()
def _slide_group() -> None:
    """Whole-slide runs: every nucleus of a slide, on disk, resumable."""


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


@slide_app.command("nuclei")
def nuclei_command(
    slide: Annotated[Path, typer.Argument(help="A slide file OpenSlide reads (.svs, .ndpi, .mrxs, tiled TIFF...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (resumed if it holds this slide's run).")],
    path: Annotated[str, typer.Option(help=f"{' | '.join(SLIDE_PATHS)}: the 20x slide network (int8; or "
                                           "float32), or the patch ensemble on tiles resampled to 0.25 um/px (slower)."
                                      )] = "fast",
    weights: Annotated[Path | None, typer.Option(help="Another checkpoint for the chosen path.")] = None,
    mpp: Annotated[float | None, typer.Option(help="Slide resolution (um/px) when the file states none.")] = None,
    tile: Annotated[int, typer.Option(help="Tile side at the working resolution (px).")] = 512,
    region: Annotated[tuple[int, int, int, int] | None, typer.Option(
        help="Only this level-0 rectangle: X Y WIDTH HEIGHT.")] = None,
    restart: Annotated[bool, typer.Option(help="Discard a run of other settings in --out, not refuse.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Segment every nucleus of the slide's tissue; writes nuclei.sqlite, nuclei.geojson, density.png, summary.json."""
    if not slide.is_file():
        _fail(f"slide not found: {slide}")
    if path not in SLIDE_PATHS:
        _fail(f"--path must be one of {', '.join(SLIDE_PATHS)}, not {path!r}")
    try:
        segmenter, description = build_segmenter(path, Settings(), weights)
        box = Region(x=region[0], y=region[1], width=region[2], height=region[3]) if region else None
        run = SlideNucleiRun(slide, out, segmenter, tile=tile, mpp=mpp, description=description, restart=restart,
                             region=box)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("tiles · {task.fields[nuclei]:,} nuclei"), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=as_json) as bar:
            task = bar.add_task(slide.name, total=None, nuclei=0)

            def progress(done: int, total: int, nuclei: int) -> None:
                bar.update(task, completed=done, total=total, nuclei=nuclei)

            summary = run.run(progress)
    except (CaseError, ToolError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    console.print(f"{summary['nuclei']:,} nuclei in {summary['tissue_mm2']:.2f} mm^2 of tissue "
                  f"({summary['nuclei_per_mm2'] or 0:,.0f} per mm^2); "
                  f"{summary['tissue_megapixels_per_second'] or 0:.2f} MP of tissue per second; written to {out}")
    for name, n in summary["composition"].items():
        console.print(f"  {name}: {n:,} ({summary['composition_fraction'][name]:.1%})")
    if summary.get("warning"):
        console.print(f"[yellow]warning:[/] {summary['warning']}")


@slide_app.command("query")
def query_command(
    out: Annotated[Path, typer.Argument(help="The output folder of `pathasst slide nuclei`.")],
    x0: float, y0: float, x1: float, y1: float,
) -> None:
    """Print the nuclei of a level-0 rectangle as a QuPath GeoJSON FeatureCollection."""
    db = out / "nuclei.sqlite"
    if not db.is_file():
        _fail(f"no slide run in {out} (nuclei.sqlite missing)")
    with NucleiStore(db) as store:
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        features = [n.feature() for n in store.nuclei_in(*box)]
    print(json.dumps({"type": "FeatureCollection", "features": features}))
