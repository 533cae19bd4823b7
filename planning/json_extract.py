"""JSON out of a planner's text: code fences, prose around it, single quotes, trailing commas, Python literals."""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

__all__ = ["extract_json"]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


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
