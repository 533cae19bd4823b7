"""``pathasst-train data instruct``: a caption file in, LLaVA conversations out, resumably, with a quality report.

Inputs (:func:`read_entries`):

* a JSON object ``id -> entry``: ARCH's captions (``caption``, ``letter`` = the panel, ``path`` = the image), a
  caption file of ``split-captions`` (``caption`` per figure), or any ``{"caption", "image"}`` entries;
* a JSON list or JSONL of ``{"id", "caption", "image"}`` rows (the figure extractor's ``pairs.jsonl``).

Outputs (:func:`instruct_file`): ``OUT`` (JSONL, one conversation per line, appended and flushed entry by entry),
``OUT.rejected.jsonl`` (entries that gave none, with the reason) and ``OUT.report.json`` (counts, lengths, rejection
reasons with examples). Entries already in either file are skipped, so a killed run resumes where it stopped.
A conversation whose answers (same image or not) equal an earlier one's is dropped as a duplicate: the questions
vary by entry, the facts would not.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from pathasst.core.files import atomic_write_text, cut_torn_tail
from pathasst.finetune.data.caption_llm import LLMUnavailable
from pathasst.finetune.data.instruct import Entry, InstructLLM, Sample, build_sample
from pathasst.finetune.data.readers import DataError, RecordProblem

__all__ = ["instruct_file", "read_entries"]


def _rows(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, [RecordProblem("file", "not found")]) from None
    except UnicodeDecodeError as exc:
        raise DataError(path, [RecordProblem("file", f"not UTF-8 text: {exc}")]) from None
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, [RecordProblem("file", f"not valid JSON: {exc}")]) from None


def read_entries(path: Path) -> tuple[list[Entry], list[RecordProblem]]:
    """The entries of a caption file and the records that are not entries (with why); DataError when the file
    itself is unreadable."""
    path = Path(path)
    data = _rows(path)
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(str(r.get("id", f"#{i}")) if isinstance(r, dict) else f"#{i}", r) for i, r in enumerate(data)]
    else:
        raise DataError(path, [RecordProblem("file", f"expected a JSON object or list, got {type(data).__name__}")])
    entries, problems = [], []
    for key, rec in items:
        if not isinstance(rec, dict):
            problems.append(RecordProblem(str(key), f"entry is a {type(rec).__name__}, not an object"))
            continue
        caption = rec.get("caption")
        if not isinstance(caption, str):
            problems.append(RecordProblem(str(key), "no 'caption' string"))
            continue
        image = rec.get("path", rec.get("image"))
        panel = rec.get("letter", rec.get("panel", "")) or ""
        entries.append(Entry(id=str(key), caption=caption, image=str(image) if image else None, panel=str(panel)))
    return entries, problems


def _done_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill: that entry is redone
    return ids


def _text_key(sample: dict[str, Any]) -> str:
    text = "\n".join(t["value"] for t in sample.get("conversations", []) if t["from"] == "gpt")
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


def _append(fh: Any, record: dict[str, Any]) -> None:
    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _report(out: Path, rejected: Path, problems: list[RecordProblem], source: Path) -> dict[str, Any]:
    samples = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    rejects = [json.loads(line) for line in rejected.read_text(encoding="utf-8").splitlines() if line.strip()]
    answers = [len(t["value"].split()) for s in samples for t in s["conversations"] if t["from"] == "gpt"]
    kinds = Counter(k for s in samples for k in s.get("meta", {}).get("kinds", []))
    reasons = Counter(r["rejected"].split(" (")[0] for r in rejects)
    examples: dict[str, list[str]] = {}
    for r in rejects:
        examples.setdefault(r["rejected"].split(" (")[0], []).append(f"{r['id']}: {r['rejected']}"[:240])
    return {
        "source": str(source), "samples": len(samples), "rejected": len(rejects), "invalid_records": len(problems),
        "turns": dict(kinds), "backends": dict(Counter(s.get("meta", {}).get("backend") for s in samples)),
        "turns_dropped": sum(len(s.get("meta", {}).get("dropped", [])) for s in samples),
        "answer_words": {"mean": round(statistics.fmean(answers), 1) if answers else 0,
                         "median": statistics.median(answers) if answers else 0, "max": max(answers, default=0)},
        "rejection_reasons": dict(reasons), "rejected_examples": {k: v[:3] for k, v in examples.items()},
        "invalid_examples": [str(p) for p in problems[:5]],
    }


def instruct_file(src: Path, out: Path, *, llm: InstructLLM | None = None, limit: int | None = None,
                  llm_max_failures: int = 3) -> dict[str, Any]:
    """Write conversations for every entry of ``src`` not yet in ``out`` (see the module docstring); return the
    quality report (also written to ``OUT.report.json``). After ``llm_max_failures`` consecutive unavailable
    answers the rest uses the templates."""
    src, out = Path(src), Path(out)
    entries, problems = read_entries(src)
    rejected = out.with_name(out.name + ".rejected.jsonl")
    for path in (out, rejected):
        cut_torn_tail(path)  # a record a kill cut in half is redone
    done = _done_ids(out) | _done_ids(rejected)
    seen = {_text_key(json.loads(line)) for line in (out.read_text(encoding="utf-8").splitlines()
                                                      if out.is_file() else []) if line.strip()}
    out.parent.mkdir(parents=True, exist_ok=True)
    failures, processed = 0, 0
    with open(out, "a", encoding="utf-8") as fh, open(rejected, "a", encoding="utf-8") as rh:
        for entry in entries:
            if entry.id in done:
                continue
            if limit is not None and processed >= limit:
                break
            processed += 1
            active = llm if failures < llm_max_failures else None
            sample: Sample = build_sample(entry, active)
            if active is not None:
                failures = failures + 1 if LLMUnavailable.__name__ in sample.meta.get("note", "") else 0
            elif llm is not None:
                sample.meta["note"] = f"LLM not asked after {llm_max_failures} consecutive failures"
            if sample.rejected is None:
                key = _text_key(sample.model_dump())
                if key in seen:
                    sample = Sample(id=entry.id, image=entry.image, rejected="duplicate of an earlier conversation")
                seen.add(key)
            if sample.rejected is None:
                _append(fh, sample.model_dump(exclude={"rejected"}, exclude_none=True))
            else:
                extra = {"meta": sample.meta} if sample.meta else {}
                _append(rh, {"id": sample.id, "rejected": sample.rejected, **extra})
            done.add(entry.id)
    report = {**_report(out, rejected, problems, src), "processed_this_run": processed}
    atomic_write_text(out.with_name(out.name + ".report.json"), json.dumps(report, ensure_ascii=False, indent=1))
    return report
