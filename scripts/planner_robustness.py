"""Planner robustness on the development set under text perturbations (the held-out set stays scored once).

    HF_HUB_OFFLINE=1 python scripts/planner_robustness.py rules hybrid llamacpp

Prints exact tool-set accuracy per planner and perturbation (figures: finetune/adapters/MODEL_CARD.md).
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pathasst.agent.system import build_system
from pathasst.core.settings import Settings
from pathasst.planning.base import PlannerContext

DEV = Path(__file__).resolve().parents[1] / "planning" / "data" / "planner_dev.jsonl"


def swapped_letters(question: str, rng: random.Random) -> str:
    """One typo: two neighbouring letters of a random word of five or more letters swapped."""
    words = question.split()
    candidates = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not candidates:
        return question
    i = rng.choice(candidates)
    w, j = words[i], rng.randrange(len(words[i]) - 1)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "as written": lambda q, rng: q,
    "lower case": lambda q, rng: q.lower(),
    "no punctuation": lambda q, rng: re.sub(r"[^\w\s&-]", "", q),
    "one typo": swapped_letters,
    "upper case": lambda q, rng: q.upper(),
}


def main(planners: list[str]) -> None:
    rows = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
    system = build_system(Settings(_env_file=None, llamacpp_threads=2))
    catalogue = system.registry.catalogue()
    for name in planners:
        planner = system.planner(name)
        for label, perturb in PERTURBATIONS.items():
            rng, correct = random.Random(0), 0
            for r in rows:
                kind = r.get("image_kind") or "patch"
                ctx = PlannerContext(question=perturb(r["question"], rng), stain=r.get("stain"), image_kind=kind,
                                     images=["slide.svs"] if kind == "wsi" else ["image.png"], catalogue=catalogue)
                correct += sorted({c.tool for c in planner.plan(ctx).calls}) == sorted(r["expected_tools"])
            print(json.dumps({"planner": name, "perturbation": label, "accuracy": round(correct / len(rows), 3)}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["rules", "hybrid"])
