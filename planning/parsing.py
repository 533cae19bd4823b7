"""Turn a planner's raw output (messy LLM text, or an already-decoded object) into a valid :class:`PlanDecision`.

:func:`parse_plan` extracts JSON from text (:mod:`~pathasst.planning.json_extract`), accepts the common shapes
(``{"tools": [...]}``, ``{"tool_calls": [...]}``, a bare list, one ``{"name": ..., "arguments": ...}`` object, OpenAI
``{"function": {...}}`` items, ``{"finish": true}``), repairs what can be repaired (close tool names, missing or
misspelt image names, unknown arguments, enum spellings, numbers given as strings), keeps geometry (``region``,
``box``, ``point``) only as written in the question (a planner may not invent where to look), and records every
repair in ``PlanDecision.repairs``. When nothing usable remains it raises :class:`PlannerOutputError` with a message
that says why; it never raises anything else.

Arguments are checked against the tool's JSON schema by :mod:`~pathasst.planning.schemas`; the arguments a
question or case implies come from :mod:`~pathasst.planning.implied`. Their public names are re-exported here.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from pathasst.planning.base import PlanDecision, PlannedCall, PlannerContext, PlannerOutputError
from pathasst.planning.implied import (
    context_arguments,
    aliases_of,
    enum_alias,
    normalised,
    question_coordinates,
    stain_enum,
    written_geometry,
)
from pathasst.planning.json_extract import extract_json
from pathasst.planning.schemas import (
    VALIDATOR_NAME,
    enum_of,
    resolve_schema,
    types_of,
    validate_arguments,
)

__all__ = [
    "MAX_CALLS",
    "VALIDATOR_NAME",
    "context_arguments",
    "enum_alias",
    "extract_json",
    "parse_plan",
    "question_coordinates",
    "resolve_schema",
    "stain_enum",
    "validate_arguments",
    "written_geometry",
]

MAX_CALLS = 32  # more calls than this in one round is not a plan
_MAX_RAW_CHARS = 200_000
_NAME_CUTOFF = 0.75


# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------
_LIST_KEYS = ("tools", "tool_calls", "calls", "actions", "plan", "functions")
_NAME_KEYS = ("name", "tool", "tool_name", "function_name", "function")
_ARG_KEYS = ("arguments", "args", "parameters", "params", "input", "inputs", "kwargs")
_RATIONALE_KEYS = ("rationale", "reason", "reasoning", "thought", "explanation")


def _is_finish(obj: dict[str, Any]) -> bool:
    if obj.get("finish") is True or obj.get("done") is True:
        return True
    action = obj.get("action")
    return isinstance(action, str) and action.strip().lower() in {"finish", "final", "answer", "done", "stop"}


def _rationale(obj: Any) -> str | None:
    if isinstance(obj, dict):
        for key in _RATIONALE_KEYS:
            if isinstance(obj.get(key), str) and obj[key].strip():
                return obj[key].strip()[:500]
    return None


def _items(obj: Any, repairs: list[str]) -> tuple[list[Any] | None, str | None]:
    """The raw call items of a decoded object, or (None, rationale) when it says finish."""
    if isinstance(obj, list):
        return obj, None
    if not isinstance(obj, dict):
        raise PlannerOutputError(f"planner output is a JSON {type(obj).__name__}, expected an object or a list")
    rationale = _rationale(obj)
    for key in _LIST_KEYS:
        if key in obj:
            value = obj[key]
            if value is None:
                return [], rationale
            if isinstance(value, dict):
                repairs.append(f"'{key}' was a single object; read it as a list of one")
                value = [value]
            if isinstance(value, str):
                repairs.append(f"'{key}' was a single string; read it as a list of one")
                value = [value]
            if not isinstance(value, list):
                raise PlannerOutputError(f"'{key}' must be a list of tool calls, got {type(value).__name__}")
            if _is_finish(obj) and value:
                repairs.append("output said finish but listed tools; planned the tools")
            return value, rationale
    if any(k in obj for k in _NAME_KEYS):
        return [obj], rationale
    if _is_finish(obj):
        return None, rationale
    raise PlannerOutputError(
        "planner output has no tool calls: expected one of "
        + ", ".join(repr(k) for k in _LIST_KEYS)
        + ", a 'name'/'arguments' object, or {'finish': true}; got keys "
        + ", ".join(repr(k) for k in list(obj)[:8])
    )


def _split_item(item: Any, repairs: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) of one raw item, or None (with a repair note) when unusable."""
    if isinstance(item, str):
        return item, {}
    if not isinstance(item, dict):
        repairs.append(f"dropped a call that is a {type(item).__name__}, not an object")
        return None
    if isinstance(item.get("function"), dict):  # OpenAI: {"type": "function", "function": {"name", "arguments"}}
        item = item["function"]
    name = next((item[k] for k in _NAME_KEYS if isinstance(item.get(k), str)), None)
    if name is None:
        repairs.append("dropped a call with no tool name")
        return None
    args_key = next((k for k in _ARG_KEYS if k in item), None)
    if args_key is None:
        extra = {k: v for k, v in item.items() if k not in _NAME_KEYS and k not in _RATIONALE_KEYS and k not in {"id", "type"}}
        if extra:
            repairs.append(f"{name}: read top-level keys {sorted(extra)} as arguments")
        return name, extra
    args = item[args_key]
    if args is None:
        return name, {}
    if isinstance(args, str):
        text = args.strip()
        if not text:
            return name, {}
        try:
            args, notes = extract_json(text)
        except ValueError:
            repairs.append(f"{name}: arguments were not JSON; ignored them")
            return name, {}
        repairs.extend(f"{name}: arguments: {n}" for n in notes)
    if not isinstance(args, dict):
        repairs.append(f"{name}: arguments were a {type(args).__name__}, not an object; ignored them")
        return name, {}
    return name, dict(args)


# ------------------------------------------------------------------------------------------------
# Repair of one call
# ------------------------------------------------------------------------------------------------
def _match_tool(name: str, valid: list[str], repairs: list[str]) -> str | None:
    if name in valid:
        return name
    key = re.sub(r"[\s\-./]+", "_", name.strip().lower()).strip("_")
    key = re.sub(r"^(functions?|tools?)_", "", key)
    if key in valid:
        repairs.append(f"tool name {name!r} -> {key!r}")
        return key
    norm = {normalised(v): v for v in valid}
    if normalised(key) in norm:
        repairs.append(f"tool name {name!r} -> {norm[normalised(key)]!r}")
        return norm[normalised(key)]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=_NAME_CUTOFF)
    if close:
        repairs.append(f"tool name {name!r} -> {close[0]!r} (closest match)")
        return close[0]
    if valid:
        repairs.append(f"dropped unknown tool {name!r} (valid tools: {', '.join(valid)})")
    else:
        repairs.append(f"dropped tool {name!r}: the catalogue is empty")
    return None


def _coerce(name: str, tool: str, value: Any, prop: dict[str, Any], root: dict[str, Any], repairs: list[str]) -> Any:
    """``value`` converted to the property's type or enum where the intent is clear; unchanged otherwise."""
    allowed = enum_of(prop, root)
    if allowed is not None and value not in allowed and isinstance(value, str):
        hit = enum_alias(value, allowed, aliases_of(resolve_schema(prop, root)))
        if hit is not None:
            repairs.append(f"{tool}: {name}={value!r} -> {hit!r}")
            return hit
        return value
    types = types_of(prop, root)
    if isinstance(value, str) and not {"string"} & types:
        text = value.strip()
        if "integer" in types and re.fullmatch(r"[+-]?\d+", text):
            repairs.append(f"{tool}: {name} '{value}' read as an integer")
            return int(text)
        if "number" in types and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
            repairs.append(f"{tool}: {name} '{value}' read as a number")
            return float(text)
        if "boolean" in types and text.lower() in {"true", "false"}:
            repairs.append(f"{tool}: {name} '{value}' read as a boolean")
            return text.lower() == "true"
        if "array" in types:
            parts = [p.strip() for p in re.split(r"[,;]", text) if p.strip()]
            repairs.append(f"{tool}: {name} '{value}' split into a list")
            return parts
    if isinstance(value, float) and "integer" in types and "number" not in types and value.is_integer():
        repairs.append(f"{tool}: {name} {value} read as an integer")
        return int(value)
    return value


def _match_image(value: Any, images: list[str], tool: str, repairs: list[str]) -> list[str] | None:
    """Image names to use for a call given the planner's ``image`` value (None = drop the call)."""
    if not images:
        if isinstance(value, str) and value:
            return [value]
        repairs.append(f"dropped {tool}: no image given and the case lists none")
        return None
    if isinstance(value, str) and value in images:
        return [value]
    if isinstance(value, str) and value.strip():
        lowered = {i.lower(): i for i in images}
        if value.strip().lower() in lowered:
            hit = lowered[value.strip().lower()]
            repairs.append(f"{tool}: image {value!r} -> {hit!r}")
            return [hit]
        close = difflib.get_close_matches(value, images, n=1, cutoff=0.6)
        if close:
            repairs.append(f"{tool}: image {value!r} -> {close[0]!r} (closest case image)")
            return close
        repairs.append(f"{tool}: unknown image {value!r}; used every case image")
        return list(images)
    if len(images) == 1:
        repairs.append(f"{tool}: filled missing image with {images[0]!r}")
    else:
        repairs.append(f"{tool}: no image given; one call per case image ({len(images)})")
    return list(images)


_GEOMETRY = ("region", "box", "point")


def _ground_geometry(tool: str, args: dict[str, Any], schema: dict[str, Any], question: str, repairs: list[str]) -> None:
    """Keep ``region``/``box``/``point`` only as written in the question: a planner may not invent where to look."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    for key in _GEOMETRY:
        if key not in args or args[key] is None:
            continue
        written = written_geometry(key, props.get(key, {}), schema, question)
        if written is None:
            repairs.append(f"{tool}: dropped {key}={args[key]!r}: no such coordinates in the question")
            del args[key]
        elif args[key] != written:
            repairs.append(f"{tool}: {key} {args[key]!r} -> {written!r} as written in the question")
            args[key] = written


def _repair_call(
    name: str, args: dict[str, Any], ctx: PlannerContext, schemas: dict[str, dict[str, Any]], repairs: list[str]
) -> list[PlannedCall]:
    tool = _match_tool(name, list(schemas), repairs)
    if tool is None:
        return []
    schema = schemas[tool] if isinstance(schemas[tool], dict) else {}
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    clean: dict[str, Any] = {}
    for key, value in args.items():
        target = key
        if props and key not in props:
            close = difflib.get_close_matches(str(key), list(props), n=1, cutoff=0.8)
            if close and close[0] not in args:
                repairs.append(f"{tool}: argument {key!r} -> {close[0]!r}")
                target = close[0]
            else:
                repairs.append(f"{tool}: dropped unknown argument {key!r}")
                continue
        clean[target] = _coerce(target, tool, value, props.get(target, {}), schema, repairs) if props else value
    # replace or drop arguments that are still invalid; fill what the case implies (IHC mode, point/box, k)
    implied = context_arguments(schema, ctx) if schema else {}
    required = set(schema.get("required", []) or [])
    for key in list(clean):
        if key == "image" or not props:
            continue
        one = {"type": "object", "properties": {key: props[key]}, "$defs": schema.get("$defs", {})}
        if validate_arguments({key: clean[key]}, one):
            if key in implied:
                repairs.append(f"{tool}: invalid {key}={clean[key]!r} replaced by {implied[key]!r} from the case")
                clean[key] = implied[key]
            elif key not in required:
                repairs.append(f"{tool}: dropped invalid argument {key}={clean[key]!r}")
                del clean[key]
    for key in sorted(set(implied) - set(clean)):
        clean[key] = implied[key]
        repairs.append(f"{tool}: filled missing {key}={implied[key]!r} from the case")
    _ground_geometry(tool, clean, schema, ctx.question, repairs)
    images = _match_image(clean.get("image"), ctx.images, tool, repairs) if ("image" in props or not props) else [None]
    if images is None:
        return []
    calls: list[PlannedCall] = []
    for image in images:
        call_args = dict(clean)
        if image is not None:
            call_args["image"] = image
        errors = validate_arguments(call_args, schema) if schema else []
        if errors:
            repairs.append(f"dropped {tool}: arguments invalid ({'; '.join(errors[:3])})")
            continue
        calls.append(PlannedCall(tool=tool, arguments=call_args))
    return calls


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------
def _decode(raw: Any, repairs: list[str]) -> Any:
    if isinstance(raw, (dict, list)):
        return raw
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    if not isinstance(raw, str):
        raise PlannerOutputError(f"planner output must be text or a JSON object, got {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise PlannerOutputError("planner output is empty: expected JSON such as {\"tools\": [...]}")
    if len(text) > _MAX_RAW_CHARS:
        repairs.append(f"truncated planner output to {_MAX_RAW_CHARS} characters")
        text = text[:_MAX_RAW_CHARS]
    try:
        value, notes = extract_json(text)
    except ValueError as exc:
        preview = text[:80].replace("\n", " ")
        raise PlannerOutputError(f"{exc}; output began: {preview!r}") from None
    repairs.extend(notes)
    return value


def _parse(raw: Any, ctx: PlannerContext) -> PlanDecision:
    repairs: list[str] = []
    obj = _decode(raw, repairs)
    items, rationale = _items(obj, repairs)
    if items is None:
        return PlanDecision(action="finish", rationale=rationale, repairs=repairs)
    if not items:
        return PlanDecision(action="finish", rationale=rationale or "no tool needed", repairs=repairs)
    if len(items) > MAX_CALLS:
        repairs.append(f"kept the first {MAX_CALLS} of {len(items)} calls")
        items = items[:MAX_CALLS]
    schemas = {
        t["name"]: (t.get("input_schema") or {})
        for t in ctx.catalogue
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    }
    calls: list[PlannedCall] = []
    seen: set[str] = set()
    for item in items:
        split = _split_item(item, repairs)
        if split is None:
            continue
        for call in _repair_call(split[0], split[1], ctx, schemas, repairs):
            key = call.tool + json.dumps(call.arguments, sort_keys=True, default=str)
            if key in seen:
                repairs.append(f"removed duplicate call to {call.tool}")
                continue
            seen.add(key)
            calls.append(call)
    if not calls:
        reasons = "; ".join(repairs[-5:]) if repairs else "no call could be read"
        raise PlannerOutputError(f"no usable tool call in planner output ({reasons})")
    return PlanDecision(action="call_tools", calls=calls, rationale=rationale, repairs=repairs)


def parse_plan(raw: str | dict[str, Any] | list[Any], ctx: PlannerContext) -> PlanDecision:
    """Parse and repair a planner's output into a :class:`PlanDecision` (see the module docstring).

    Raises only :class:`PlannerOutputError`, whose message says what was wrong.
    """
    try:
        return _parse(raw, ctx)
    except PlannerOutputError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        # pydantic's ValidationError is a ValueError; anything here is a malformed output we did not anticipate
        raise PlannerOutputError(f"could not read planner output ({type(exc).__name__}: {exc})") from exc
