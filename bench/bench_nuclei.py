"""Nuclei segmentation throughput (megapixels/s) and peak memory on a 2048x2048 region, vs the naive baseline,
in float32 (the default) and in bfloat16 (``PATHASST_NUCLEI_PRECISION=bfloat16``).

Run: ``.venv/bin/python bench/bench_nuclei.py``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import he_region, measure, rss_mib  # noqa: E402

from pathasst.agent.settings import Settings  # noqa: E402
from pathasst.tools.base import ToolInput  # noqa: E402
from pathasst.tools.evaluate import baseline_nuclei  # noqa: E402
from pathasst.tools.imaging import ImageData  # noqa: E402
from pathasst.tools.registry import default_registry  # noqa: E402


def main() -> None:
    rgb, mpp, where = he_region(2048)
    reg = default_registry(Settings(_env_file=None))
    tool = reg.get("nuclei_segmentation")
    img = ImageData(pixels=rgb, name="region.png", mpp=mpp)
    args = tool.input_model.model_validate({"image": "region.png"})
    assert isinstance(args, ToolInput)
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    res = {}
    r = measure(lambda: tool.analyze(img, args), repeat=2)
    out = tool.analyze(img, args).output
    res["nuclei_segmentation"] = {**r, "mpix_per_s": mp / r["best_s"], "count": out.count}
    bf16_tool = default_registry(Settings(_env_file=None, nuclei_precision="bfloat16")).get("nuclei_segmentation")
    r16 = measure(lambda: bf16_tool.analyze(img, args), repeat=2)
    out16 = bf16_tool.analyze(img, args).output
    res["nuclei_segmentation_bfloat16"] = {**r16, "mpix_per_s": mp / r16["best_s"], "count": out16.count,
                                           "model": bf16_tool.model_info().get("model")}
    res["speedup_bfloat16_vs_float32"] = r["best_s"] / r16["best_s"]
    b = measure(lambda: baseline_nuclei(rgb), repeat=2)
    res["naive_baseline"] = {**b, "mpix_per_s": mp / b["best_s"]}
    res["ratio_tool_vs_baseline_time"] = r["best_s"] / b["best_s"]
    res["region"] = {"shape": list(rgb.shape), "mpp": mpp, "source": where}
    res["peak_rss_mib_process"] = rss_mib()
    res["projected_hours_per_gigapixel"] = 1000 / res["nuclei_segmentation"]["mpix_per_s"] / 3600
    res["projected_hours_per_gigapixel_bfloat16"] = 1000 / res["nuclei_segmentation_bfloat16"]["mpix_per_s"] / 3600
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
