"""``pathasst eval ...``: measurement commands (mounted by the main CLI as the ``eval`` sub-app).

``pathasst eval planner QUESTIONS_JSONL [--planner NAME]`` prints one JSON object: tool-set accuracy, per-tool
precision/recall, valid-argument rate, latency and the mismatches (see :mod:`pathasst.planning.planner_eval`).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from pathasst.agent.system import build_system
from pathasst.core.settings import Settings, get_settings
from pathasst.planning import PlannerError
from pathasst.tools.registry import ENTRY_POINT_GROUP, ToolRegistry, default_registry

__all__ = ["catalogue_for_eval", "eval_app", "input_models_for_eval"]

eval_app = typer.Typer(help="Measure PathAsst components (planner tool choice).", no_args_is_help=True)


@eval_app.callback()
def _eval_group() -> None:
    """Measure PathAsst components (planner tool choice)."""


def _registry(settings: Settings) -> tuple[Any, list[str]]:
    """The tool registry, loading each entry point on its own so one tool that is not importable yet skips only
    itself (the skipped names are returned)."""
    try:
        return default_registry(settings), []
    except ImportError:
        registry = ToolRegistry(settings)
        skipped: list[str] = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                registry.register(ep.load())
            except ImportError as exc:
                skipped.append(f"{ep.name} ({exc})")
        return registry, skipped


def catalogue_for_eval(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The registry's catalogue: the installed tools, their input schemas and planning hints."""
    registry, _ = _registry(settings)
    return registry.catalogue()


def input_models_for_eval(settings: Settings | None = None) -> dict[str, type[BaseModel]]:
    """Pydantic input models by tool name, for validating planned arguments."""
    return _input_models(_registry(settings)[0])


def _input_models(registry: Any) -> dict[str, type[BaseModel]]:
    return {name: registry.tool_class(name).input_model for name in registry.names()}


@eval_app.command("planner")
def planner_command(
    questions: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="JSONL file of questions.")
    ],
    planner: Annotated[
        str | None, typer.Option("--planner", "-p", help="hybrid | rules | llamacpp | openai (default: settings.planner).")
    ] = None,
    show_failures: Annotated[bool, typer.Option(help="Include the mismatched questions in the output.")] = True,
) -> None:
    """Plan every question in QUESTIONS with one planner and print the scores as JSON."""
    from pathasst.planning.planner_eval import evaluate_planner

    settings = get_settings()
    registry, skipped = _registry(settings)
    try:
        backend = build_system(settings, registry=registry).planner(planner)
    except PlannerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for name in skipped:
        typer.echo(f"note: tool not importable, left out of the catalogue: {name}", err=True)
    result = evaluate_planner(questions, backend, registry.catalogue(), input_models=_input_models(registry))
    result["questions"] = str(questions)
    if not show_failures:
        result.pop("failures", None)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    eval_app()
