"""Peak memory and time of one tool call on a whole slide or a huge plain image, each in a fresh process.

    .venv/bin/python bench/bench_call_memory.py [--data ../shared/data] [--tools nuclei_segmentation ...]

Each (tool, input) runs in its own ``python -c`` process, as the agent calls the tool (case resolver, default
settings: ``PATHASST_MAX_REGION_PIXELS`` 16.8 M at the tool's working resolution); the figure is that process's own
high-water mark (``VmHWM``), which the issue's targets bound: < 4 GB for a slide call, < 2 GB for a plain image.
Inputs: the two Aperio slides of ``../shared/data/slides`` and a 9400 x 9400 PNG written here (a few hundred KB).
Measured on this 2-core machine (nuclei_segmentation on CMU-1 is the heaviest call: 2.47 GB; the 9400 px PNG: nuclei 1.76 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TOOLS = ("tissue_qc", "nuclei_segmentation", "ihc_quantification", "mitosis_detection", "tissue_classification",
         "tumor_segmentation", "slide_classification")

_CALL = """
import json, sys, time
from pathlib import Path
from pathasst.core.cases import single_image_case
from pathasst.core.readers import CaseImageResolver
from pathasst.core.settings import Settings
from pathasst.tools.base import call_tool
from pathasst.tools.registry import default_registry
s = Settings(_env_file=None)
case = single_image_case(Path(sys.argv[2]), settings=s)
t0 = time.perf_counter()
rec, _ = call_tool(default_registry(s).get(sys.argv[1]), {"image": case.images[0].name}, CaseImageResolver(case, s))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"status": rec.status, "seconds": round(time.perf_counter() - t0, 1), "peak_mb": hwm // 1024,
                  "notes": rec.notes[:1]}))
"""


def huge_png(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    img = np.full((9400, 9400, 3), 240, np.uint8)
    img[2000:7000, 2000:7000] = (180, 90, 150)
    path = folder / "huge_9400.png"
    Image.fromarray(img).save(path, compress_level=9)
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    p.add_argument("--tools", nargs="+", default=list(TOOLS))
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = sorted((a.data / "slides").glob("*.svs"))
        inputs = [x for x in inputs if "broken" not in x.name] + [huge_png(Path(tmp))]
        env = {"HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
        for tool in a.tools:
            for path in inputs:
                done = subprocess.run([sys.executable, "-c", _CALL, tool, str(path)], capture_output=True, text=True,
                                      env=env, timeout=1800)
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                row = {"tool": tool, "input": path.name, **(json.loads(lines[-1]) if lines else
                                                           {"status": "error", "error": done.stderr[-300:]})}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
