"""Caption files for the splitter (issue 29, item 1): read them, and split a whole file resumably.

Input: a JSON object ``figure id -> {"caption": "<whole multi-panel caption>", ...}`` (other keys are ignored; the
splitter never reads a gold file's ``gt_subfigures``). Output: ``figure id -> FigureSplit``
(:class:`pathasst.finetune.data.captions.FigureSplit`, dumped without ``None`` fields). A figure entry that cannot be
split (no ``caption``) is kept with ``backend: "none"`` and an ``error``. :func:`split_captions_file` keeps figures
already in the output, writes it atomically every ``checkpoint_every`` figures, and stops asking the LLM
(:mod:`pathasst.finetune.data.caption_llm`) after repeated unavailability.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pathasst.core.files import atomic_write_text
from pathasst.finetune.data.caption_llm import CaptionLLM, split_figure
from pathasst.finetune.data.captions import FigureSplit
from pathasst.finetune.data.readers import DataError, RecordProblem

__all__ = ["load_caption_file", "split_captions_file"]


# --------------------------------------------------------------------------------------------------- files
def load_caption_file(path: Path) -> dict[str, Any]:
    """A JSON object ``figure id -> entry``; :class:`DataError` naming the file when it is not."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, [RecordProblem("file", "not found")]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, [RecordProblem("file", f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        got = type(data).__name__
        raise DataError(path, [RecordProblem("file", f"expected a JSON object of figure id -> entry, got {got}")])
    return data


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1))


def _entry_caption(entry: Any) -> tuple[str | None, str | None]:
    if not isinstance(entry, dict):
        return None, f"entry is a {type(entry).__name__}, not an object"
    if "caption" not in entry:
        return None, "no 'caption'"
    if not isinstance(entry["caption"], str):
        return None, f"'caption' is a {type(entry['caption']).__name__}, not a string"
    return entry["caption"], None


def split_captions_file(src: Path, out: Path, *, llm: CaptionLLM | None = None, limit: int | None = None,
                        checkpoint_every: int = 50, llm_max_failures: int = 3) -> dict[str, Any]:
    """Split every figure of ``src`` into ``out``. Resumable: figures already in ``out`` (without ``error``) are kept
    and only the others are processed; ``out`` is rewritten atomically every ``checkpoint_every`` figures. After
    ``llm_max_failures`` consecutive :class:`LLMUnavailable` the rest uses the parser (noted per figure)."""
    src, out = Path(src), Path(out)
    figures = load_caption_file(src)
    done: dict[str, Any] = load_caption_file(out) if out.exists() else {}
    result: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    errors: list[str] = []
    failures, processed, since_write = 0, 0, 0
    for fid, entry in figures.items():
        prev = done.get(fid)
        if isinstance(prev, dict) and "panels" in prev and not prev.get("error"):
            result[fid] = prev
            counts["already_done"] += 1
            continue
        if limit is not None and processed >= limit:
            continue
        caption, problem = _entry_caption(entry)
        if problem:
            split = FigureSplit(panels=[], backend="none", error=problem)
            errors.append(f"{fid}: {problem}")
        else:
            active = llm if failures < llm_max_failures else None
            split = split_figure(caption, active)
            if llm is not None and active is None:
                split.note = f"LLM disabled after {llm_max_failures} consecutive failures"
            if split.note and "LLMUnavailable" in split.note:
                failures += 1
            elif split.backend == "llm":
                failures = 0
        counts[split.backend] += 1
        result[fid] = split.model_dump(exclude_none=True)
        processed += 1
        since_write += 1
        if since_write >= checkpoint_every:
            _write_atomic(out, {**done, **result})
            since_write = 0
    for fid, prev in done.items():  # figures that are in out but no longer in src are kept
        result.setdefault(fid, prev)
    _write_atomic(out, result)
    return {"figures": len(figures), "already_done": counts.pop("already_done", 0), "processed": processed,
            "not_processed": len(figures) - len([f for f in figures if f in result]),
            "backend": dict(counts), "errors": len(errors), "error_examples": errors[:10], "out": str(out)}
