"""``pathasst tools eval TOOL DATA_DIR``: a tool's accuracy against ground truth, printed as JSON.

Layouts (those of ``shared/data``, see :mod:`pathasst.tools.evaluate`):

* ``nuclei_segmentation`` on a consep_train-layout folder (``images/``, ``instances/``): object F1 / precision /
  recall at IoU > 0.5, PQ (DQ, SQ), AJI, pixel Dice, mean over tiles and aggregated;
* ``ihc_quantification`` on a deepliif_ki67-layout folder (``NAME_ihc.png`` + ``NAME_groundtruth.png``): positivity
  index error, detection F1 and per-class (positive / negative) point F1.

The tool runs with the current settings, so its deep backend is evaluated when its weights are configured; the JSON
names the tool, its version, backend, weights and their sha256 next to the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["EVALUATIONS", "run_evaluation", "tools_eval"]


def _nuclei(tool: Any, data_dir: Path, limit: int | None, mpp: float | None, names: list[str] | None = None) -> dict[str, Any]:
    from pathasst.tools.evaluate import CONSEP_MPP, evaluate_nuclei

    if not (data_dir / "instances").is_dir() or not (data_dir / "images").is_dir():
        raise FileNotFoundError(f"{data_dir} is not in the consep_train layout (needs images/ and instances/)")
    return evaluate_nuclei(tool, data_dir, limit=limit, mpp=mpp or CONSEP_MPP, names=names)


def _ihc(tool: Any, data_dir: Path, limit: int | None, mpp: float | None, names: list[str] | None = None) -> dict[str, Any]:
    from pathasst.tools.evaluate import DEEPLIIF_MPP, evaluate_ihc

    if not any(data_dir.glob("*_ihc.png")):
        raise FileNotFoundError(f"{data_dir} is not in the deepliif_ki67 layout (no NAME_ihc.png files)")
    if limit is not None:
        typer.echo("note: --limit is ignored for IHC folders (every image pair is scored)", err=True)
    return evaluate_ihc(tool, data_dir, mpp=mpp or DEEPLIIF_MPP)


#: tool name -> (ground-truth layout, evaluator)
EVALUATIONS: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {
    "nuclei_segmentation": ("consep_train", _nuclei),
    "ihc_quantification": ("deepliif_ki67", _ihc),
}


def run_evaluation(
    tool_name: str, data_dir: Path, settings: Any, limit: int | None = None, mpp: float | None = None, per_item: bool = False,
    held_out: bool = False,
) -> dict[str, Any]:
    """Evaluate ``tool_name`` on ``data_dir``; raises ``KeyError`` (no evaluation), ``UnknownToolError``,
    ``FileNotFoundError`` (wrong layout)."""
    from pathasst.tools.registry import default_registry

    registry = default_registry(settings)
    tool = registry.get(tool_name)  # UnknownToolError lists the valid names
    if tool_name not in EVALUATIONS:
        raise KeyError(
            f"no ground-truth evaluation for {tool_name!r}; evaluable tools: {', '.join(sorted(EVALUATIONS))}"
        )
    layout, fn = EVALUATIONS[tool_name]
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    names = None
    if held_out:
        if tool_name != "nuclei_segmentation":
            raise KeyError("--held-out applies to nuclei_segmentation on CoNSeP (the IHC images are all scored)")
        from pathasst.tools.evaluate import consep_held_out_tiles

        names = consep_held_out_tiles(data_dir)
        if not names:
            raise FileNotFoundError(f"no held-out CoNSeP tiles (sources 16-26) in {data_dir}")
    t0 = time.perf_counter()
    metrics = fn(tool, data_dir, limit, mpp, names)
    seconds = time.perf_counter() - t0
    if not per_item:
        metrics = {k: v for k, v in metrics.items() if k not in ("per_tile", "per_image")}
    info = tool.model_info()
    return {
        "tool": tool_name,
        "version": tool.version,
        "backend": "deep" if info.get("weights") or info.get("shipped_weights") else "classical",
        "model": info,
        "data_dir": str(data_dir.resolve()),
        "layout": layout,
        "seconds": round(seconds, 3),
        "metrics": metrics,
    }


def tools_eval(
    tool: Annotated[str, typer.Argument(help=f"Tool to evaluate: {' | '.join(sorted(EVALUATIONS))}.")],
    data_dir: Annotated[Path, typer.Argument(help="Ground-truth folder (consep_train or deepliif_ki67 layout).")],
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N tiles (nuclei).")] = None,
    mpp: Annotated[float | None, typer.Option(help="Microns per pixel of the images (default: the dataset's, 0.25).")] = None,
    per_item: Annotated[bool, typer.Option("--per-item", help="Include per-tile / per-image rows.")] = False,
    held_out: Annotated[
        bool, typer.Option("--held-out", help="Nuclei: only the 48 held-out CoNSeP tiles (sources 16-26, every 2nd).")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the JSON to this file.")] = None,
) -> None:
    """Accuracy of a tool against ground truth in DATA_DIR, printed as JSON (nuclei: F1, PQ, AJI, Dice; IHC:
    positivity-index error, per-cell F1)."""
    from pathasst.agent.settings import Settings
    from pathasst.tools.errors import ToolError, UnknownToolError

    try:
        result = run_evaluation(tool, data_dir, Settings(), limit=limit, mpp=mpp, per_item=per_item, held_out=held_out)
    except (KeyError, UnknownToolError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from exc
    except ToolError as exc:
        typer.echo(f"error: {tool} failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)
