"""Readers and validators for the two training layouts PathAsst uses.

* **PathCap** (image-caption pairs): ``ROOT/data.json`` is a JSON list (or JSONL) of records with ``caption``,
  ``figure_fn`` (image file name under ``ROOT/images/``) and ``pmc_id``.
* **PathInstruct / LLaVA conversations**: a JSON list (or JSONL) of ``{"id", "image", "conversations": [{"from",
  "value"}, ...]}``; the first human turn carries the ``<image>`` token when the record has an image.

Nothing is silently dropped: every broken record is reported with its id (or index) and the reason, and the reader
raises :class:`DataError` listing them all unless ``skip_invalid=True`` is passed, in which case the problems are
returned next to the valid records so the caller can log them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_TOKEN",
    "CaptionPair",
    "Conversation",
    "DataError",
    "RecordProblem",
    "load_records",
    "read_conversations",
    "read_pathcap",
]

IMAGE_TOKEN = "<image>"
_ROLES = {"human", "gpt", "tool"}


@dataclass(frozen=True)
class RecordProblem:
    record: str  # record id, or "#index" when it has none
    reason: str

    def __str__(self) -> str:
        return f"{self.record}: {self.reason}"


class DataError(ValueError):
    """Broken training records; ``problems`` lists every one (id and reason)."""

    def __init__(self, source: Path | str, problems: list[RecordProblem]) -> None:
        self.problems = problems
        shown = "; ".join(str(p) for p in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"{source}: {len(problems)} invalid record(s): {shown}{more}")


@dataclass(frozen=True)
class CaptionPair:
    id: str
    image: Path
    caption: str
    pmc_id: str | None = None


@dataclass(frozen=True)
class Conversation:
    id: str
    image: Path | None
    turns: list[dict[str, str]] = field(default_factory=list)  # {"from": human|gpt|tool, "value": str}


def load_records(path: Path) -> list[Any]:
    """A JSON list, or JSON Lines (one object per line). Raises DataError on undecodable input, with line numbers."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, [RecordProblem("file", f"not valid JSON: {exc}")]) from None
        return list(data)
    records: list[Any] = []
    problems: list[RecordProblem] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            problems.append(RecordProblem(f"line {i}", f"not valid JSON: {exc}"))
    if problems:
        raise DataError(path, problems)
    return records


def _rid(rec: Any, index: int, key: str) -> str:
    if isinstance(rec, dict) and rec.get(key) not in (None, ""):
        return str(rec[key])
    return f"#{index}"


def _finish(source: Path, ok: list[Any], problems: list[RecordProblem], skip_invalid: bool) -> Any:
    if problems and not skip_invalid:
        raise DataError(source, problems)
    return (ok, problems) if skip_invalid else ok


def read_pathcap(root: Path, *, images_dir: str = "images", skip_invalid: bool = False) -> Any:
    """Image-caption pairs from a PathCap folder (``data.json`` + ``images/``).

    Returns ``list[CaptionPair]``; with ``skip_invalid=True``, ``(pairs, problems)``. Checks: a record is an object,
    ``figure_fn`` names an existing file, ``caption`` is a non-empty string, ids are unique.
    """
    root = Path(root)
    data = root / "data.json"
    if not data.is_file():
        data = root / "data.jsonl"
    if not data.is_file():
        raise DataError(root, [RecordProblem("folder", "no data.json (or data.jsonl)")])
    pairs: list[CaptionPair] = []
    problems: list[RecordProblem] = []
    seen: set[str] = set()
    for i, rec in enumerate(load_records(data)):
        rid = _rid(rec, i, "figure_fn")
        if not isinstance(rec, dict):
            problems.append(RecordProblem(rid, f"record is a {type(rec).__name__}, not an object"))
            continue
        fn = rec.get("figure_fn")
        caption = rec.get("caption")
        errs = []
        if not isinstance(fn, str) or not fn.strip():
            errs.append("missing figure_fn")
        elif not (root / images_dir / fn).is_file():
            errs.append(f"missing image {images_dir}/{fn}")
        if not isinstance(caption, str) or not caption.strip():
            errs.append("empty caption")
        if rid in seen:
            errs.append("duplicate figure_fn")
        seen.add(rid)
        if errs:
            problems.append(RecordProblem(rid, ", ".join(errs)))
            continue
        pmc = rec.get("pmc_id")
        pairs.append(CaptionPair(rid, root / images_dir / fn, " ".join(caption.split()), str(pmc) if pmc else None))
    return _finish(data, pairs, problems, skip_invalid)


def read_conversations(path: Path, image_root: Path | None = None, *, skip_invalid: bool = False) -> Any:
    """LLaVA-style conversations (PathInstruct, or the tool-invocation data) from a JSON / JSONL file.

    Checks per record: an ``id``; ``conversations`` a non-empty list of ``{"from", "value"}`` with ``from`` in
    human/gpt/tool, starting with human and containing a gpt turn; when ``image`` is set, the file exists under
    ``image_root`` (default: the file's folder) and the first human turn holds exactly one ``<image>`` token; when it
    is not, no turn holds one. Returns ``list[Conversation]`` (or ``(conversations, problems)`` with ``skip_invalid``).
    """
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    out: list[Conversation] = []
    problems: list[RecordProblem] = []
    seen: set[str] = set()
    for i, rec in enumerate(load_records(path)):
        rid = _rid(rec, i, "id")
        if not isinstance(rec, dict):
            problems.append(RecordProblem(rid, f"record is a {type(rec).__name__}, not an object"))
            continue
        errs: list[str] = []
        if rid.startswith("#"):
            errs.append("missing id")
        elif rid in seen:
            errs.append("duplicate id")
        seen.add(rid)
        turns = rec.get("conversations")
        if not isinstance(turns, list) or not turns:
            errs.append("no conversations")
            turns = []
        for j, t in enumerate(turns):
            if not isinstance(t, dict) or t.get("from") not in _ROLES or not isinstance(t.get("value"), str):
                errs.append(f"turn {j} is not {{'from': human|gpt|tool, 'value': str}}")
            elif not t["value"].strip():
                errs.append(f"turn {j} is empty")
        good_turns = all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns)
        if turns and good_turns:
            if turns[0].get("from") != "human":
                errs.append("first turn is not from human")
            if not any(t.get("from") == "gpt" for t in turns):
                errs.append("no gpt turn")
        image = rec.get("image")
        image_path: Path | None = None
        if image:
            image_path = image_root / str(image)
            if not image_path.is_file():
                errs.append(f"missing image {image}")
            if turns and good_turns:
                first = turns[0]["value"]
                if first.count(IMAGE_TOKEN) != 1:
                    errs.append(f"first human turn has {first.count(IMAGE_TOKEN)} '<image>' tokens (need 1)")
                if any(IMAGE_TOKEN in t["value"] for t in turns[1:]):
                    errs.append("'<image>' token outside the first human turn")
        elif good_turns and any(IMAGE_TOKEN in t["value"] for t in turns):
            errs.append("'<image>' token but no image")
        if errs:
            problems.append(RecordProblem(rid, ", ".join(errs)))
            continue
        out.append(Conversation(rid, image_path, [{"from": t["from"], "value": t["value"]} for t in turns]))
    return _finish(path, out, problems, skip_invalid)
