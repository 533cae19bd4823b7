"""Measure how well a planner chooses tools: exact tool-set accuracy, per-tool precision/recall, argument validity.

A question file is JSONL, one object a line::

    {"question": "...", "stain": "H&E", "image_kind": "patch", "expected_tools": ["nuclei_segmentation"]}

(an empty ``expected_tools`` means no tool is needed). Each question is planned once at step 0 with the images
``["image.png"]`` (patch) or ``["slide.svs"]`` (wsi). A planner that raises ``PlannerError`` /
``PlannerOutputError`` scores an empty, invalid plan (never correct, even where no tool was expected); nothing
stops the run.

The shipped sets (``planning/data/planner_dev.jsonl``, 80 questions, and ``planner_holdout.jsonl``, 40 questions
written separately and never used to tune the rules) label by these conventions: a diagnostic question is
``slide_classification`` on a whole slide and ``tissue_classification`` on a patch; "grade" means
``mitosis_detection``; HER2 scoring needs no tool (no ``ihc_quantification`` mode covers it); a prompt injection's
expected tools are those the genuine request needs.

Planners are measured on the registry's catalogue (``pathasst eval planner``): the tools as installed, with their
real input schemas and planning hints.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathasst.planning.base import Planner, PlannerContext, PlannerError
from pathasst.planning.parsing import VALIDATOR_NAME, validate_arguments

__all__ = [
    "EvalQuestion",
    "evaluate_planner",
    "load_questions",
]


# ------------------------------------------------------------------------------------------------
# Questions
# ------------------------------------------------------------------------------------------------
class EvalQuestion(BaseModel):
    """One line of a planner evaluation file."""

    model_config = ConfigDict(extra="ignore")
    question: str = Field(..., min_length=1, description="The user's question.")
    stain: str | None = Field(None, description="Stain of the case, e.g. 'H&E', 'Ki-67'.")
    image_kind: Literal["patch", "wsi"] = Field("patch", description="Patch image or whole-slide image.")
    expected_tools: list[str] = Field(..., description="Tools a correct plan calls; empty = no tool needed.")


def load_questions(path: Path) -> list[EvalQuestion]:
    """Read a JSONL question file; blank lines are skipped. Raises ValueError naming the bad line."""
    out: list[EvalQuestion] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(EvalQuestion.model_validate_json(line))
        except ValidationError as exc:
            raise ValueError(f"{path}:{lineno}: not a valid question line: {exc.errors()[0]['msg']}") from exc
    return out


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _arguments_valid(
    tool: str, arguments: dict[str, Any], schemas: Mapping[str, dict[str, Any]], models: Mapping[str, type[BaseModel]]
) -> bool:
    """Valid against the catalogue's JSON schema (``jsonschema`` when installed) AND, where the tool's pydantic input
    model is given, against that model too (it also runs the model's validators, e.g. "a point or a box")."""
    if tool not in schemas:
        return False
    if tool in models:
        try:
            models[tool].model_validate(arguments)
        except ValidationError:
            return False
        if VALIDATOR_NAME != "jsonschema":
            return True
    return not validate_arguments(arguments, schemas[tool])


def _validator_name(models: Mapping[str, type[BaseModel]]) -> str:
    if VALIDATOR_NAME == "jsonschema":
        return "jsonschema+pydantic" if models else "jsonschema"
    return "pydantic" if models else VALIDATOR_NAME


def evaluate_planner(
    questions_path: Path,
    planner: Planner,
    catalogue: list[dict[str, Any]],
    *,
    input_models: Mapping[str, type[BaseModel]] | None = None,
) -> dict[str, Any]:
    """Plan every question in ``questions_path`` with ``planner`` and score the tool sets (see the module docstring).

    Argument validity uses ``jsonschema`` against each catalogue entry's ``input_schema`` when it is installed (else
    the built-in subset validator), and in addition the tool's pydantic input model where ``input_models`` gives one
    (the registry's classes: they also run model validators that a JSON schema cannot express). The ``validator`` key
    of the result says which ("jsonschema+pydantic", "jsonschema", "pydantic", "builtin-subset").
    """
    questions = load_questions(questions_path)
    schemas = {t["name"]: t.get("input_schema") or {} for t in catalogue}
    models = dict(input_models or {})
    tools = sorted(set(schemas) | {t for q in questions for t in q.expected_tools})
    tp = dict.fromkeys(tools, 0)
    fp = dict.fromkeys(tools, 0)
    fn = dict.fromkeys(tools, 0)
    support = dict.fromkeys(tools, 0)
    correct = 0
    n_calls = 0
    n_valid = 0
    n_errors = 0
    latencies: list[float] = []
    failures: list[dict[str, Any]] = []
    for q in questions:
        images = ["slide.svs"] if q.image_kind == "wsi" else ["image.png"]
        ctx = PlannerContext(question=q.question, stain=q.stain, image_kind=q.image_kind, images=images, catalogue=catalogue)
        error: str | None = None
        t0 = time.perf_counter()
        try:
            decision = planner.plan(ctx)
            calls = list(decision.calls) if decision.action == "call_tools" else []
        except PlannerError as exc:  # PlannerOutputError included: an empty, invalid plan
            calls, error = [], f"{type(exc).__name__}: {exc}"
            n_errors += 1
        latencies.append(time.perf_counter() - t0)
        for call in calls:
            n_calls += 1
            n_valid += _arguments_valid(call.tool, call.arguments, schemas, models)
        got = {c.tool for c in calls}
        expected = set(q.expected_tools)
        for t in expected:
            support[t] = support.get(t, 0) + 1
        for t in got | expected:
            for table in (tp, fp, fn, support):
                table.setdefault(t, 0)
            if t in got and t in expected:
                tp[t] += 1
            elif t in got:
                fp[t] += 1
            else:
                fn[t] += 1
        if got == expected and error is None:  # an error never counts as a correct (empty) plan
            correct += 1
        else:
            failure: dict[str, Any] = {
                "question": q.question,
                "stain": q.stain,
                "image_kind": q.image_kind,
                "expected": sorted(expected),
                "got": sorted(got),
            }
            if error:
                failure["error"] = error
            failures.append(failure)
    per_tool = {
        t: {"precision": _ratio(tp[t], tp[t] + fp[t]), "recall": _ratio(tp[t], tp[t] + fn[t]), "support": support[t]}
        for t in sorted(tp)
    }
    n = len(questions)
    return {
        "planner": getattr(planner, "name", type(planner).__name__),
        "n": n,
        "accuracy": _ratio(correct, n),
        "per_tool": per_tool,
        "n_calls": n_calls,
        "valid_argument_rate": _ratio(n_valid, n_calls),
        "validator": _validator_name(models),
        "planner_errors": n_errors,
        "mean_latency_s": round(sum(latencies) / n, 4) if n else None,
        "failures": failures,
    }
