"""Per-case overhead of the graph (load, plan, act, report) against calling the same tools directly.

Run: ``.venv/bin/python bench/bench_graph_overhead.py``
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pathasst.agent.engine import Engine  # noqa: E402
from pathasst.core.readers import read_patch  # noqa: E402
from pathasst.core.settings import Settings  # noqa: E402


def main(n_cases: int = 6) -> None:
    from skimage import data

    ihc = np.asarray(data.immunohistochemistry())
    settings = Settings(_env_file=None)
    engine = Engine(settings, planner="rules")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = []
        for i in range(n_cases):
            d = root / f"c{i}"
            d.mkdir()
            Image.fromarray(np.roll(ihc, i * 40, axis=0)).save(d / "ki67.png")
            (d / "case.yaml").write_text("stain: Ki-67\nmpp: 0.5\n")
            dirs.append(d)
        engine.run(case_dir=dirs[0])  # warm-up (imports, lazy loads)
        t_graph, t_direct, calls = [], [], 0
        for d in dirs:
            t0 = time.perf_counter()
            report, _ = engine.run(case_dir=d)
            t_graph.append(time.perf_counter() - t0)
            # the same tool calls, made directly
            t0 = time.perf_counter()
            img = read_patch(d / "ki67.png", settings.max_image_pixels, mpp=0.5)
            for rec in report.trace:
                tool = engine.registry.get(rec.tool)
                tool.analyze(img, tool.input_model.model_validate(rec.arguments))
                calls += 1
            t_direct.append(time.perf_counter() - t0)
    g, dct = float(np.median(t_graph)), float(np.median(t_direct))
    print(json.dumps({
        "cases": n_cases,
        "tool_calls_per_case": calls / n_cases,
        "graph_s_per_case_median": g,
        "direct_s_per_case_median": dct,
        "overhead_s_per_case": g - dct,
        "ratio_graph_vs_direct": g / dct,
    }, indent=2))


if __name__ == "__main__":
    main()
