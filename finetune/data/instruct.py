"""Instruction data from figure captions, the PathInstruct method (issue 29, item 2): ``pathasst-train data instruct
CAPTIONS --out FILE.jsonl``.

Each image (a panel of a figure) becomes one LLaVA-format conversation grounded in its caption only:

* **description**: "Describe this image." -> the panel's caption (patient identifiers removed);
* **question-answer**: the stain and the magnification, when the caption states them;
* **reasoning**: "What do these features indicate?" -> the caption's interpretive sentences ("characterized by",
  "consistent with", "diagnostic of", ...), when it has any.

The embedded default fills templates with the caption's own sentences and its refined fields
(:func:`pathasst.finetune.data.captions.split_caption`); with ``llm`` (any OpenAI-compatible server, llama.cpp's
included, JSON-schema-constrained) the model writes the turns and the templates are its fallback. Every answer is
checked against the caption (:mod:`pathasst.finetune.data.instruct_ground`: no number the caption does not write, no
content word it does not use beyond a small paraphrase allowance for the LLM); a failing turn is dropped, and a sample
left without answers is rejected with its reason. Input formats and the output files are described at
:func:`instruct_file`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pathasst.finetune.data.caption_llm import CaptionLLMError, chat_json, chat_url
from pathasst.finetune.data.caption_refine import _tidy
from pathasst.finetune.data.captions import FigureSplit, split_caption
from pathasst.finetune.data.instruct_ground import STOP_WORDS, check_answer

__all__ = ["Entry", "InstructLLM", "Sample", "build_sample", "template_turns"]

Kind = Literal["description", "qa", "reasoning"]
MAX_CAPTION_CHARS = 4000

DESCRIBE = ("Describe this histopathology image.", "What does this image show?",
            "Give a short description of the findings in this image.", "What can be seen in this image?")
STAIN_Q = ("What stain or technique was used for this image?", "Which stain is shown here?")
MAG_Q = ("At what magnification was this image taken?", "What is the magnification of this image?")
REASON_Q = ("What do the features in this image indicate?", "How would you interpret the findings in this image?")
_CUES = re.compile(r"characteri[sz]ed by|consistent with|diagnostic of|typical of|suggest|indicat|compatible with|"
                   r"in keeping with|features? of|hallmark|pathognomonic|favou?rs?\b", re.I)
#: the words the templates add (not facts): the grounding check ignores them
PHRASING = {w.lower() for text in (*DESCRIBE, *STAIN_Q, *MAG_Q, *REASON_Q, "Stain", "Magnification")
            for w in re.findall(r"[^\W\d_]+", text)}


@dataclass
class Entry:
    """One image to write a conversation for: its id, image path (or None), figure caption and panel label."""

    id: str
    caption: str
    image: str | None = None
    panel: str = ""


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind
    question: str = Field(min_length=3)
    answer: str = Field(min_length=1)


class _LLMAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversations: list[Turn] = Field(min_length=1)


LLM_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["conversations"],
    "properties": {"conversations": {"type": "array", "minItems": 1, "items": {
        "type": "object", "additionalProperties": False, "required": ["kind", "question", "answer"],
        "properties": {"kind": {"enum": ["description", "qa", "reasoning"]}, "question": {"type": "string"},
                       "answer": {"type": "string"}}}}},
}
_SYSTEM_PROMPT = """You write training conversations about one pathology image, from its caption only.
Write 2-4 turns: a description of the image, question-answer pairs about facts the caption states (stain,
magnification, structures, cells), and, when the caption interprets the findings, a reasoning turn.
Use only facts and numbers written in the caption and copy its wording; never add a diagnosis, number or finding
that it does not state; leave out patient identifiers and ages. Answer with JSON only."""


class InstructLLM:
    """An OpenAI-compatible chat-completions server that writes the turns (``response_format`` json_schema)."""

    def __init__(self, url: str, model: str, *, timeout: float = 60.0, api_key: str | None = None) -> None:
        self.url = chat_url(url)
        self.model, self.timeout, self.api_key = model, timeout, api_key

    def turns(self, caption: str) -> list[Turn]:
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "system", "content": _SYSTEM_PROMPT},
                             {"role": "user", "content": f"Caption:\n{caption}"}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "instructions", "strict": True, "schema": LLM_SCHEMA}}}
        answer = chat_json(self.url, body, _LLMAnswer, api_key=self.api_key, timeout=self.timeout)
        return list(answer.conversations)


class Sample(BaseModel):
    """One output record (LLaVA format) or, with ``rejected``, why an entry gave none."""

    id: str
    image: str | None = None
    conversations: list[dict[str, str]] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)
    rejected: str | None = None


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(options)]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.;!?])\s+(?=[A-Z(])", text) if s.strip()]


def _panel_caption(entry: Entry, split: FigureSplit) -> str:
    if entry.panel and entry.panel.lower() not in {"single", ""}:
        for p in split.panels:
            if p.label.lower() == entry.panel.lower():
                return p.caption
    return split.panels[0].caption if len(split.panels) == 1 else entry.caption


def _without(text: str, identifiers: list[str]) -> str:
    for ident in sorted(identifiers, key=len, reverse=True):
        text = text.replace(ident, "")
    return _tidy(re.sub(r"\(\s*[,;:]*\s*\)", "", text))


def template_turns(entry: Entry, split: FigureSplit) -> list[Turn]:
    """The embedded default's turns: the caption's own sentences in question-answer templates."""
    text = _without(_panel_caption(entry, split), split.identifiers)
    turns = [Turn(kind="description", question=_pick(DESCRIBE, entry.id), answer=text)] if text else []
    if split.stain:
        turns.append(Turn(kind="qa", question=_pick(STAIN_Q, entry.id), answer=f"Stain: {', '.join(split.stain)}."))
    if split.magnification:
        turns.append(Turn(kind="qa", question=_pick(MAG_Q, entry.id),
                          answer=f"Magnification: {'; '.join(split.magnification)}."))
    sentences = _sentences(text)
    reasons = [s for s in sentences if _CUES.search(s)]
    if reasons and len(reasons) < len(sentences):  # a reasoning turn that repeats the whole description adds nothing
        turns.append(Turn(kind="reasoning", question=_pick(REASON_Q, entry.id), answer=" ".join(reasons)))
    return turns


#: frequent function words of the other languages of the biomedical literature (German, French, Spanish,
#: Portuguese, Italian, Dutch); English pathology captions are often telegraphic ("Elastofibroma. Fibroadipocytic
#: tissue ..."), so the test is these words outnumbering English ones, not a share of English ones
_FOREIGN_WORDS = frozenset("""
der die das und mit von ist nicht eine einer den dem zur zum bei les des une avec pour dans sur est sont du aux
los las una con por para del como que el unos uma com para dos das nas nos della delle degli con sono nel het een
van zijn wordt
""".split())


def _language_problem(caption: str) -> str | None:
    words = re.findall(r"[^\W\d_]+", caption.lower())
    if not any(len(w) > 2 for w in words):
        return "no words"
    if sum(1 for w in words if w.isascii()) < 0.7 * len(words):
        return "not English (mostly non-Latin script)"
    foreign = sum(1 for w in words if w in _FOREIGN_WORDS)
    if foreign >= 3 and foreign > sum(1 for w in words if w in STOP_WORDS):
        return "not English (function words of another language)"
    return None


def build_sample(entry: Entry, llm: InstructLLM | None = None) -> Sample:
    """The conversation of one entry, every answer checked against the caption; ``rejected`` says why none."""
    caption = _tidy(entry.caption or "")
    meta: dict[str, Any] = {"panel": entry.panel}
    if not caption:
        return Sample(id=entry.id, image=entry.image, rejected="empty caption")
    if len(caption) > MAX_CAPTION_CHARS:
        too_long = f"caption too long ({len(caption)} > {MAX_CAPTION_CHARS})"
        return Sample(id=entry.id, image=entry.image, rejected=too_long)
    problem = _language_problem(caption)
    if problem:
        return Sample(id=entry.id, image=entry.image, rejected=problem)
    split = split_caption(caption)
    turns, backend, max_foreign = template_turns(entry, split), "templates", 0
    if llm is not None:
        try:
            turns, backend, max_foreign = llm.turns(_panel_caption(entry, split)), "llm", 2
        except CaptionLLMError as exc:
            meta["note"] = f"LLM fallback: {type(exc).__name__}: {str(exc)[:160]}"
    kept, dropped = [], []
    for turn in turns:
        verdict = check_answer(turn.answer, caption, phrasing=PHRASING, allowed=split.stain, max_foreign=max_foreign)
        (kept if verdict.ok else dropped).append((turn, verdict))
    meta |= {"backend": backend, "kinds": [t.kind for t, _ in kept]}
    if dropped:
        meta["dropped"] = [f"{t.kind}: {v.reason()}" for t, v in dropped]
    if not kept:
        reason = "; ".join(meta.get("dropped", [])) or "nothing to ask: no caption sentence to use"
        return Sample(id=entry.id, image=entry.image, meta=meta, rejected=f"no grounded answer ({reason})")
    conv: list[dict[str, str]] = []
    for i, (turn, _) in enumerate(kept):
        question = f"<image>\n{turn.question}" if i == 0 and entry.image else turn.question
        conv += [{"from": "human", "value": question}, {"from": "gpt", "value": turn.answer}]
    return Sample(id=entry.id, image=entry.image, conversations=conv, meta=meta)
