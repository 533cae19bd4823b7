"""Example cases built from images that ship inside installed packages (no download).

The pathology image is scikit-image's ``immunohistochemistry()`` (``ihc.png``: 512x512, DAB IHC with haematoxylin
counterstain, no known copyright restrictions). From it the demo builds:

- ``ki67_patch``: the image as a Ki-67 patch, asking for the proliferation index;
- ``ki67_slide``: a 2048x2048 tiled, pyramidal TIFF mosaic of the image, read through OpenSlide as a whole slide;
- ``qc_blurred``: a sharp and a blurred copy, asking about image quality;
- ``broken_inputs``: a valid image beside a truncated PNG and an unknown file (the case still reports; the
  problems are listed);
- ``empty_case``: no image at all (fails with a clear reason in ``summary.csv``; the batch goes on).

Each case.yaml carries ``diagnosis: DEMO_DIAGNOSIS``, the published description of the sample image (a demo label,
not a clinical diagnosis). ``build_demo_library`` embeds the demo cases into a small case library
(``OUT/library``), so every demo report cites its similar cases (the case itself excluded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pathasst.core.settings import Settings
from pathasst.memory import open_library

__all__ = [
    "DEMO_CASES",
    "DEMO_DIAGNOSIS",
    "DEMO_LIBRARY",
    "DEMO_MPP",
    "DEMO_OUT",
    "DEMO_REPORTS",
    "NEW_CASES_DIR",
    "build_demo_cases",
    "build_demo_library",
    "write_pyramidal_tiff",
]

#: ``pathasst demo`` writes DEMO_OUT/{DEMO_CASES, DEMO_LIBRARY, DEMO_REPORTS}; ``pathasst ui`` opens them when
#: no cases folder is given
DEMO_OUT, DEMO_CASES, DEMO_LIBRARY, DEMO_REPORTS = "demo_out", "cases", "library", "reports"
#: the empty cases folder ``pathasst ui`` starts with when there is neither a cases folder nor a demo
NEW_CASES_DIR = "pathasst_cases"

#: nominal resolution given to the demo image (the source does not state one)
DEMO_MPP = 0.5
#: what scikit-image says the sample shows; recorded as the demo cases' diagnosis for the case library
DEMO_DIAGNOSIS = "colonic glands, DAB immunostain (scikit-image sample; demo label)"


def _ihc() -> np.ndarray:
    from skimage import data

    return np.asarray(data.immunohistochemistry())


def write_pyramidal_tiff(path: Path, rgb: np.ndarray, mpp: float, levels: int = 3, tile: int = 256) -> None:
    """Write a tiled, pyramidal RGB TIFF (one page per level) that OpenSlide opens as a generic-tiff slide."""
    import tifffile
    from skimage.transform import rescale

    res = (1e4 / mpp, 1e4 / mpp)  # pixels per cm
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        opts = dict(tile=(tile, tile), photometric="rgb", compression="zlib", resolutionunit="CENTIMETER")
        tif.write(rgb, resolution=res, **opts)
        for lvl in range(1, levels):
            small = rescale(rgb, 1 / 2**lvl, channel_axis=-1, anti_aliasing=True, preserve_range=True).astype(np.uint8)
            tif.write(small, subfiletype=1, resolution=(res[0] / 2**lvl, res[1] / 2**lvl), **opts)


def _case(dest: Path, cid: str, meta: dict) -> Path:
    d = dest / cid
    d.mkdir(parents=True, exist_ok=True)
    (d / "case.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    return d


def build_demo_cases(dest: Path) -> list[str]:
    """Create the example case folders under ``dest`` (idempotent) and return their ids."""
    from skimage.filters import gaussian

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ihc = _ihc()
    ids: list[str] = []

    d = _case(dest, "ki67_patch", {"stain": "Ki-67", "organ": "unknown", "mpp": DEMO_MPP,
                                   "question": "What is the Ki-67 proliferation index?", "diagnosis": DEMO_DIAGNOSIS})
    Image.fromarray(ihc).save(d / "ihc.png")
    ids.append(d.name)

    d = _case(dest, "ki67_slide", {"stain": "Ki-67", "question": "Estimate the Ki-67 index on this slide.",
                                   "diagnosis": DEMO_DIAGNOSIS})
    if not (d / "mosaic.tif").exists():
        top = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
        mosaic = np.concatenate([top, top[::-1]], axis=0)  # 1024 x 1024
        mosaic = np.concatenate([np.concatenate([mosaic, mosaic], 1)] * 2, 0)  # 2048 x 2048
        write_pyramidal_tiff(d / "mosaic.tif", np.ascontiguousarray(mosaic), mpp=DEMO_MPP)
    ids.append(d.name)

    d = _case(dest, "qc_blurred", {"stain": "Ki-67", "mpp": DEMO_MPP, "diagnosis": DEMO_DIAGNOSIS,
                                   "question": "Is the image quality adequate? Check for blur and tissue content."})
    Image.fromarray(ihc[:256, :256]).save(d / "sharp.png")
    blurred = (gaussian(ihc[:256, :256], sigma=3, channel_axis=-1) * 255).round().astype(np.uint8)
    Image.fromarray(blurred).save(d / "blurred.png")
    ids.append(d.name)

    d = _case(dest, "broken_inputs", {"stain": "Ki-67", "mpp": DEMO_MPP, "diagnosis": DEMO_DIAGNOSIS})
    Image.fromarray(ihc[256:, 256:]).save(d / "good.png")
    good = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 3])
    (d / "notes.docx").write_bytes(b"not an image")
    ids.append(d.name)

    d = dest / "empty_case"
    d.mkdir(exist_ok=True)
    (d / "README.txt").write_text("This case folder has no image; PathAsst reports it as failed.\n", encoding="utf-8")
    ids.append(d.name)
    return ids


def build_demo_library(cases_dir: Path, library_dir: Path, settings: Settings) -> Any:
    """Embed the demo cases into an embedded case library at ``library_dir`` (idempotent); the ingestion report."""
    lib = open_library(settings.model_copy(update={"chroma_path": Path(library_dir), "chroma_host": None}))
    return lib.add_cases(Path(cases_dir))
