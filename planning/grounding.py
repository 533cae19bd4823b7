"""The grounding rule: every number in a report's text must come from a source (a tool output or argument, a
retrieved case, or the case's own input such as the question). Used to test reports and to reject a planner's
phrasing that invents a figure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["NUMBER_RE", "fmt_number", "numbers_in_text", "source_numbers", "ungrounded_numbers"]

#: a number standing alone: not part of an identifier (call_3f2a, 22_2_ihc.png) or a version (0.1.0)
NUMBER_RE = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.]*\w)")


def fmt_number(v: float | int) -> str:
    """How reports print numbers: integers as they are, floats with up to 6 significant digits."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


def _walk(value: Any) -> Iterable[float | int]:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    elif isinstance(value, str):
        for m in NUMBER_RE.finditer(value):
            yield float(m.group()) if ("." in m.group() or "e" in m.group().lower()) else int(m.group())


def source_numbers(*sources: Any) -> set[str]:
    """Every textual form in which a number from ``sources`` may legitimately appear in a report."""
    out: set[str] = set()
    for src in sources:
        for v in _walk(src):
            out.add(fmt_number(v))
            out.add(str(v))
            if isinstance(v, float) and math.isfinite(v):
                for nd in range(0, 4):  # the same value rounded for display (e.g. 12.3456 -> 12.35, 12.3, 12)
                    r = round(v, nd)
                    out.add(fmt_number(r))
    return out


def numbers_in_text(text: str) -> list[str]:
    return [m.group() for m in NUMBER_RE.finditer(text)]


def _canon(token: str) -> str:
    try:
        v = float(token)
    except ValueError:
        return token
    return fmt_number(int(v)) if v == int(v) and "e" not in token.lower() else fmt_number(v)


def ungrounded_numbers(text: str, allowed: set[str]) -> list[str]:
    """Numbers in ``text`` that appear in no source (empty list = grounded)."""
    canon_allowed = {_canon(a) for a in allowed} | allowed
    return [t for t in numbers_in_text(text) if t not in allowed and _canon(t) not in canon_allowed]
