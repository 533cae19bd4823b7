"""Find the panel labels of a multi-panel figure caption (part of the caption splitter, issue 29, item 1).

Letter labels in parentheses (``(A)``, ``(a-c)``, ``(A, B)``, ``(panel B)``) or bare (``A)``, ``A:``, ``A.``,
``a Glands``; the weak bare forms count only inside an alphabetical chain), expanded ranges and lists, the dominant case
and the contiguous run of labels; positional labels (``left``, ``top``, ``inset``) only when there are no letters. Each
:class:`_Marker` keeps its span, labels and orientation ("F": the text after it is the panel's, "B": the text before
it is, "R": a reference to another panel). :mod:`pathasst.finetune.data.captions` assigns the text to the panels.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass

__all__: list[str] = []  # helpers of pathasst.finetune.data.captions (_find_markers, _positional_markers, ...)


# --------------------------------------------------------------------------------------------------- label markers
_L = r"(?<![A-Za-z0-9])[A-Za-z](?![A-Za-z0-9'])"
_SEP = r"(?:\s*(?:-|–|—|,\s*and|,|\band\b|\bto\b|\bor\b)\s*|\s+&\s+)"
_LL = rf"{_L}(?:{_SEP}{_L})*"
_PREFIX = r"(?:(?:images?|panels?|figs?\.?|figures?)\s+)?"
_PAREN_FULL = re.compile(rf"\s*{_PREFIX}({_LL})\s*")
_PAREN_HEAD = re.compile(rf"\s*{_PREFIX}({_LL})(?:\s*[,;:]\s*|\s+)(?=\S)")
_PAREN_TAIL = re.compile(rf"[,;]\s*{_PREFIX}({_LL})\s*$")
_NESTED = re.compile(r"\(\s*[A-Za-z]\s*\)(?:\s*(?:,|and|&|or)\s*\(\s*[A-Za-z]\s*\))*")
_BARE = re.compile(rf"({_LL})(?:(\))|(:)|(\.)(?=\s)|(,)(?=\s)|(?=\s+[^\s.,;:)]))")
_STAIN_PAIR = re.compile(r"^[Hh]\s*(?:&|and)\s*[Ee]$")
_POSITIONAL = re.compile(
    r"\b((?:(?:upper|lower|top|bottom)\s+)?(?:left|right|middle|centre|center)|top|bottom|upper|lower|insets?)"
    r"(?:\s+(?:panels?|images?|columns?|rows?))?\b", re.I)

_F_WORDS = {"and", "or", "but", "whereas", "while", "whilst", "then", "show", "shows", "showing", "shown", "depict",
            "depicts", "illustrate", "illustrates", "demonstrate", "demonstrates", "also", "both"}
_REF_WORDS = {"in", "of", "from", "as", "to", "on", "at", "for", "by", "within", "into", "see", "than", "vs", "versus",
              "like", "including", "between", "with", "cf", "panel", "panels", "figure", "fig", "image", "images"}


@dataclass
class _Marker:
    start: int
    end: int
    labels: tuple[str, ...]
    kind: str  # "paren" | "bare"
    weak: bool = False
    orient: str = "F"  # "F" text after it is the panel's, "B" text before it is, "R" a reference to another panel
    extra: str = ""  # text inside the parentheses that is not the label list ("(A, B Hematoxylin ...)")


def _expand(label_list: str) -> tuple[str, ...]:
    """'A-C' -> A B C; 'a, b and d' -> a b d; keeps the caption's case."""
    letters = re.findall(_L, label_list)
    seps = re.findall(rf"{_L}({_SEP})(?={_L})", label_list)
    out: list[str] = []
    for i, ch in enumerate(letters):
        if i and i - 1 < len(seps) and seps[i - 1].strip() in ("-", "–", "—", "to") and out:
            lo, hi = ord(out[-1]), ord(ch)
            if 0 < hi - lo <= 25:
                out.extend(chr(c) for c in range(lo + 1, hi + 1))
                continue
        out.append(ch)
    return tuple(dict.fromkeys(out))


def _paren_pairs(text: str, max_len: int = 600) -> list[tuple[int, int]]:
    """Matched (open, close) index pairs; unmatched brackets and over-long groups are left out."""
    stack: list[int] = []
    pairs: list[tuple[int, int]] = []
    for m in re.finditer(r"[()]", text):
        if m.group() == "(":
            stack.append(m.start())
        elif stack:
            o = stack.pop()
            if m.start() - o <= max_len:
                pairs.append((o, m.start()))
    pairs.sort()
    return pairs


def _boundary_before(text: str, pos: int, *, weak: bool) -> bool:
    """Is ``pos`` at a clause start (caption start, after . ; : ! ? , or after and/or for strong forms)?"""
    j = pos - 1
    while j >= 0 and text[j] in " \t\n":
        j -= 1
    if j < 0 or text[j] in ".;:!?":
        return True
    if text[j] == ",":
        return True
    if weak:
        return False
    word = re.search(r"([A-Za-z]+)\s*$", text[max(0, pos - 12):pos])
    return bool(word and word.group(1).lower() in ("and", "or"))


def _prev_word(text: str, pos: int) -> tuple[str, str]:
    """(last non-space char before pos, the word ending there lower-cased)."""
    j = pos - 1
    while j >= 0 and text[j].isspace():
        j -= 1
    if j < 0:
        return "", ""
    m = re.search(r"([A-Za-z]+)$", text[max(0, j - 30):j + 1])
    return text[j], (m.group(1).lower() if m else "")


def _paren_markers(text: str, pairs: list[tuple[int, int]]) -> list[_Marker]:
    out: list[_Marker] = []
    covered_until = -1
    for o, c in pairs:
        if o < covered_until:
            continue
        content = text[o + 1:c]
        if len(content) > 120:
            continue
        nested = _NESTED.fullmatch(content.strip())
        if nested:
            labels = tuple(dict.fromkeys(re.findall(_L, content.replace("(", " ").replace(")", " "))))
            out.append(_Marker(o, c + 1, labels, "paren"))
            covered_until = c + 1
            continue
        if "(" in content:
            continue
        m = _PAREN_FULL.fullmatch(content)
        extra = ""
        if not m:
            m = _PAREN_HEAD.match(content)
            if m and (len(_expand(m.group(1))) < 2 and not re.match(rf"\s*{_PREFIX}{_LL}\s*[,;:]", content)):
                m = None
            if m:
                extra = content[m.end():].strip()
        if not m:
            m = _PAREN_TAIL.search(content)
            if m:
                extra = content[:m.start()].strip()
        if not m or _STAIN_PAIR.match(m.group(1).strip()):
            continue
        out.append(_Marker(o, c + 1, _expand(m.group(1)), "paren", extra=extra))
    return out


def _bare_markers(text: str, taken: list[tuple[int, int]]) -> list[_Marker]:
    out: list[_Marker] = []
    spans = sorted(taken)
    starts = [a for a, _ in spans]

    def inside(pos: int) -> bool:
        i = bisect.bisect_right(starts, pos) - 1
        return i >= 0 and spans[i][0] <= pos < spans[i][1]

    for m in _BARE.finditer(text):
        s = m.start()
        if inside(s) or (s and text[s - 1] == "("):
            continue
        ll = m.group(1)
        if _STAIN_PAIR.match(ll.strip()):
            continue
        strong = bool(m.group(2) or m.group(3))
        if not _boundary_before(text, s, weak=not strong):
            continue
        end = m.end() if (m.group(2) or m.group(3) or m.group(4) or m.group(5)) else s + len(ll)
        out.append(_Marker(s, end, _expand(ll), "bare", weak=not strong))
    return out


def _accept_weak(markers: list[_Marker]) -> list[_Marker]:
    """Weak bare markers ('a Gleason', 'A. Normal', 'B, PTEN') count only inside an alphabetical chain."""
    by_label: dict[str, list[_Marker]] = {}
    for mk in markers:
        for lab in mk.labels:
            by_label.setdefault(lab, []).append(mk)
    kept = []
    for mk in markers:
        if not mk.weak:
            kept.append(mk)
            continue
        lab = mk.labels[0] if len(mk.labels) == 1 else None
        if lab is None:
            kept.append(mk)
            continue
        prev_list, next_list = by_label.get(chr(ord(lab) - 1), []), by_label.get(chr(ord(lab) + 1), [])
        before = bool(prev_list) and prev_list[0].start < mk.start
        after = bool(next_list) and next_list[-1].start > mk.start
        if lab in "aA":  # the article: needs a bare 'b' after it
            ok = any(o.kind == "bare" and o.start > mk.start for o in next_list[-3:])
        elif lab in "iI":
            ok = bool(before)
        else:
            ok = bool(before or after)
        if ok:
            kept.append(mk)
    return kept


def _label_set(markers: list[_Marker]) -> tuple[str, list[str]]:
    """Dominant case and the contiguous run of letters (single gaps filled) that the markers name."""
    cases = Counter("l" if lab.islower() else "u" for mk in markers for lab in mk.labels)
    case = "l" if cases["l"] > cases["u"] else "u"
    letters = sorted({lab.lower() for mk in markers for lab in mk.labels if (lab.islower()) == (case == "l")})
    if not letters:
        return case, []
    runs: list[list[str]] = [[letters[0]]]
    for ch in letters[1:]:
        if ord(ch) - ord(runs[-1][-1]) <= 2:
            runs[-1].extend(chr(c) for c in range(ord(runs[-1][-1]) + 1, ord(ch) + 1))
        else:
            runs.append([ch])
    run = next((r for r in runs if r[0] == "a"), max(runs, key=len))
    if len(run) < 2:  # one label is not a multi-panel figure ('(i)' of a list, 'vitamin (D)')
        return case, []
    return case, run


def _orient(text: str, mk: _Marker) -> str:
    if mk.kind == "bare":
        return "F"
    ch, word = _prev_word(text, mk.start)
    if ch == "" or ch in ".;:!?,":
        return "F"
    if word and ch.isalpha() and word in _F_WORDS:
        return "F"
    if word and ch.isalpha() and word in _REF_WORDS:
        return "R"
    if re.match(r"\s*[A-Z][a-z]", text[mk.end:mk.end + 3]):
        return "F"
    return "B"


def _merge_adjacent(text: str, markers: list[_Marker]) -> list[_Marker]:
    out: list[_Marker] = []
    for mk in markers:
        if out and re.fullmatch(r"\s*(?:,\s*and|,|and|or|&)?\s*", text[out[-1].end:mk.start]):
            prev = out[-1]
            prev.labels = tuple(dict.fromkeys(prev.labels + mk.labels))
            prev.end = mk.end
            prev.extra = " ".join(x for x in (prev.extra, mk.extra) if x)
            continue
        out.append(mk)
    return out


def _find_markers(text: str) -> tuple[list[_Marker], list[str]]:
    """Accepted panel markers (in text order, oriented) and the panel labels (caption case)."""
    pairs = _paren_pairs(text)
    paren = _paren_markers(text, pairs)
    bare = _bare_markers(text, [(m.start, m.end) for m in paren])
    markers = _accept_weak(sorted(paren + bare, key=lambda m: m.start))
    case, run = _label_set(markers)
    if not run:
        return [], []
    keep = set(run)
    accepted: list[_Marker] = []
    for mk in markers:
        labs = tuple(lab for lab in mk.labels if lab.lower() in keep and lab.islower() == (case == "l"))
        if labs:
            mk.labels = labs
            accepted.append(mk)
    accepted = _merge_adjacent(text, accepted)
    for mk in accepted:
        mk.orient = _orient(text, mk)
    labels = [ch if case == "l" else ch.upper() for ch in run]
    return accepted, labels


def _positional_markers(text: str) -> tuple[list[_Marker], list[str]]:
    """'(left)', 'Right:', 'Inset,' ... used only when the caption has no letter labels."""
    out: list[_Marker] = []
    for o, c in _paren_pairs(text):
        content = text[o + 1:c]
        m = _POSITIONAL.fullmatch(content.strip())
        if m:
            out.append(_Marker(o, c + 1, (_norm_pos(m.group(1)),), "paren"))
    for m in re.finditer(_POSITIONAL.pattern + r"\s*[:,]", text, re.I):
        if _boundary_before(text, m.start(), weak=False) and not any(a.start <= m.start() < a.end for a in out):
            out.append(_Marker(m.start(), m.end(), (_norm_pos(m.group(1)),), "bare"))
    out.sort(key=lambda m: m.start)
    labels = list(dict.fromkeys(lab for mk in out for lab in mk.labels))
    if len(labels) < 2:
        return [], []
    for mk in out:
        mk.orient = _orient(text, mk)
    return out, labels


def _norm_pos(word: str) -> str:
    w = " ".join(word.lower().split())
    return {"centre": "center", "insets": "inset"}.get(w, w)
