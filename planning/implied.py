"""Arguments a question or a case implies: an enum value from the stain or a marker named in the question (with the
spellings pathologists use), a point or box from coordinates written in the question, ``k`` from "top 5"."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from pathasst.planning.base import PlannerContext
from pathasst.planning.schemas import enum_of, resolve_schema, schema_variants

__all__ = ["aliases_of", "context_arguments", "enum_alias", "normalised", "question_coordinates", "stain_enum", "written_geometry"]

def normalised(text: str) -> str:
    """``text`` lower-cased with everything but letters and digits removed ("Ki-67" -> "ki67")."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def aliases_of(prop: dict[str, Any]) -> dict[str, Any]:
    """Other spellings of a property's enum values, declared by the tool on its input field
    (``json_schema_extra={"x-aliases": {spelling: value}}``); {} when it declares none."""
    aliases = prop.get("x-aliases") if isinstance(prop, dict) else None
    return {normalised(str(k)): v for k, v in aliases.items()} if isinstance(aliases, dict) else {}


def _exact(key: str, by_norm: dict[str, Any], aliases: dict[str, Any]) -> Any | None:
    if key in by_norm:
        return by_norm[key]
    alias = aliases.get(key)
    return by_norm.get(normalised(str(alias))) if alias is not None else None


def enum_alias(value: str, allowed: Iterable[Any], aliases: dict[str, Any] | None = None) -> Any | None:
    """The allowed enum value that ``value`` spells (case and punctuation ignored, the tool's ``aliases`` of
    :func:`aliases_of`, then a close spelling), or None."""
    allowed = list(allowed)
    by_norm = {normalised(str(a)): a for a in allowed}
    key = normalised(value)
    hit = _exact(key, by_norm, aliases or {})
    if hit is not None:
        return hit
    close = difflib.get_close_matches(key, list(by_norm), n=1, cutoff=0.8) if len(key) >= 3 else []
    return by_norm[close[0]] if close else None


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
    variants = schema_variants(prop, root) if prop else []
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


def stain_enum(stain: str | None, allowed: list[Any], aliases: dict[str, Any] | None = None) -> Any | None:
    """The enum value a stain name implies ("Ki-67 (MIB-1)" -> "ki67", "ER/PR" -> "er_pr" with the IHC tool's
    aliases), or None (H&E, HER2)."""
    if not stain:
        return None
    hit = enum_alias(stain, allowed, aliases)
    if hit is not None:
        return hit
    for token in re.split(r"[\s,;/+()]+", stain):
        if token:
            hit = enum_alias(token, allowed, aliases)
            if hit is not None:
                return hit
    return None


def _enum_hint(question: str, stain: str | None, allowed: list[Any], aliases: dict[str, Any]) -> Any | None:
    """An enum value implied by the stain (the physical fact, first) or by a value or alias the question names
    (a word, or two words written apart: "Ki 67", "PD L1"); exact spellings only."""
    hit = stain_enum(stain, allowed, aliases)
    if hit is not None:
        return hit
    by_norm = {normalised(str(a)): a for a in allowed}
    words = [normalised(w) for w in re.findall(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*", question)]
    for i, word in enumerate(words):
        for key in (word, word + words[i + 1] if i + 1 < len(words) else ""):
            hit = _exact(key, by_norm, aliases) if key else None
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
        allowed = enum_of(prop, schema)
        if allowed and all(isinstance(a, str) for a in allowed):
            hint = _enum_hint(ctx.question, ctx.stain, allowed, aliases_of(resolve_schema(prop, schema)))
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
