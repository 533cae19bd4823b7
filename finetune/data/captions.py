"""Split a multi-panel figure caption into per-panel captions, deterministically (issue 29, item 1).

:func:`split_caption` gives a :class:`FigureSplit`: ``panels`` with ``label`` and ``caption``, plus figure-level
``magnification``, ``stain``, ``identifiers`` (:mod:`pathasst.finetune.data.caption_refine`), the ``backend`` that
produced it and a ``note`` when something was odd. A caption with no panel labels gives one panel labelled ``""``
holding the whole caption.

Panel caption = the shared text (sentences before the first panel label, and trailing sentences that read as
figure-wide boilerplate: magnification, scale bars, stain, abbreviations, statistics) + the text that belongs to the
panel. Magnification and stain text stay inside the panel captions: the gold panel captions keep them, and removing
them costs token F1. The label markers come from :mod:`pathasst.finetune.data.caption_markers`; this module cuts
the caption into sentences and gives each piece to its panel(s). Measured figures:
:mod:`pathasst.finetune.data.caption_eval`. The LLM backend, which falls back to this parser:
:mod:`pathasst.finetune.data.caption_llm`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pathasst.finetune.data.caption_markers import _find_markers, _Marker, _paren_pairs, _positional_markers
from pathasst.finetune.data.caption_refine import _is_stain_only, _tidy, _tokens, extract_refined

__all__ = ["Backend", "FigureSplit", "Panel", "split_caption"]

Backend = Literal["rules", "llm", "none"]


# --------------------------------------------------------------------------------------------------- schemas
class Panel(BaseModel):
    """One panel of a multi-panel figure."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(description='Panel label as written in the caption ("A", "b", "left"); "" when the caption '
                                   "names no panel")
    caption: str = Field(description="Shared sentences plus the text that belongs to this panel, in caption order")


class FigureSplit(BaseModel):
    """A figure caption split into panels, with figure-level refined fields."""

    panels: list[Panel] = Field(description="Panels in label order; empty only when the entry had no usable caption")
    magnification: list[str] = Field(default_factory=list, description="Magnification statements as written "
                                     '("x200", "original magnification *10")')
    stain: list[str] = Field(default_factory=list, description='Stains named in the caption, canonical names ("H&E", '
                             '"IHC", "Giemsa")')
    identifiers: list[str] = Field(default_factory=list, description="Patient / case / specimen identifiers and ages "
                                   'as written ("case 3", "83-year-old male")')
    backend: Backend = Field(description='"rules" (deterministic parser), "llm" (chat-completions server) or "none" '
                             "(not split)")
    note: str | None = Field(default=None, description="Why the LLM was not used or what was odd about the input")
    error: str | None = Field(default=None, description="Set when the entry could not be split (e.g. no caption); "
                              "the figure is kept")


# --------------------------------------------------------------------------------------------------- sentences
_ABBREV = {"e.g", "i.e", "vs", "fig", "figs", "al", "approx", "ca", "no", "nos", "dr", "cf", "resp", "ref", "refs",
           "mr", "mrs", "st", "sp", "spp", "var", "etc"}


def _sentence_ends(text: str, pairs: list[tuple[int, int]], markers: list[_Marker]) -> list[int]:
    """Positions just after a sentence-ending . ! ? (outside parentheses and panel markers, not abbreviations)."""
    depth = [0] * (len(text) + 1)
    for o, c in pairs:
        depth[o + 1] += 1
        depth[c] -= 1
    run = 0
    for i in range(len(depth)):
        run += depth[i]
        depth[i] = run
    blocked = set()
    for mk in markers:
        blocked.update(range(mk.start, mk.end))
    ends = []
    for m in re.finditer(r"[.!?](?=\s|$|[A-Z(\[\"'])", text):
        i = m.start()
        if depth[i] > 0 or i in blocked:
            continue
        word = re.search(r"([A-Za-z.]+)$", text[max(0, i - 12):i])
        if word and word.group(1).lower().rstrip(".") in _ABBREV:
            continue
        nxt = re.match(r"\s*(\S)", text[i + 1:i + 4])
        if nxt and nxt.group(1).islower():
            continue
        if word and len(word.group(1)) == 1 and word.group(1).isupper() and nxt and not text[i + 1:i + 2].isspace():
            continue
        ends.append(i + 1)
    return ends


# --------------------------------------------------------------------------------------------------- assignment
_LEGEND_START = (r"(?:scale\s*bars?|(?:white|black|error)\s+bars?|bars?\b|arrows?\b|arrow\s*heads?|arrowheads?|"
                 r"asterisks?\b|abbreviations?\b|statistics?\b)")
_LEGEND = re.compile(_LEGEND_START, re.I)
_FOOTER_START = re.compile(
    rf"(?:{_LEGEND_START}|(?:original\s+)?magnifications?\b|"
    r"(?:these|all)\b[\w\s&-]{0,20}\b(?:images|photographs|micrographs|photomicrographs)\b)", re.I)
_FOOTER_ANY = re.compile(
    r"\bmagnifications?\b|\bmagnified\b|\bobjectives?\b|"
    r"\b(?:data|values|results)\s+(?:are|were|represent)\b[^.]{0,300}?\b(?:mean|average|s\.?d\.?|sem|median)\b",
    re.I)
_SINGLE_ABBREV = re.compile(r"^[A-Z][A-Za-z0-9/+-]{0,9},\s+[a-z][^,;.]{0,60}\.?$")


def _is_abbreviation_list(sentence: str) -> bool:
    """'AC, adenocarcinoma; Bo, bone; PC, prostate cancer cells.' or 'AC, adenocarcinoma.'"""
    if _SINGLE_ABBREV.match(sentence):
        return True
    items = [it for it in sentence.split(";") if it.strip()]
    pairs = [it for it in items if "," in it and len(it.split(",", 1)[0].split()) <= 3]
    return len(items) >= 2 and len(pairs) >= 0.8 * len(items)


def _is_footer(sentence: str) -> bool:
    """A trailing sentence that reads as figure-wide boilerplate (shared by every panel): scale bars, magnification,
    arrows, abbreviations, statistics, 'data represent mean ...', 'these images ...', a stain on its own."""
    s = sentence.strip().lstrip("(").strip()
    return bool(_FOOTER_START.match(s) or _FOOTER_ANY.search(s)) or _is_abbreviation_list(s) or _is_stain_only(s)


@dataclass
class _Piece:
    start: int
    text: str
    owner: tuple[str, ...] | None  # None = shared by every panel


@dataclass
class _Chunk:
    start: int
    end: int
    lead: _Marker | None = None
    inner: list[_Marker] = field(default_factory=list)


def _chunks(text: str, markers: list[_Marker], ends: list[int]) -> list[_Chunk]:
    cuts = set(ends) | {mk.start for mk in markers if mk.orient == "F"} | {0, len(text)}
    bounds = sorted(cuts)
    chunks = [_Chunk(a, b) for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]
    it = iter(sorted(markers, key=lambda m: m.start))
    pending = next(it, None)
    for ch in chunks:
        while pending is not None and pending.start < ch.end:
            if pending.orient == "F" and ch.lead is None and not text[ch.start:pending.start].strip():
                ch.lead = pending
            else:
                ch.inner.append(pending)
            pending = next(it, None)
    return chunks


def _assign(text: str, markers: list[_Marker], ends: list[int]) -> list[_Piece]:
    pieces: list[_Piece] = []
    region: tuple[str, ...] | None = None
    region_first = False
    seen_marker = False
    last_labels: tuple[str, ...] | None = None
    pending: list[_Chunk] = []  # marker-less chunks waiting for the next backward marker
    region_tail: list[_Chunk] = []  # marker-less chunks after the first chunk of the current region

    def add(a: int, b: int, owner: tuple[str, ...] | None) -> None:
        if b > a and text[a:b].strip():
            pieces.append(_Piece(a, text[a:b], owner))

    def add_extra(mk: _Marker, owner: tuple[str, ...]) -> None:
        if mk.extra:
            pieces.append(_Piece(mk.start, f"({mk.extra})", owner))

    def flush_pending(owner: tuple[str, ...] | None) -> None:
        for ch in pending:
            add(ch.start, ch.end, owner)
        pending.clear()

    def flush_region_tail() -> None:
        for ch in region_tail:
            add(ch.start, ch.end, region)
        region_tail.clear()

    queue = _chunks(text, markers, ends)
    k = 0
    while k < len(queue):
        ch = queue[k]
        k += 1
        start = ch.start
        if ch.lead is not None:
            flush_region_tail()
            flush_pending(last_labels)
            region, region_first, seen_marker = ch.lead.labels, True, True
            add_extra(ch.lead, region)
            start = ch.lead.end
        effective: list[_Marker] = []
        split_at: _Marker | None = None
        ended_region = False
        if ch.lead is None and ch.inner and _LEGEND.match(text[ch.start:ch.end].strip()):
            ch.inner = []  # 'Scale bars in (A-D) = 10 mum': boilerplate naming panels is not split
        for mk in ch.inner:
            if region is not None and not ended_region and mk.orient == "R" and (
                    region_first or set(mk.labels) <= set(region)):
                continue  # 'as in (A)', 'boxed area in (B)': a reference, not a panel boundary
            if region is not None and set(mk.labels) <= set(region):
                effective.append(mk)
            elif region is not None and region_first and not ended_region:
                split_at = mk
                break
            else:
                if region is not None:
                    ended_region = True
                effective.append(mk)
        if split_at is not None:
            # a marker naming another panel inside the first sentence of a region: the text after it is that panel's
            rest = _Chunk(split_at.start, ch.end, lead=split_at,
                          inner=[m for m in ch.inner if m.start > split_at.start])
            split_at.orient = "F"
            queue.insert(k, rest)
            ch = _Chunk(ch.start, split_at.start, ch.lead, [m for m in effective if m.start < split_at.start])
            effective = ch.inner
        if ended_region:
            flush_region_tail()
            region = None
        if not effective:
            if region is not None:
                if region_first:
                    add(start, ch.end, region)
                else:
                    region_tail.append(_Chunk(start, ch.end))
            elif seen_marker:
                pending.append(_Chunk(start, ch.end))
            else:
                add(start, ch.end, None)
            region_first = False
            continue
        flush_region_tail()
        seen_marker = True
        union = tuple(dict.fromkeys(lab for mk in effective for lab in mk.labels))
        pos = start
        first = effective[0]
        colon = text.rfind(":", start, first.start)
        if colon >= 0 and not _inside_pair(colon, text, start, first.start):
            add(pos, colon + 1, union)
            pos = colon + 1
        if region is None:
            flush_pending(first.labels)
        for mk in effective:
            add(pos, mk.start, mk.labels)
            add_extra(mk, mk.labels)
            pos = mk.end
        add(pos, ch.end, union)
        if region is None:
            last_labels = union
        region_first = False
    # trailing sentences: boilerplate is shared, the rest stays with the last panel(s)
    tail_owner = region if region is not None else last_labels
    footer = False
    for ch in (region_tail if region is not None else pending):
        footer = footer or _is_footer(text[ch.start:ch.end])  # boilerplate runs to the end once it starts
        add(ch.start, ch.end, None if footer else tail_owner)
    _share_final_clause(text, pieces)
    return pieces


def _share_final_clause(text: str, pieces: list[_Piece]) -> None:
    """'... F) colorectal cancer; 10* magnification.': a boilerplate clause after the last ';' of the last panel's
    text is shared by every panel."""
    owned = [i for i, p in enumerate(pieces) if p.owner is not None]
    if not owned:
        return
    last = max(owned, key=lambda i: pieces[i].start)
    piece = pieces[last]
    depth, cut = 0, -1
    for i, c in enumerate(piece.text):
        depth += (c == "(") - (c == ")")
        if c == ";" and depth <= 0:
            cut = i
    if cut < 0:
        return
    clause = piece.text[cut + 1:]
    if _tokens(clause) and _is_footer(clause):
        pieces[last] = _Piece(piece.start, piece.text[:cut + 1], piece.owner)
        pieces.append(_Piece(piece.start + cut + 1, clause, None))


def _inside_pair(pos: int, text: str, lo: int, hi: int) -> bool:
    seg = text[lo:pos]
    return seg.count("(") > seg.count(")")


def _join(parts: list[str]) -> str:
    out = ""
    for p in parts:
        p = _tidy(p)
        if not p:
            continue
        if out and out[-1] not in ".!?;:," and p[0].isupper():
            out += "."
        out = f"{out} {p}" if out else p
    return out


# --------------------------------------------------------------------------------------------------- the parser
def split_caption(caption: str) -> FigureSplit:
    """Deterministic split of one figure caption (linear in the caption length)."""
    text = caption if isinstance(caption, str) else ""
    refined = extract_refined(text)
    if not text.strip():
        return FigureSplit(panels=[Panel(label="", caption="")], backend="rules", note="empty caption", **refined)
    markers, labels = _find_markers(text)
    if not labels:
        markers, labels = _positional_markers(text)
    if not labels:
        return FigureSplit(panels=[Panel(label="", caption=_tidy(text))], backend="rules",
                           note="no panel labels found", **refined)
    ends = _sentence_ends(text, _paren_pairs(text), markers)
    pieces = sorted(_assign(text, markers, ends), key=lambda p: p.start)
    panels = []
    for lab in labels:
        own = [p.text for p in pieces if p.owner is None or lab in p.owner]
        panels.append(Panel(label=lab, caption=_join(own)))
    return FigureSplit(panels=panels, backend="rules", **refined)
