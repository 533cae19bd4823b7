"""How many mitotic figures the embedded detector calls on H&E it was never trained on (the model card's
"out of domain" table): candidates per mm^2 with the tool's own density check off.

    .venv/bin/python scripts/mitosis_ood.py --data ../shared/data [--weights CKPT] [--out FILE.json]

Fields: the held-out CoNSeP tiles (source images 16-26: colorectal, 40x, 0.25 um/px; never read by the nuclei or
mitosis trainers), the three single H&E tiles of ``tiles/`` (magnification unknown: analysed as 0.25 um/px, the
tool's assumption) and a 1024 px window of CMU-1 (20x, 0.499 um/px, resampled to 0.25 by the tool). Real tumours
hold at most a few tens of figures per mm^2; colorectal CoNSeP tiles a handful in all. A detector that generalises
stays near those figures; hundreds per mm^2 mean it fires on ordinary nuclei.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _fields(data: Path) -> list[tuple[str, str, np.ndarray, float | None]]:
    """(group, name, RGB, mpp) of every field."""
    from pathasst.tools.evaluate import consep_held_out_tiles

    consep = data / "consep_train"
    out = []
    for name in consep_held_out_tiles(consep, every=1):
        path = next(p for p in (consep / "images" / f"{name}{e}" for e in (".png", ".jpg")) if p.exists())
        out.append(("consep_held_out", name, np.asarray(Image.open(path).convert("RGB")), 0.25))
    for tile in sorted((data / "tiles").glob("*")):
        out.append(("single_tiles", tile.name, np.asarray(Image.open(tile).convert("RGB")), None))
    slide = data / "slides" / "cmu-1-small-region.svs"
    if slide.exists():
        import openslide

        with openslide.OpenSlide(str(slide)) as s:
            w, h = s.dimensions
            mpp = float(s.properties.get(openslide.PROPERTY_NAME_MPP_X, 0.499))
            region = s.read_region(((w - 1024) // 2, (h - 1024) // 2), 0, (1024, 1024)).convert("RGB")
        out.append(("cmu1_20x", "cmu-1 centre 1024 px", np.asarray(region), mpp))
    return out


def run(data: Path, weights: Path | None = None) -> dict:
    from pathasst.core.imaging import ImageData
    from pathasst.core.settings import Settings
    from pathasst.tools.backends.mitosis_net import MitosisNet
    from pathasst.tools.mitosis_detection import MitosisDetectionInput, MitosisDetectionTool

    tool = MitosisDetectionTool(Settings(_env_file=None))
    if weights is not None:
        tool._net = MitosisNet.load(weights, "--weights")
    groups: dict[str, dict] = {}
    for group, name, rgb, mpp in _fields(data):
        res = tool.analyze(ImageData(rgb, name, mpp), MitosisDetectionInput(image=name, max_density_per_mm2=None))
        out = res.output
        g = groups.setdefault(group, {"fields": 0, "figures": 0, "area_mm2": 0.0, "per_field": []})
        n = out.count or 0
        area = rgb.shape[0] * rgb.shape[1] * (mpp or 0.25) ** 2 / 1e6
        g["fields"] += 1
        g["figures"] += n
        g["area_mm2"] += area
        g["per_field"].append(n)
    for g in groups.values():
        g["per_mm2"] = round(g["figures"] / g["area_mm2"], 1)
        g["area_mm2"] = round(g["area_mm2"], 4)
        g["fields_with_any"] = sum(1 for n in g["per_field"] if n)
        g["max_in_a_field"] = max(g["per_field"])
        del g["per_field"]
    return {"weights": str(weights or "shipped"), "threshold": tool._embedded().config.threshold, "groups": groups}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the shared data folder (consep_train, tiles, slides)")
    p.add_argument("--weights", type=Path, help="a mitosis_net checkpoint (default: the shipped one)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    a = p.parse_args(argv)
    result = run(a.data, a.weights)
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
