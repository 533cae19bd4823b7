"""Turn a planner's raw output (messy LLM text, or an already-decoded object) into a valid :class:`PlanDecision`.

:func:`parse_plan` extracts JSON from text (code fences, prose around it, single quotes, trailing commas, Python
literals), accepts the common shapes (``{"tools": [...]}``, ``{"tool_calls": [...]}``, a bare list, one
``{"name": ..., "arguments": ...}`` object, OpenAI ``{"function": {...}}`` items, ``{"finish": true}``), repairs what can
be repaired (close tool names, missing or misspelt image names, unknown arguments, enum spellings, numbers given as
strings), keeps geometry (``region``, ``box``, ``point``) only as written in the question (a planner may not invent
where to look), and records every repair in ``PlanDecision.repairs``. When nothing usable remains it raises
:class:`PlannerOutputError` with a message that says why; it never raises anything else.

:func:`validate_arguments` checks arguments against a tool's JSON schema (``jsonschema`` when installed, otherwise a
small built-in validator for the subset pydantic emits) and :func:`context_arguments` derives arguments a question or a
case implies (IHC mode from the stain, a point or box from coordinates in the question, ``k`` from "top 5").
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import warnings
from collections.abc import Iterable
from typing import Any

from pathasst.agent.planners.base import PlanDecision, PlannedCall, PlannerContext, PlannerOutputError

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

# Spellings of enum values a planner (or a pathologist) uses, mapped to their canonical normalised form.
# Applied only when the target is one of the schema's allowed values.
_ENUM_ALIASES: dict[str, str] = {
    "ki67": "ki67",
    "mib1": "ki67",
    "mib": "ki67",
    "ki": "ki67",
    "proliferation": "ki67",
    "er": "erpr",
    "pr": "erpr",
    "pgr": "erpr",
    "erpr": "erpr",
    "estrogen": "erpr",
    "oestrogen": "erpr",
    "progesterone": "erpr",
    "hormone": "erpr",
    "hormonereceptor": "erpr",
    "estrogenreceptor": "erpr",
    "oestrogenreceptor": "erpr",
    "progesteronereceptor": "erpr",
    "pdl1": "pdl1",
    "pdl": "pdl1",
    "pd1": "pdl1",
    "tps": "pdl1",
    "cps": "pdl1",
    "22c3": "pdl1",
    "sp263": "pdl1",
}

try:  # optional dependency: precise JSON-schema validation
    import jsonschema as _jsonschema  # type: ignore[import-untyped]

    VALIDATOR_NAME = "jsonschema"
except ImportError:  # pragma: no cover - depends on the environment
    _jsonschema = None
    VALIDATOR_NAME = "builtin-subset"


# ------------------------------------------------------------------------------------------------
# JSON extraction
# ------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def enum_alias(value: str, allowed: Iterable[Any]) -> Any | None:
    """The allowed enum value that ``value`` spells (case, punctuation and common aliases ignored), or None."""
    allowed = list(allowed)
    by_norm = {_norm(str(a)): a for a in allowed}
    key = _norm(value)
    if key in by_norm:
        return by_norm[key]
    alias = _ENUM_ALIASES.get(key)
    if alias is not None and alias in by_norm:
        return by_norm[alias]
    close = difflib.get_close_matches(key, list(by_norm), n=1, cutoff=0.8) if len(key) >= 3 else []
    return by_norm[close[0]] if close else None


def _balanced_spans(text: str) -> list[str]:
    """Top-level ``{...}`` / ``[...]`` spans of ``text``, brackets inside strings ignored."""
    spans: list[str] = []
    depth = 0
    start = -1
    quote: str | None = None
    escaped = False
    stack: list[str] = []
    pairs = {"{": "}", "[": "]"}
    for i, ch in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'" and depth > 0:
            # an apostrophe inside prose words (e.g. "it's") is not a quote; only treat ' as a quote after
            # a JSON punctuation character
            prev = text[:i].rstrip()[-1:] if i else ""
            if ch == '"' or prev in "{[,:":
                quote = ch
            continue
        if ch in pairs:
            if depth == 0:
                start = i
            stack.append(pairs[ch])
            depth += 1
        elif ch in "}]" and depth > 0:
            if stack and stack[-1] == ch:
                stack.pop()
                depth -= 1
                if depth == 0:
                    spans.append(text[start : i + 1])
            else:  # mismatched bracket: abandon this span
                depth = 0
                stack.clear()
    if depth > 0 and start >= 0:  # unterminated: try closing it
        spans.append(text[start:] + "".join(reversed(stack)))
    return spans


def _loads_lenient(text: str) -> tuple[Any, list[str]]:
    """Decode ``text`` as JSON, repairing common slips. Raises ValueError when it cannot."""
    try:
        return json.loads(text), []
    except json.JSONDecodeError:
        pass
    notes: list[str] = []
    fixed = _TRAILING_COMMA.sub(r"\1", text)
    if fixed != text:
        notes.append("removed trailing commas")
        try:
            return json.loads(fixed), notes
        except json.JSONDecodeError:
            pass
    try:  # Python literal syntax: single quotes, True/False/None
        with warnings.catch_warnings():  # odd escapes in model output are not our warnings to show
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
            value = ast.literal_eval(fixed)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        value = None
    else:
        if isinstance(value, (dict, list, tuple)):
            notes.append("read Python-style literal (single quotes / True / None)")
            return (list(value) if isinstance(value, tuple) else value), notes
    swapped = re.sub(r"'", '"', fixed)
    swapped = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", swapped)))
    try:
        value = json.loads(swapped)
    except json.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None
    notes.append("replaced single quotes with double quotes")
    return value, notes


def extract_json(text: str) -> tuple[Any, list[str]]:
    """The first decodable JSON value in ``text`` and the repairs needed. Raises ValueError when there is none."""
    stripped = text.strip()
    candidates: list[tuple[str, list[str]]] = [(stripped, [])]
    for match in _FENCE.finditer(text):
        body = match.group(2).strip()
        candidates.append((body, ["extracted JSON from a code fence"]))
        candidates.extend((s, ["extracted JSON from a code fence"]) for s in _balanced_spans(body) if s != body)
    spans = _balanced_spans(text)
    for span in spans:
        note = "removed text around the JSON" if span != stripped else None
        candidates.append((span, [note] if note else []))
    errors: list[str] = []
    seen: set[str] = set()
    for candidate, notes in candidates:
        if not candidate or candidate in seen or candidate[0] not in "{[":
            continue
        seen.add(candidate)
        try:
            value, fixes = _loads_lenient(candidate)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if candidate.endswith(("}", "]")) and candidate not in text:
            fixes = [*fixes, "closed unterminated brackets"]
        return value, notes + fixes
    detail = f" (last error: {errors[-1]})" if errors else ""
    raise ValueError(f"no JSON object or list found in the planner output{detail}")


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
# Schemas
# ------------------------------------------------------------------------------------------------
def resolve_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, _depth: int = 0) -> dict[str, Any]:
    """``schema`` with local ``$ref``s followed (one level at a time; ``root`` holds ``$defs``)."""
    root = root if root is not None else schema
    if _depth > 20 or not isinstance(schema, dict):
        return schema if isinstance(schema, dict) else {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return resolve_schema(merged, root, _depth + 1)
    return schema


def _variants(prop: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property schema (``anyOf``/``oneOf`` unpacked)."""
    prop = resolve_schema(prop, root)
    alts = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(alts, list):
        out = [resolve_schema(a, root) for a in alts if isinstance(a, dict)]
        return [a for a in out if a.get("type") != "null"]
    return [prop]


def _enum_of(prop: dict[str, Any], root: dict[str, Any]) -> list[Any] | None:
    for v in _variants(prop, root):
        if isinstance(v.get("enum"), list):
            return list(v["enum"])
        if "const" in v:
            return [v["const"]]
    return None


def _types_of(prop: dict[str, Any], root: dict[str, Any]) -> set[str]:
    types: set[str] = set()
    for v in _variants(prop, root):
        t = v.get("type")
        if isinstance(t, str):
            types.add(t)
        elif isinstance(t, list):
            types.update(x for x in t if isinstance(x, str))
    return types


_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _builtin_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    """A small validator for the JSON-schema subset pydantic emits (used when ``jsonschema`` is missing)."""
    schema = resolve_schema(schema, root)
    errors: list[str] = []
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            results = [_builtin_errors(value, alt, root, path) for alt in schema[key]]
            if key == "anyOf" and not any(not r for r in results):
                reqs = [a.get("required") for a in schema[key] if isinstance(a, dict)]
                if reqs and all(isinstance(r, list) and set(a) == {"required"} for r, a in zip(reqs, schema[key], strict=True)):
                    errors.append(f"{path}: needs one of: {' | '.join('+'.join(r) for r in reqs)}")
                else:
                    errors.append(f"{path}: matches none of the allowed forms")
            if key == "oneOf" and sum(1 for r in results if not r) != 1:
                errors.append(f"{path}: must match exactly one allowed form")
    if isinstance(schema.get("allOf"), list):
        for alt in schema["allOf"]:
            errors.extend(_builtin_errors(value, alt, root, path))
    t = schema.get("type")
    types = [t] if isinstance(t, str) else (t if isinstance(t, list) else [])
    if types and not any(_TYPE_CHECKS.get(x, lambda v: True)(value) for x in types):
        return [*errors, f"{path}: expected {'/'.join(types)}, got {type(value).__name__}"]
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, ok in (
            ("minimum", lambda a, b: a >= b),
            ("maximum", lambda a, b: a <= b),
            ("exclusiveMinimum", lambda a, b: a > b),
            ("exclusiveMaximum", lambda a, b: a < b),
        ):
            if isinstance(schema.get(key), (int, float)) and not ok(value, schema[key]):
                errors.append(f"{path}: {value} violates {key} {schema[key]}")
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, list):
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                errors.extend(_builtin_errors(item, items, root, f"{path}[{i}]"))
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            for i, (item, sub) in enumerate(zip(value, prefix, strict=False)):
                errors.extend(_builtin_errors(item, sub, root, f"{path}[{i}]"))
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for req in schema.get("required", []) or []:
            if req not in value:
                errors.append(f"{path}.{req}: required")
        for k, v in value.items():
            if k in props:
                errors.extend(_builtin_errors(v, props[k], root, f"{path}.{k}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{k}: unexpected argument")
    return errors


def validate_arguments(arguments: Any, schema: dict[str, Any]) -> list[str]:
    """Error messages for ``arguments`` against a tool's JSON ``schema`` (empty list = valid)."""
    if not isinstance(schema, dict) or not schema:
        return [] if isinstance(arguments, dict) else ["arguments must be an object"]
    if _jsonschema is not None:
        try:
            validator_cls = _jsonschema.validators.validator_for(schema)
            validator = validator_cls(schema)
            return [
                f"{'.'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message}"
                for e in validator.iter_errors(arguments)
            ]
        except _jsonschema.exceptions.SchemaError as exc:
            return [f"tool schema is invalid: {exc.message}"]
    return _builtin_errors(arguments, schema, schema, "arguments")


# ------------------------------------------------------------------------------------------------
# Arguments implied by the case or the question
# ------------------------------------------------------------------------------------------------
_INT = r"(\d{1,7})"
_BOX_RES = (
    re.compile(rf"\bbox\b[^\d\[(]{{0,20}}[\[(]?\s*{_INT}\s*,\s*{_INT}\s*,\s*{_INT}\s*,\s*{_INT}\s*[\])]?", re.I),
    re.compile(rf"[\[(]\s*{_INT}\s*,\s*{_INT}\s*,\s*{_INT}\s*,\s*{_INT}\s*[\])]"),
)
_BOX_XYWH = re.compile(
    rf"\bx\s*[=:]\s*{_INT}\s*,?\s*y\s*[=:]\s*{_INT}\s*,?\s*(?:w|width)\s*[=:]\s*{_INT}\s*,?\s*(?:h|height)\s*[=:]\s*{_INT}",
    re.I,
)
_POINT_RES = (
    re.compile(rf"\bx\s*[=:]\s*{_INT}\s*,?\s*(?:and\s+)?y\s*[=:]\s*{_INT}", re.I),
    re.compile(rf"[\[(]\s*{_INT}\s*,\s*{_INT}\s*[\])]"),
    re.compile(rf"\b(?:point|pixel|coordinates?|at)\s+{_INT}\s*,\s*{_INT}\b", re.I),
)
_TOPK = re.compile(
    r"\b(?:top|k\s*=|best|(?:the\s+)?(\d{1,3})\s+(?:most\s+)?(?:similar|comparable|closest|nearest|matching|related|past|previous|prior|archived?))\s*(\d{1,3})?",
    re.I,
)


def question_coordinates(question: str) -> dict[str, Any]:
    """A ``box`` ({x, y, width, height}) or ``point`` ({x, y}) written in the question, if any."""
    m = _BOX_XYWH.search(question)
    if m:
        x, y, w, h = (int(g) for g in m.groups())
        if w > 0 and h > 0:
            return {"box": {"x": x, "y": y, "width": w, "height": h}}
    for pattern in _BOX_RES:
        m = pattern.search(question)
        if m:
            x0, y0, x1, y1 = (int(g) for g in m.groups())
            if x1 > x0 and y1 > y0:
                return {"box": {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}}
    for pattern in _POINT_RES:
        m = pattern.search(question)
        if m:
            return {"point": {"x": int(m.group(1)), "y": int(m.group(2))}}
    return {}


def written_geometry(key: str, prop: dict[str, Any], root: dict[str, Any], question: str) -> Any | None:
    """The ``point`` / ``box`` / ``region`` written in ``question``, shaped as the property's schema wants it.

    A point is ``[x, y]`` for an array schema, else ``{"x", "y"}``; a box (and a region) is ``[x0, y0, x1, y1]`` for an
    array schema, else ``{"x", "y", "width", "height"}``. None when the question has no such coordinates.
    """
    coords = question_coordinates(question)
    value = coords.get("point") if key == "point" else coords.get("box")
    if value is None:
        return None
    variants = _variants(prop, root) if prop else []
    if any(v.get("type") == "array" for v in variants):
        if key == "point":
            return [value["x"], value["y"]]
        return [value["x"], value["y"], value["x"] + value["width"], value["y"] + value["height"]]
    return dict(value)


def _top_k(question: str) -> int | None:
    for m in _TOPK.finditer(question):
        digits = m.group(1) or m.group(2)
        if digits:
            return int(digits)
    return None


_MARKER_WORDS = re.compile(
    r"ki[\s-]?67|mib[\s-]?1|\bproliferat\w*|\bpd[\s-]?l1\b|\btps\b|\bcps\b|\b(?:o?estrogen|progesterone|hormone)\b|\ber\b|\bpr\b|\bpgr\b",
    re.I,
)


def stain_enum(stain: str | None, allowed: list[Any]) -> Any | None:
    """The enum value a stain name implies ("Ki-67 (MIB-1)" -> "ki67", "ER/PR" -> "er_pr"), or None (H&E, HER2)."""
    if not stain:
        return None
    hit = enum_alias(stain, allowed)
    if hit is not None:
        return hit
    for token in re.split(r"[\s,;/+()]+", stain):
        if token:
            hit = enum_alias(token, allowed)
            if hit is not None:
                return hit
    return None


def _enum_hint(question: str, stain: str | None, allowed: list[Any]) -> Any | None:
    """An enum value implied by the stain (the physical fact, first) or by a marker named in the question."""
    hit = stain_enum(stain, allowed)
    if hit is not None:
        return hit
    for m in _MARKER_WORDS.finditer(question):
        hit = enum_alias(m.group(0), allowed)
        if hit is not None:
            return hit
    return None


def context_arguments(schema: dict[str, Any], ctx: PlannerContext) -> dict[str, Any]:
    """Arguments (other than ``image``) that the question or case implies for a tool with this input ``schema``.

    Enum-valued parameters take the value the stain implies, else one a marker named in the question implies
    ("Ki-67", "PD-L1"); ``point``/``box`` take coordinates written in the question; ``k`` takes "top 5" / "3 similar cases".
    Only properties that exist in the schema are filled.
    """
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    out: dict[str, Any] = {}
    for name, prop in props.items():
        if name in {"image", "region"}:
            continue
        allowed = _enum_of(prop, schema)
        if allowed and all(isinstance(a, str) for a in allowed):
            hint = _enum_hint(ctx.question, ctx.stain, allowed)
            if hint is not None:
                out[name] = hint
    for key in ("point", "box"):
        if key in props:
            value = written_geometry(key, props[key], schema, ctx.question)
            if value is not None:
                out[key] = value
    if "k" in props:
        k = _top_k(ctx.question)
        if k is not None:
            prop = resolve_schema(props["k"], schema)
            lo = prop.get("minimum", 1)
            hi = prop.get("maximum")
            k = max(int(lo), k)
            out["k"] = min(int(hi), k) if isinstance(hi, (int, float)) else k
    return out


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
    norm = {_norm(v): v for v in valid}
    if _norm(key) in norm:
        repairs.append(f"tool name {name!r} -> {norm[_norm(key)]!r}")
        return norm[_norm(key)]
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
    allowed = _enum_of(prop, root)
    if allowed is not None and value not in allowed and isinstance(value, str):
        hit = enum_alias(value, allowed)
        if hit is not None:
            repairs.append(f"{tool}: {name}={value!r} -> {hit!r}")
            return hit
        return value
    types = _types_of(prop, root)
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
