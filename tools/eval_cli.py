"""``pathasst tools eval TOOL DATA_DIR``: a tool's accuracy against ground truth, printed as JSON.

Layouts (those of ``shared/data``, see :mod:`pathasst.tools.evaluate`):

* ``nuclei_segmentation`` on a consep_train-layout folder (``images/``, ``instances/``): object F1 / precision /
  recall at IoU > 0.5, PQ (DQ, SQ), AJI, pixel Dice, mean over tiles and aggregated;
* ``ihc_quantification`` on a deepliif_ki67-layout folder (``NAME_ihc.png`` + ``NAME_groundtruth.png``): positivity
  index error, detection F1 and per-class (positive / negative) point F1;
* ``tissue_classification`` and ``tumor_segmentation`` on an ebhi_seg-layout folder (``labels.csv``, ``images/``,
  ``masks/``): balanced accuracy, macro F1 and the confusion matrix; mean lesion Dice and IoU
  (:mod:`pathasst.tools.evaluate_tissue`);
* ``mitosis_detection`` on a mitosis_amibr-layout folder (``AMI-BR.csv``, ``atypical/``, ``normal/``): recall of the
  centred figure, false detections per crop, atypical balanced accuracy (:mod:`pathasst.tools.evaluate_mitosis`);
* ``slide_classification`` on a bisque_breast-layout folder (``labels.csv``, ``images/``): accuracy and ROC AUC
  (:mod:`pathasst.tools.evaluate_slide`).

Each of the last four reports a trivial baseline from the same run and 95 % intervals by case, slide or group.

``--held-out`` scores only the items the project never trained or tuned on (its fixed splits).

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

from pathasst.core.errors import ToolError, UnknownToolError
from pathasst.core.settings import Settings
from pathasst.tools.evaluate import CONSEP_MPP, DEEPLIIF_MPP, consep_held_out_tiles, evaluate_ihc, evaluate_nuclei
from pathasst.tools.evaluate_ihc import evaluate_ihc_leave_one_out
from pathasst.tools.registry import default_registry

__all__ = ["EVALUATIONS", "run_evaluation", "tools_eval"]


def _nuclei(tool: Any, data_dir: Path, settings: Settings, limit: int | None, mpp: float | None, held_out: bool) -> dict[str, Any]:
    if not (data_dir / "instances").is_dir() or not (data_dir / "images").is_dir():
        raise FileNotFoundError(f"{data_dir} is not in the consep_train layout (needs images/ and instances/)")
    names = None
    if held_out:
        names = consep_held_out_tiles(data_dir)
        if not names:
            raise FileNotFoundError(f"no held-out CoNSeP tiles (sources 16-26) in {data_dir}")
    return evaluate_nuclei(tool, data_dir, limit=limit, mpp=mpp or CONSEP_MPP, names=names)


def _ihc(tool: Any, data_dir: Path, settings: Settings, limit: int | None, mpp: float | None, held_out: bool) -> dict[str, Any]:
    if held_out:
        raise KeyError("--held-out does not apply to ihc_quantification (every DeepLIIF image is scored)")
    if not any(data_dir.glob("*_ihc.png")):
        raise FileNotFoundError(f"{data_dir} is not in the deepliif_ki67 layout (no NAME_ihc.png files)")
    if limit is not None:
        typer.echo("note: --limit is ignored for IHC folders (every image pair is scored)", err=True)
    if tool.weights_path() is None:  # the embedded reading: leave-one-image-out with the stain sweep

        return evaluate_ihc_leave_one_out(tool, data_dir, mpp=mpp or DEEPLIIF_MPP)
    return evaluate_ihc(tool, data_dir, mpp=mpp or DEEPLIIF_MPP)


def _layout(module: str, evaluator: str, needs: tuple[str, ...], layout: str) -> Callable[..., dict[str, Any]]:
    """An evaluator of ``pathasst.tools.MODULE`` for folders holding every path in ``needs``."""

    def run(tool: Any, data_dir: Path, settings: Settings, limit: int | None, mpp: float | None, held_out: bool) -> dict[str, Any]:
        from importlib import import_module

        missing = [n for n in needs if not (data_dir / n).exists()]
        if missing:
            raise FileNotFoundError(f"{data_dir} is not in the {layout} layout (needs {' and '.join(needs)})")
        fn = getattr(import_module(f"pathasst.tools.{module}"), evaluator)
        return fn(tool, data_dir, settings, held_out=held_out, limit=limit, mpp=mpp)

    return run


#: tool name -> (ground-truth layout, evaluator ``(tool, data_dir, settings, limit, mpp, held_out) -> metrics``)
EVALUATIONS: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {
    "nuclei_segmentation": ("consep_train", _nuclei),
    "ihc_quantification": ("deepliif_ki67", _ihc),
    "tissue_classification": ("ebhi_seg", _layout("evaluate_tissue", "evaluate_tissue_classification",
                                                  ("labels.csv", "images"), "ebhi_seg")),
    "tumor_segmentation": ("ebhi_seg", _layout("evaluate_tissue", "evaluate_tumor_segmentation",
                                               ("labels.csv", "images", "masks"), "ebhi_seg")),
    "mitosis_detection": ("mitosis_amibr", _layout("evaluate_mitosis", "evaluate_mitosis", ("AMI-BR.csv",),
                                                   "mitosis_amibr")),
    "slide_classification": ("bisque_breast", _layout("evaluate_slide", "evaluate_slide_classification",
                                                      ("labels.csv", "images"), "bisque_breast")),
}


def run_evaluation(
    tool_name: str, data_dir: Path, settings: Settings, limit: int | None = None, mpp: float | None = None, per_item: bool = False,
    held_out: bool = False,
) -> dict[str, Any]:
    """Evaluate ``tool_name`` on ``data_dir``; raises ``KeyError`` (no evaluation), ``UnknownToolError``,
    ``FileNotFoundError`` (wrong layout)."""
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
    t0 = time.perf_counter()
    metrics = fn(tool, data_dir, settings, limit, mpp, held_out)
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
        "held_out": held_out,
        "seconds": round(seconds, 3),
        "metrics": metrics,
    }


def tools_eval(
    tool: Annotated[str, typer.Argument(help=f"Tool to evaluate: {' | '.join(sorted(EVALUATIONS))}.")],
    data_dir: Annotated[Path, typer.Argument(help="Ground-truth folder (consep_train or deepliif_ki67 layout).")],
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N tiles (nuclei).")] = None,
    mpp: Annotated[float | None, typer.Option(help="Microns per pixel of the images (default: CoNSeP and DeepLIIF 0.25; "
                                                   "EBHI-Seg none given, as `tools predict` without --mpp).")] = None,
    per_item: Annotated[bool, typer.Option("--per-item", help="Include per-tile / per-image rows.")] = False,
    held_out: Annotated[
        bool,
        typer.Option("--held-out", help="Only the project's held-out items: nuclei, the 48 CoNSeP tiles of sources "
                     "16-26 (every 2nd); EBHI-Seg, the held-out cases of tools/data/ebhi_seg_split.json."),
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the JSON to this file.")] = None,
) -> None:
    """Accuracy of a tool against ground truth in DATA_DIR, printed as JSON (nuclei: F1, PQ, AJI, Dice; IHC:
    positivity-index error, per-cell F1)."""
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
