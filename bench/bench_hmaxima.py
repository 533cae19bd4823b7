"""Seeds of the classical watershed (the nuclei network's domain guard and the ``deconvolution`` method): skimage's
``h_maxima`` on the whole image vs ``h_maxima_by_component`` (same result, one object at a time), on the watershed
energy of a 1024 px H&E region at 0.5 um/px (about 2048 px at the model's 0.25 um/px), and the whole
``deconvolution_nuclei`` call with each.

Run: ``.venv/bin/python bench/bench_hmaxima.py``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import he_region, measure  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.filters import gaussian  # noqa: E402
from skimage.morphology import h_maxima  # noqa: E402

import pathasst.tools.nuclei_classical as ns  # noqa: E402


def main() -> None:
    rgb, mpp, where = he_region(1024)  # 1024 px at 0.5 um/px = 2048 px at the model's 0.25 um/px
    work, _ = ns.resample_to_model(rgb, mpp)
    mask = ns.deconvolution_nuclei(work) > 0
    energy = gaussian(ndi.distance_transform_edt(mask), 1.0)
    mp = energy.size / 1e6
    whole = measure(lambda: h_maxima(energy, 1.0), repeat=2)
    ours = measure(lambda: ns.h_maxima_by_component(energy, 1.0), repeat=2)
    same = bool(np.array_equal(h_maxima(energy, 1.0).astype(bool), ns.h_maxima_by_component(energy, 1.0)))
    by_component = measure(lambda: ns.deconvolution_nuclei(work), repeat=2)
    with mock.patch.object(ns, "h_maxima_by_component", lambda img, h: h_maxima(img, h).astype(bool)):
        skimage_whole = measure(lambda: ns.deconvolution_nuclei(work), repeat=2)
    res = {
        "region": {"shape": list(work.shape), "um_per_px": ns.MODEL_MPP, "source": where,
                   "objects": int(ndi.label(energy > 0, structure=np.ones((3, 3)))[1])},
        "h_maxima_skimage_whole_s": whole["best_s"],
        "h_maxima_by_component_s": ours["best_s"],
        "h_maxima_speedup": whole["best_s"] / ours["best_s"],
        "identical_seeds": same,
        "deconvolution_nuclei_skimage_h_maxima_s": skimage_whole["best_s"],
        "deconvolution_nuclei_by_component_s": by_component["best_s"],
        "deconvolution_nuclei_speedup": skimage_whole["best_s"] / by_component["best_s"],
        "deconvolution_nuclei_mpix_per_s": mp / by_component["best_s"],
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
