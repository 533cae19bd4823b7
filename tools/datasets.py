"""The labelled-data layouts of ``shared/data`` that the tools are trained and scored on, and their fixed splits.

* **EBHI-Seg** (:func:`ebhi_items`): ``labels.csv`` (image, label, case, has_mask), ``images/CLASS/NAME.jpg``,
  ``masks/CLASS/NAME.png`` (255 = lesion). Split by case (the specimen): :func:`ebhi_split` reads the fixed lists in
  ``tools/data/ebhi_seg_split.json`` (20 % of the cases held out, 15 % validation, stratified by each case's
  majority class). Cases in neither list are training cases; a case the list does not know (another cohort of
  the same dataset) is never a training case of the shipped model.

* **AMi-Br** (:func:`amibr_items`): ``AMI-BR.csv`` (slide, dataset, uid, x, y, expert votes, majority_atypical) and
  ``atypical/`` / ``normal/DATASET_UID.jpg``: 128 px crops at 40x, each centred on one mitotic figure. Split by slide
  (``tools/data/amibr_split.json``); every crop also lists the other figures of the same slide that fall inside it.

The trainers (:mod:`pathasst.finetune`) and the evaluators (``pathasst tools eval``) read the data only through these
functions, so both see the same split.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

__all__ = ["AMIBR_SPLIT_FILE", "EBHI_SPLIT_FILE", "AmibrItem", "EbhiItem", "Split", "amibr_items", "amibr_split",
           "ebhi_items", "ebhi_split", "read_csv_rows"]

_DATA = Path(__file__).resolve().parent / "data"
EBHI_SPLIT_FILE = _DATA / "ebhi_seg_split.json"
AMIBR_SPLIT_FILE = _DATA / "amibr_split.json"
#: microns per pixel of the AMi-Br crops (40x scans)
AMIBR_MPP = 0.25
Split = Literal["train", "validation", "held_out"]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts; FileNotFoundError naming the file when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class EbhiItem:
    """One EBHI-Seg image: its path, class, case, lesion-mask path (None when it has none) and split."""

    name: str
    image: Path
    label: str
    case: str
    mask: Path | None
    split: Split


@lru_cache(maxsize=4)
def _split_lists(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return frozenset(data["held_out"]), frozenset(data["validation"])


def _split(path: Path, unit: str) -> Split:
    held, val = _split_lists(path)
    if unit in held:
        return "held_out"
    return "validation" if unit in val else "train"


def ebhi_split(case: str) -> Split:
    """The fixed split of an EBHI-Seg case."""
    return _split(EBHI_SPLIT_FILE, case)


def amibr_split(slide: str) -> Split:
    """The fixed split of an AMi-Br slide (``DATASET/slide``)."""
    return _split(AMIBR_SPLIT_FILE, slide)


def ebhi_items(data_dir: Path | str, splits: tuple[Split, ...] | None = None) -> list[EbhiItem]:
    """The images of an EBHI-Seg folder (``labels.csv`` order), optionally only those of ``splits``.

    Raises FileNotFoundError when the folder is not in the layout (no ``labels.csv`` or an image is missing).
    """
    data_dir = Path(data_dir)
    rows = read_csv_rows(data_dir / "labels.csv")
    missing_cols = {"image", "label", "case"} - set(rows[0] if rows else {})
    if missing_cols:
        raise FileNotFoundError(f"{data_dir / 'labels.csv'} lacks the columns {sorted(missing_cols)}")
    items = []
    for r in rows:
        split = ebhi_split(r["case"])
        if splits is not None and split not in splits:
            continue
        image = _with_suffix(data_dir / "images" / r["image"], (".jpg", ".jpeg", ".png", ".tif", ".tiff"))
        mask = _with_suffix(data_dir / "masks" / r["image"], (".png",), required=False)
        items.append(EbhiItem(r["image"], image, r["label"], r["case"], mask, split))
    return items


def _with_suffix(stem: Path, suffixes: tuple[str, ...], required: bool = True) -> Path | None:
    for s in suffixes:
        p = stem.with_name(stem.name + s)
        if p.is_file():
            return p
    if required:
        raise FileNotFoundError(f"no image file for {stem} (tried {', '.join(suffixes)})")
    return None


@dataclass(frozen=True)
class AmibrItem:
    """One AMi-Br crop: its path, slide (``DATASET/slide``), whether the centred figure is atypical (majority of
    three experts), the other figures of the slide inside the crop (offsets from the centre in crop pixels, each
    with its atypical flag) and the split."""

    name: str
    image: Path
    slide: str
    atypical: bool
    others: tuple[tuple[float, float, bool], ...]
    split: Split


def amibr_items(data_dir: Path | str, splits: tuple[Split, ...] | None = None, half: float = 64.0) -> list[AmibrItem]:
    """The crops of an AMi-Br folder (``AMI-BR.csv`` order), optionally only those of ``splits``; ``half`` = half
    the crop side (figures of the same slide within it are listed as ``others``)."""
    data_dir = Path(data_dir)
    rows = read_csv_rows(data_dir / "AMI-BR.csv")
    missing_cols = {"slide", "dataset", "uid", "x", "y", "majority_atypical"} - set(rows[0] if rows else {})
    if missing_cols:
        raise FileNotFoundError(f"{data_dir / 'AMI-BR.csv'} lacks the columns {sorted(missing_cols)}")
    by_slide: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_slide.setdefault(f"{r['dataset']}/{r['slide']}", []).append(r)
    items = []
    for r in rows:
        slide = f"{r['dataset']}/{r['slide']}"
        split = amibr_split(slide)
        if splits is not None and split not in splits:
            continue
        atypical = r["majority_atypical"].strip().lower() == "true"
        name = f"{r['dataset']}_{r['uid']}"
        image = data_dir / ("atypical" if atypical else "normal") / f"{name}.jpg"
        if not image.is_file():
            raise FileNotFoundError(f"no crop file {image}")
        x, y = float(r["x"]), float(r["y"])
        others = tuple(
            (float(o["x"]) - x, float(o["y"]) - y, o["majority_atypical"].strip().lower() == "true")
            for o in by_slide[slide]
            if o is not r and abs(float(o["x"]) - x) < half and abs(float(o["y"]) - y) < half
        )
        items.append(AmibrItem(name, image, slide, atypical, others, split))
    return items
