"""Turn CoNSeP-style tiles (``images/`` + ``types/NAME.json`` with ``inst_type``) into a PathCap folder with captions
built from the nucleus labels, and a labelled folder (one sub-folder per dominant cell type) for zero-shot evaluation.

Type codes (CoNSeP as tiled in ``../shared/data/consep_train``): 1 other, 2 inflammatory, 3 epithelial, 4 spindle-shaped.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["CELL_TYPES", "caption_for", "consep_to_pathcap"]

CELL_TYPES = {1: "miscellaneous", 2: "inflammatory", 3: "epithelial", 4: "spindle-shaped"}
_DENSITY = [(40, "sparse"), (90, "moderately dense"), (10**9, "densely packed")]


def caption_for(types: list[int]) -> tuple[str, str]:
    """(caption, dominant type label) for the nucleus types of one tile."""
    counts = Counter(int(t) for t in types)
    if not counts:
        return "H&E tile of colorectal adenocarcinoma with few nuclei", "sparse"
    dominant = max(sorted(counts), key=lambda t: counts[t])
    density = next(word for limit, word in _DENSITY if len(types) < limit)
    label = CELL_TYPES.get(dominant, "miscellaneous")
    others = [t for t in sorted(counts, key=lambda t: (-counts[t], t)) if t != dominant and counts[t] >= 0.15 * len(types)]
    mix = f" with some {CELL_TYPES.get(others[0], 'miscellaneous')} cells" if others else ""
    return f"H&E tile of colorectal adenocarcinoma rich in {label} cells{mix}, {density} nuclei", label


def consep_to_pathcap(src: Path, dst: Path, *, limit: int | None = None, labelled: Path | None = None) -> dict[str, Any]:
    """Write ``dst/data.json`` + ``dst/images/`` (PathCap layout) from a CoNSeP folder; with ``labelled``, also
    ``labelled/<dominant type>/NAME`` for zero-shot evaluation. Tiles are taken in name order (``limit`` first)."""
    src, dst = Path(src), Path(dst)
    names = sorted(p.stem for p in (src / "types").glob("*.json"))[:limit]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    records, labels = [], Counter()
    for name in names:
        image = next((src / "images").glob(name + ".*"), None)
        if image is None:
            continue
        types = json.loads((src / "types" / f"{name}.json").read_text())["inst_type"]
        caption, label = caption_for(types)
        shutil.copyfile(image, dst / "images" / image.name)
        records.append({"figure_fn": image.name, "caption": caption, "pmc_id": f"consep:{name}"})
        labels[label] += 1
        if labelled is not None:
            (Path(labelled) / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, Path(labelled) / label / image.name)
    (dst / "data.json").write_text(json.dumps(records, indent=1))
    return {"records": len(records), "labels": dict(labels)}
