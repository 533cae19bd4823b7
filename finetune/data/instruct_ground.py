"""Is an instruction answer grounded in its caption? The check behind ``pathasst-train data instruct`` (issue 29,
item 2): an answer may state only what the caption states.

Two rules, applied to every model turn of a conversation:

* **numbers**: every number in the answer (``40``, ``2.5``, ``x400``) is written in the caption; one that is not is
  an invented fact and fails the turn, whatever else it says;
* **words**: the answer's content words (letters, lower-cased, stop words and the templates' own phrasing removed,
  light suffix stemming: "cells" = "cell", "stained" = "stain") are the caption's; up to ``max_foreign`` of them
  (default 0) may be new, which an LLM backend's paraphrase needs.

It is a lexical check: it cannot see a caption's words recombined into a false statement ("not malignant" ->
"malignant" passes when both words are there), so the LLM backend is also asked to copy wording (see
:mod:`pathasst.finetune.data.instruct`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Grounding", "check_answer", "content_words", "numbers"]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"[^\W\d_]+")
#: function words and the few neutral words every answer may use
STOP_WORDS = frozenset("""
a an the and or but nor of in on at to for with without by from as is are was were be been being this that these those
it its it's which who whom whose what where when how there here than then also both each either neither such same
other another some any all most more less few many much very not no into onto over under between within among per
image images shown shows show showing seen see can may might could would should will one two three several
""".split())


def numbers(text: str) -> set[str]:
    """The numbers written in ``text`` (``1,000`` and ``1.000`` read as written, ``x400`` as ``400``)."""
    return {m.group(0).replace(",", ".") for m in _NUMBER.finditer(text)}


def _stem(word: str) -> str:
    for suffix in ("ations", "ation", "ings", "ing", "edly", "ed", "es", "ly", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str, ignore: Iterable[str] = ()) -> set[str]:
    """Stems of the content words of ``text`` (stop words and ``ignore`` removed)."""
    skip = STOP_WORDS | {w.lower() for w in ignore}
    return {_stem(w) for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in skip and len(w) > 1}


@dataclass
class Grounding:
    """The verdict on one answer: ``ok``, and what is not in the caption."""

    foreign_numbers: list[str] = field(default_factory=list)
    foreign_words: list[str] = field(default_factory=list)
    max_foreign: int = 0

    @property
    def ok(self) -> bool:
        return not self.foreign_numbers and len(self.foreign_words) <= self.max_foreign

    def reason(self) -> str:
        parts = []
        if self.foreign_numbers:
            parts.append(f"numbers not in the caption: {', '.join(self.foreign_numbers)}")
        if len(self.foreign_words) > self.max_foreign:
            parts.append(f"words not in the caption: {', '.join(self.foreign_words[:8])}")
        return "; ".join(parts) or "grounded"


def check_answer(answer: str, caption: str, *, phrasing: Iterable[str] = (), allowed: Iterable[str] = (),
                 max_foreign: int = 0) -> Grounding:
    """Check ``answer`` against ``caption``. ``phrasing``: words of the question/answer templates (not facts);
    ``allowed``: extra words derived from the caption itself (e.g. the canonical name of a stain it names)."""
    source_words = content_words(caption) | content_words(" ".join(allowed))
    foreign_numbers = sorted(numbers(answer) - numbers(caption))
    foreign_words = sorted(content_words(answer, ignore=phrasing) - source_words)
    return Grounding(foreign_numbers, foreign_words, max_foreign)
