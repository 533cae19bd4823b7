"""The LLM backend of the caption splitter (issue 29, item 1): any OpenAI-compatible chat-completions server
(:class:`CaptionLLM`), its answer constrained by a JSON schema (:data:`LLM_SCHEMA`) and checked against the caption.

LLM failures raise :class:`LLMUnavailable` (endpoint down, HTTP error, timeout) or :class:`LLMBadResponse` (junk,
schema violation, text not taken from the caption); :func:`split_figure` turns both into a fallback to the
deterministic parser (:func:`pathasst.finetune.data.captions.split_caption`) in one place and says so in ``backend``
/ ``note``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pathasst.finetune.data.caption_refine import _tidy, _tokens
from pathasst.finetune.data.captions import FigureSplit, Panel, split_caption

__all__ = ["CaptionLLM", "CaptionLLMError", "chat_json", "chat_url", "LLMBadResponse", "LLMUnavailable", "LLM_SCHEMA", "split_figure"]


# --------------------------------------------------------------------------------------------------- answer schema
class _LLMPanel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    caption: str


class _LLMSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    panels: list[_LLMPanel]
    magnification: list[str]
    stain: list[str]
    identifiers: list[str]


# --------------------------------------------------------------------------------------------------- errors
class CaptionLLMError(RuntimeError):
    """The LLM backend could not produce a split; the caller falls back to the deterministic parser."""


class LLMUnavailable(CaptionLLMError):
    """The endpoint is down, timed out or answered with an HTTP error."""


class LLMBadResponse(CaptionLLMError):
    """The endpoint answered, but not with a usable split (not JSON, wrong schema, text not from the caption)."""


# --------------------------------------------------------------------------------------------------- LLM backend
_SYSTEM_PROMPT = """You split a multi-panel biomedical figure caption into one caption per panel.
Rules:
- Find every panel label the caption uses: (A), A), A:, A., (a-c), A-C, (A, B), or left/right/top/bottom/inset.
  Expand ranges and lists ((A-C) means A, B and C). Keep the label's case as written.
- Each panel caption = the sentences shared by all panels (the title before the first label and figure-wide
  statements such as magnification, scale bars, stain, abbreviations) + the text that describes that panel.
  Drop text that describes only other panels. Remove the label markers themselves.
- Keep magnification and stain text inside the panel captions, and also list them in "magnification" and "stain".
- "identifiers": patient / case / specimen identifiers and ages, as written.
- Copy wording from the caption; do not paraphrase or add facts.
- If the caption names no panels, return one panel with label "" and the whole caption.
Answer with JSON only."""


class CaptionLLM:
    """Client for an OpenAI-compatible ``/chat/completions`` endpoint, asking for JSON that follows
    :data:`LLM_SCHEMA` (``response_format`` ``json_schema``). Raises :class:`LLMUnavailable` /
    :class:`LLMBadResponse`; it never falls back by itself."""

    def __init__(self, url: str, model: str, *, timeout: float = 60.0, api_key: str | None = None,
                 max_caption_chars: int = 20_000) -> None:
        self.url = chat_url(url)
        self.model = model
        self.timeout = timeout
        self.api_key = api_key
        self.max_caption_chars = max_caption_chars

    def request_body(self, caption: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": 0,
            "messages": [{"role": "system", "content": _SYSTEM_PROMPT},
                         {"role": "user", "content": f"Caption:\n{caption}"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "panel_split", "strict": True, "schema": LLM_SCHEMA}},
        }

    def split(self, caption: str) -> FigureSplit:
        if len(caption) > self.max_caption_chars:
            raise LLMBadResponse(f"caption has {len(caption)} characters (> {self.max_caption_chars}); not sent")
        data = chat_json(self.url, self.request_body(caption), _LLMSplit, api_key=self.api_key, timeout=self.timeout)
        return _check_llm_split(data, caption)


def chat_url(url: str) -> str:
    """The chat-completions endpoint of a server given by its base URL (``http://host:8080/v1``) or the endpoint."""
    base = url.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def chat_json(url: str, body: dict[str, Any], model: type[BaseModel], *, api_key: str | None = None,
              timeout: float = 60.0) -> Any:
    """POST a chat-completions ``body`` and validate the answer's JSON content with ``model``;
    :class:`LLMUnavailable` (down, timeout, HTTP error) or :class:`LLMBadResponse` (junk, wrong shape)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise LLMUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code >= 400:
        raise LLMUnavailable(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        content = resp.json()["choices"][0]["message"]["content"]
        return model.model_validate(json.loads(content))
    except (ValueError, KeyError, IndexError, TypeError, ValidationError) as exc:
        raise LLMBadResponse(f"{url}: unusable answer ({type(exc).__name__}): {str(exc)[:200]}") from None


LLM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["panels", "magnification", "stain", "identifiers"],
    "properties": {
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["label", "caption"],
            "properties": {"label": {"type": "string"}, "caption": {"type": "string"}}}},
        "magnification": {"type": "array", "items": {"type": "string"}},
        "stain": {"type": "array", "items": {"type": "string"}},
        "identifiers": {"type": "array", "items": {"type": "string"}},
    },
}


def _check_llm_split(data: _LLMSplit, caption: str) -> FigureSplit:
    if not data.panels:
        raise LLMBadResponse("no panels")
    labels = [p.label.strip() for p in data.panels]
    if len(set(lab.lower() for lab in labels)) != len(labels):
        raise LLMBadResponse(f"duplicate panel labels {labels}")
    source = Counter(_tokens(caption))
    for p in data.panels:
        toks = _tokens(p.caption)
        if caption.strip() and not toks:
            raise LLMBadResponse(f"panel {p.label!r} has an empty caption")
        foreign = sum(1 for t in toks if t not in source)
        if toks and foreign > 0.2 * len(toks):
            raise LLMBadResponse(f"panel {p.label!r}: {foreign}/{len(toks)} tokens are not in the figure caption")
    return FigureSplit(panels=[Panel(label=lab, caption=_tidy(p.caption)) for lab, p in zip(labels, data.panels)],
                       magnification=data.magnification, stain=data.stain, identifiers=data.identifiers,
                       backend="llm")


def split_figure(caption: str, llm: CaptionLLM | None = None) -> FigureSplit:
    """The LLM's split when ``llm`` is given and answers usefully, else the deterministic one (with a ``note``)."""
    if llm is None or not caption.strip():
        return split_caption(caption)
    try:
        return llm.split(caption)
    except CaptionLLMError as exc:
        fallback = split_caption(caption)
        fallback.note = f"LLM fallback: {type(exc).__name__}: {exc}"
        return fallback
