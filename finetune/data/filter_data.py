"""The pathology-vs-other image data set of the image filter (``pathasst-train data filter-build``).

Positives (label 1, brightfield pathology: H&E and IHC) are real images from ``shared/data``, split by the unit the
data has, never by tile (:func:`pathology_tiles`):

=================  ===================================  =========================================================
source             unit of the split                    split
=================  ===================================  =========================================================
``ebhi_seg``       case (``labels.csv``)                the project's fixed case split (``tools/data``)
``mitosis_amibr``  slide (``AMI-BR.csv``)               the project's fixed slide split
``consep``         source image (``train_N`` of tiles)  70 / 15 / 15 % of the 27 images (seeded)
``deepliif_ki67``  image (crops of 4 IHC panels)        22_2, Bladder1 train; Lung1 val; 34_3 test
``slides``         slide (crops at 1x / 4x / 16x down)  cmu-1 train; the TCGA slide test
``bisque_breast``  --                                   out of domain: test only (another lab, TMA cores)
``shared_tiles``   --                                   out of domain: test only (3 tiles of 3 packages)
``skimage_ihc``    --                                   out of domain: test only (scikit-image's IHC sample)
=================  ===================================  =========================================================

Negatives (label 0) are built here (:mod:`pathasst.finetune.data.synthetic_images`): rendered charts and tables,
text pages, diagrams and UI screenshots (the render seed is the unit: splits use disjoint seeds), photos and
drawings that installed packages ship (the source image is the unit: :data:`PHOTO_SPLIT`, each photo in one
split only), and hard cases: grayscale micrograph-like textures, fluorescence-looking renders of real H&E tiles
(following their tile's split), and scikit-image's phase-contrast ``cell`` micrograph (test only). Fluorescence and
grayscale micrographs are labelled *not* pathology: the filter keeps brightfield pathology, what the project's
tools read.

Output: ``OUT/images/SPLIT/SOURCE/NAME.png`` (longer side at most ``max_side``) and ``OUT/manifest.jsonl``, one
:class:`FilterSample` per line, and ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pathasst.finetune.data import synthetic_images as synth
from pathasst.finetune.data.image_io import load_image

__all__ = [
    "MANIFEST",
    "PHOTO_SPLIT",
    "FilterSample",
    "TileRef",
    "build_filter_dataset",
    "pathology_tiles",
    "read_manifest",
    "split_of_name",
]

MANIFEST = "manifest.jsonl"
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
#: package photos / drawings outside the training split (the rest are training images); ``cell`` and ``ihc`` are
#: the hard negative and the out-of-domain positive, test only
PHOTO_SPLIT: dict[str, Split] = {
    **{n: "test" for n in ("skimage:coffee", "skimage:rocket", "ultralytics:bus", "sklearn:china", "skimage:moon",
                           "skimage:retina", "skimage:brick", "skimage:text", "skimage:horse", "skimage:color",
                           "networkx:test_display_complex", "skimage:cell", "skimage:ihc")},
    **{n: "val" for n in ("skimage:chelsea", "matplotlib:grace_hopper", "skimage:gravel", "skimage:page",
                          "networkx:test_house_with_colors", "skimage:microaneurysms")},
}
_FIXED = {"train": "train", "validation": "val", "held_out": "test"}
_DEEPLIIF = {"22_2": "train", "Bladder1": "train", "Lung1": "val", "34_3": "test"}
_SLIDES = {"cmu-1-small-region": "train", "tcga-cr-7395-01a-01-ts1": "test"}


@dataclass(frozen=True)
class FilterSample:
    """One image of the data set: ``label`` 1 = brightfield pathology; ``group`` = the unit of the split."""

    image: str  # relative to the data set folder
    label: int
    source: str
    group: str
    split: Split
    kind: Literal["in_domain", "out_of_domain", "hard"]


@dataclass(frozen=True)
class TileRef:
    """A real pathology image (or a region of one) of ``shared/data`` with its split unit and split."""

    path: Path
    source: str
    group: str
    split: Split
    kind: Literal["in_domain", "out_of_domain"] = "in_domain"
    box: tuple[int, int, int, int] | None = None  # x, y, w, h of a region; None = the whole image


def split_of_name(name: str, val: float = 0.15, test: float = 0.15) -> Split:
    """A stable split of a unit name (crc32 hash): the same name always lands in the same split."""
    u = (zlib.crc32(name.encode()) % 10_000) / 10_000
    return "test" if u < test else "val" if u < test + val else "train"


def _consep_split(groups: list[str], seed: int = 2026) -> dict[str, Split]:
    order = np.random.default_rng(seed).permutation(sorted(groups))
    n_test = n_val = max(1, round(0.15 * len(order)))
    return {str(g): ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, g in enumerate(order)}


def _crops(path: Path, size: tuple[int, int], source: str, group: str, split: Split, kind, n: int,
           rng: np.random.Generator, lo: int, hi: int) -> list[TileRef]:
    w, h = size
    out = []
    for _ in range(n):
        s = int(rng.integers(min(lo, w, h), min(hi, w, h) + 1))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        out.append(TileRef(path, source, group, split, kind, (x, y, s, s)))
    return out


def pathology_tiles(shared: Path, seed: int = 0, per_source: int = 1200, scale: float = 1.0) -> list[TileRef]:
    """The real pathology images of ``shared`` (``shared/data``) with their splits (module docstring); at most
    ``per_source`` of each large source (drawn at random), crops of the large images times ``scale``. Sources whose
    folder is absent are skipped."""
    from PIL import Image

    from pathasst.tools.datasets import amibr_items, ebhi_items

    rng = np.random.default_rng(seed)
    refs: list[TileRef] = []
    n = lambda k: max(1, round(k * scale))  # noqa: E731

    def cap(items: list[TileRef]) -> list[TileRef]:
        if len(items) <= per_source:
            return items
        keep = rng.choice(len(items), per_source, replace=False)
        return [items[i] for i in sorted(keep)]

    if (shared / "ebhi_seg" / "labels.csv").is_file():
        refs += cap([TileRef(it.image, "ebhi_seg", f"ebhi_seg:{it.case}", _FIXED[it.split])  # type: ignore[misc]
                     for it in ebhi_items(shared / "ebhi_seg")])
    if (shared / "mitosis_amibr" / "AMI-BR.csv").is_file():
        refs += cap([TileRef(it.image, "mitosis_amibr", f"mitosis_amibr:{it.slide}",
                             _FIXED[it.split])  # type: ignore[misc]
                     for it in amibr_items(shared / "mitosis_amibr")])
    consep = sorted((shared / "consep_train" / "images").glob("*.jpg"))
    if consep:
        groups = {p: p.stem.rsplit("_", 1)[0] for p in consep}
        split = _consep_split(sorted(set(groups.values())))
        refs += cap([TileRef(p, "consep", f"consep:{groups[p]}", split[groups[p]]) for p in consep])
    for stem, sp in _DEEPLIIF.items():
        p = shared / "deepliif_ki67" / f"{stem}_ihc.png"
        if p.is_file():
            refs += _crops(p, (512, 512), "deepliif_ki67", f"deepliif_ki67:{stem}", sp,  # type: ignore[arg-type]
                           "in_domain", n(48 if sp == "train" else 24), rng, 96, 512)
    for stem, sp in _SLIDES.items():
        p = shared / "slides" / f"{stem}.svs"
        if p.is_file():
            refs += _slide_regions(p, stem, sp, rng, scale)  # type: ignore[arg-type]
    bisque = shared / "bisque_breast"
    if (bisque / "labels.csv").is_file():
        from pathasst.tools.datasets import read_csv_rows

        for r in read_csv_rows(bisque / "labels.csv"):
            p = bisque / "images" / f"{r['image']}.jpg"
            if p.is_file():
                with Image.open(p) as im:
                    refs += _crops(p, im.size, "bisque_breast", f"bisque_breast:{r['group']}", "test", "out_of_domain",
                                   n(4), rng, 160, 768)
    for p in sorted((shared / "tiles").glob("*")):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(p) as im:
                refs += _crops(p, im.size, "shared_tiles", f"shared_tiles:{p.stem}", "test", "out_of_domain", n(8), rng,
                               128, 1000)
    return refs


def _slide_regions(path: Path, stem: str, split: Split, rng: np.random.Generator, scale: float) -> list[TileRef]:
    """Regions of a whole slide at three downsamples (a box in level-0 pixels; read by :func:`_read_ref`)."""
    try:
        import openslide
    except ImportError:
        return []
    with openslide.OpenSlide(str(path)) as s:
        w, h = s.dimensions
    refs = []
    for down, n in ((1, 16), (4, 16), (16, 8)):
        side = min(256 * down, w, h)
        for _ in range(max(1, round((n if split == "train" else n // 2) * scale))):
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            refs.append(TileRef(path, "slides", f"slides:{stem}", split, "in_domain", (x, y, side, side)))
    return refs


def read_ref(ref: TileRef, max_side: int = 256) -> np.ndarray:
    """The pixels of a :class:`TileRef` (its region when it has one), longer side at most ``max_side``."""
    if ref.path.suffix.lower() == ".svs":
        import openslide

        x, y, w, h = ref.box  # type: ignore[misc]
        with openslide.OpenSlide(str(ref.path)) as s:
            level = s.get_best_level_for_downsample(max(1.0, w / max_side))
            ds = s.level_downsamples[level]
            im = s.read_region((x, y), level, (int(w / ds), int(h / ds))).convert("RGB")
            # transparent (unscanned) slide area reads as black: show it as glass (white)
            rgb = np.asarray(im).copy()
        rgb[rgb.max(-1) == 0] = 255
        return _fit(rgb, max_side)
    rgb = load_image(ref.path)
    if ref.box is not None:
        x, y, w, h = ref.box
        rgb = rgb[y : y + h, x : x + w]
    return _fit(rgb, max_side)


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return np.ascontiguousarray(rgb)
    s = max_side / max(h, w)
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS))


# ------------------------------------------------------------------------------------------------- builder
#: rendered negatives per split: kind -> (train, val, test)
RENDER_COUNTS: dict[str, tuple[int, int, int]] = {
    "chart": (900, 150, 250),
    "text_page": (220, 40, 60),
    "diagram": (220, 40, 60),
    "ui": (220, 40, 60),
    "grayscale_texture": (160, 30, 50),
}
#: random crops per package photo, by split
PHOTO_CROPS: dict[str, int] = {"train": 36, "val": 16, "test": 16}


def _render_size(rng: np.random.Generator) -> tuple[int, int]:
    w = int(rng.integers(160, 480))
    return w, int(np.clip(w * np.exp(rng.uniform(-0.6, 0.6)), 120, 480))


def build_filter_dataset(shared: Path | None, out: Path, seed: int = 0, scale: float = 1.0, max_side: int = 192,
                         per_source: int = 1200) -> dict:
    """Write the data set (module docstring) to ``out``; ``scale`` multiplies every count (a test uses 0.02).
    ``shared`` None (or absent) builds the negatives and the package positives only. Returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[FilterSample] = []

    def save(rgb: np.ndarray, split: Split, source: str, name: str, label: int, group: str, kind) -> None:
        rel = Path("images") / split / source / f"{name}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(synth.encode_png(_fit(rgb, max_side)))
        rows.append(FilterSample(rel.as_posix(), label, source, group, split, kind))

    n = lambda k: max(1, round(k * scale))  # noqa: E731
    tiles: list[TileRef] = []
    if shared is not None and shared.is_dir():
        tiles = pathology_tiles(shared, seed, per_source=max(8, round(per_source * scale)), scale=scale)
    for i, ref in enumerate(tiles):
        save(read_ref(ref), ref.split, ref.source, f"{i:05d}", 1, ref.group, ref.kind)
    # fluorescence-looking renders of real H&E tiles (hard negatives), in their tile's split
    he = [t for t in tiles if t.source in ("ebhi_seg", "consep", "mitosis_amibr")]
    rng = np.random.default_rng(seed + 1)
    for split, k in zip(SPLITS, (200, 40, 80)):
        pool = [t for t in he if t.split == split]
        for j in (rng.choice(len(pool), min(len(pool), n(k)), replace=False) if pool else []):
            ref = pool[int(j)]
            save(synth.render_fluorescence(read_ref(ref), rng), split, "fluorescence", f"{int(j):05d}", 0, ref.group,
                 "hard")
    # rendered negatives: disjoint seeds per split
    for kind, counts in RENDER_COUNTS.items():
        for s_i, (split, k) in enumerate(zip(SPLITS, counts)):
            for i in range(n(k)):
                r = np.random.default_rng([seed, zlib.crc32(kind.encode()), s_i, i])
                save(synth.RENDERERS[kind](r, _render_size(r)), split, kind, f"{i:05d}", 0,
                     f"{kind}:{split}:{i}", "hard" if kind == "grayscale_texture" else "in_domain")
    # photos and drawings that packages ship, split by source image
    for img in synth.package_images():
        split = PHOTO_SPLIT.get(img.name, "train")
        rgb = img.load()
        label = 1 if img.kind == "ihc" else 0
        kind = "out_of_domain" if img.kind == "ihc" else "hard" if img.kind == "micrograph" else "in_domain"
        source = "skimage_ihc" if img.kind == "ihc" else "micrograph" if img.kind == "micrograph" else "photo"
        r = np.random.default_rng([seed, zlib.crc32(img.name.encode())])
        for i in range(n(PHOTO_CROPS[split])):
            crop = rgb if i == 0 else synth.random_crop(rgb, r)
            save(crop, split, source, f"{img.name.replace(':', '_')}_{i:03d}", label, img.name, kind)
    text = "".join(json.dumps(asdict(r)) + "\n" for r in rows)
    (out / MANIFEST).write_text(text, encoding="utf-8")
    summary = _summary(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _summary(rows: list[FilterSample]) -> dict:
    by = Counter((r.split, r.source, r.label) for r in rows)
    per: dict[str, dict[str, int]] = {}
    for (split, source, label), c in sorted(by.items()):
        per.setdefault(f"{source} ({'pathology' if label else 'other'})", {})[split] = c
    return {"images": len(rows), "by_split": dict(Counter(r.split for r in rows)),
            "positives": sum(r.label for r in rows), "by_source": per}


def read_manifest(folder: Path) -> list[FilterSample]:
    """The samples of a data set folder; ``FileNotFoundError`` naming the file when it has no manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the data set with `pathasst-train data filter-build`")
    return [FilterSample(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
