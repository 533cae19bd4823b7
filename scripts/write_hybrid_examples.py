"""Regenerate planning/data/hybrid_examples.jsonl, the examples of the hybrid planner's nearest-neighbour fallback.

They are the train split of the tool-invocation data generated from the tool registry (the same samples as
``pathasst-train data tools``: ``generate_tool_samples`` with seed 0, the planner evaluation questions and near-copies
of them excluded), reduced to question and tools, without the hard cases written for the tuned planner
(``toolcalls_hard``: terse multi-tool requests, negations, injections, ...): as nearest-neighbour voters they cost the
hybrid planner accuracy on the development set (1.000 -> 0.963), while the rules already handle those forms. Run after changing the generator or a tool's description;
tests/test_planner_hybrid.py checks that the file is current. The planner caches the embeddings under a digest of
the file's content, so a changed file is re-embedded on first use.
"""

from __future__ import annotations

import json
from pathlib import Path

from pathasst.finetune.data.toolcalls import generate_tool_samples
from pathasst.finetune.data.toolcalls_hard import HARD_SOURCES
from pathasst.finetune.planner import eval_questions
from pathasst.tools.registry import default_registry

SEED = 0
TARGET = Path(__file__).resolve().parents[1] / "planning" / "data" / "hybrid_examples.jsonl"


def render() -> str:
    samples = generate_tool_samples(default_registry().catalogue(), seed=SEED, exclude=eval_questions())
    rows = [{"question": s.question, "tools": s.tools} for s in samples
            if s.split == "train" and s.source not in HARD_SOURCES]
    return "".join(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")
