"""Nuclei segmentation throughput (megapixels/s) and peak memory on a 2048x2048 region, vs the naive baseline:
the default (float32 network run by ONNX Runtime), float32 run by torch (``PATHASST_NUCLEI_RUNTIME=torch``) and
bfloat16 run by torch (``PATHASST_NUCLEI_PRECISION=bfloat16``), all in one process; and the default without the
ensemble members' vote (``post.member_vote = 0``: one watershed on the averaged maps, the post-processing of 0.6.0).

The bfloat16 variant runs only on a CPU with native bfloat16 (AVX512-BF16 / AMX / Arm BF16 in /proc/cpuinfo) or
with ``--bfloat16 always``: elsewhere torch emulates it (6x slower than float32 on an AVX2 CPU, where the 2048 px
run then takes most of an hour).

Run: ``.venv/bin/python bench/bench_nuclei.py [--size 2048] [--bfloat16 auto|always|never]``
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import he_region, measure, rss_mib  # noqa: E402

from pathasst.core.imaging import ImageData  # noqa: E402
from pathasst.core.settings import Settings  # noqa: E402
from pathasst.tools.backends.runtime import cpu_native_bf16  # noqa: E402
from pathasst.tools.base import ToolInput  # noqa: E402
from pathasst.tools.evaluate import baseline_nuclei  # noqa: E402
from pathasst.tools.registry import default_registry  # noqa: E402


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the square region in pixels")
    parser.add_argument("--bfloat16", choices=("auto", "always", "never"), default="auto",
                        help="the bfloat16 variant: auto = only where the CPU computes bfloat16 natively")
    opts = parser.parse_args()
    native = cpu_native_bf16()
    with_bf16 = opts.bfloat16 == "always" or (opts.bfloat16 == "auto" and bool(native))
    rgb, mpp, where = he_region(opts.size)
    reg = default_registry(Settings(_env_file=None))
    tool = reg.get("nuclei_segmentation")
    img = ImageData(pixels=rgb, name="region.png", mpp=mpp)
    args = tool.input_model.model_validate({"image": "region.png"})
    assert isinstance(args, ToolInput)
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    res: dict = {}
    variants: dict[str, dict] = {"nuclei_segmentation": {}, "nuclei_segmentation_torch": {"nuclei_runtime": "torch"}}
    if with_bf16:
        variants["nuclei_segmentation_bfloat16"] = {"nuclei_precision": "bfloat16"}
    res["cpu_native_bfloat16"] = native
    variants["nuclei_segmentation_no_vote"] = {}
    for key, update in variants.items():
        variant = default_registry(Settings(_env_file=None, **update)).get("nuclei_segmentation")
        if key.endswith("_no_vote"):
            variant.load()
            deep = variant._deep
            deep.config.post = replace(deep.config.post, member_vote=0)
            if deep.config.members:
                deep.keep_member_maps(False)
        out = variant.analyze(img, args).output  # loads (and exports to ONNX where it applies): not timed
        r = measure(lambda variant=variant: variant.analyze(img, args), repeat=1)
        res[key] = {**r, "mpix_per_s": mp / r["best_s"], "count": out.count, "model": variant.model_info().get("model")}
    torch_s = res["nuclei_segmentation_torch"]["best_s"]
    res["speedup_onnxruntime_vs_torch_float32"] = torch_s / res["nuclei_segmentation"]["best_s"]
    res["ratio_time_vote_vs_no_vote"] = (res["nuclei_segmentation"]["best_s"]
                                         / res["nuclei_segmentation_no_vote"]["best_s"])
    if with_bf16:
        res["speedup_bfloat16_vs_torch_float32"] = torch_s / res["nuclei_segmentation_bfloat16"]["best_s"]
    else:
        res["bfloat16_skipped"] = "no native bfloat16 on this CPU (torch would emulate it); --bfloat16 always runs it"
    b = measure(lambda: baseline_nuclei(rgb), repeat=2)
    res["naive_baseline"] = {**b, "mpix_per_s": mp / b["best_s"]}
    res["ratio_tool_vs_baseline_time"] = res["nuclei_segmentation"]["best_s"] / b["best_s"]
    res["region"] = {"shape": list(rgb.shape), "mpp": mpp, "source": where}
    res["peak_rss_mib_process"] = rss_mib()
    for key in variants:
        res[f"projected_hours_per_gigapixel{key.removeprefix('nuclei_segmentation')}"] = (
            1000 / res[key]["mpix_per_s"] / 3600)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
