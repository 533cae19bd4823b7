"""Synthetic compound (multi-panel) figures with known panel boxes, and their YOLO-format data set
(``pathasst-train data subfig-build``).

A figure is a layout of panels on a white, black or light grey background:

* ``grid``: r x c equal cells (2-12 panels); ``guillotine``: a rectangle split recursively at random ratios
  (irregular layouts: a tall panel beside two short ones ...); ``abutting``: either layout with no gutter, panels
  touching; ``single``: one panel (a splitter must not cut it);
* gutters of 2-24 px and margins of 0-20 px; panel content: real pathology tiles (cropped to the panel's aspect,
  sometimes with an inset in a corner, a scale bar) or rendered charts (their white margin trimmed, except in
  abutting layouts, where it is what separates a chart from its neighbours);
* panel letters (``A``, ``a``, ``(a)``, ``A.``; DejaVu / STIX fonts, 10-36 px), drawn inside a corner of the panel
  (plain or on a box) or outside it, in a strip above its top-left corner.

A panel's box is its image plus its letter when the letter is outside (what a crop of the panel should hold);
insets, scale bars and inside letters belong to their panel. Boxes are ``(x0, y0, x1, y1)``, end exclusive.

:func:`build_subfig_dataset` writes ``OUT/images/SPLIT/NAME.jpg`` (JPEG q90, like most published figures),
``OUT/labels/SPLIT/NAME.txt`` (YOLO: ``0 cx cy w h``, normalised), ``OUT/data.yaml`` and ``OUT/boxes.jsonl``
(per figure: split, image, boxes, layout facts). Tiles of a split come only from that split's units
(:func:`pathasst.finetune.data.filter_data.pathology_tiles`), charts from disjoint render seeds.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.data import synthetic_images as synth

__all__ = ["BOXES_FILE", "Box", "CompoundFigure", "PanelSource", "build_subfig_dataset", "make_figure",
           "read_boxes", "tile_pool", "tiles_by_split"]

BOXES_FILE = "boxes.jsonl"
Box = tuple[int, int, int, int]
#: (rng, kind "tissue" | "chart" | "chart_margin", (w, h)) -> ((h, w, 3) uint8 content of one panel, its unit:
#: the tile's split unit or the chart's render seed)
PanelSource = Callable[[np.random.Generator, str, tuple[int, int]], tuple[np.ndarray, str]]


@dataclass
class CompoundFigure:
    """A rendered figure, its panel boxes (reading order) and facts about how it was made."""

    image: np.ndarray
    boxes: list[Box]
    meta: dict[str, Any] = field(default_factory=dict)


def _fit_to(rgb: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``rgb`` cropped at random to the aspect of ``size`` = (w, h) and resized to it."""
    from PIL import Image

    w, h = size
    ih, iw = rgb.shape[:2]
    if iw / ih > w / h:
        cw, ch = max(1, round(ih * w / h)), ih
    else:
        cw, ch = iw, max(1, round(iw * h / w))
    x0, y0 = int(rng.integers(0, iw - cw + 1)), int(rng.integers(0, ih - ch + 1))
    crop = np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw])
    return np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))


def tile_pool(tiles: list[tuple[np.ndarray, str]], chart_seed: int) -> PanelSource:
    """A panel source drawing tissue from ``tiles`` ((pixels, split unit) pairs) and charts rendered from seeds
    ``chart_seed``, ``+1`` ... (kind ``chart``: the chart's margin trimmed; ``chart_margin``: kept, as when charts
    abut other panels)."""
    counter = [0]

    def source(rng: np.random.Generator, kind: str, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        from PIL import Image

        if kind.startswith("chart"):
            counter[0] += 1
            r = np.random.default_rng([chart_seed, counter[0]])
            ar = size[0] / size[1]
            w = int(np.clip(size[0] * 1.2, 200, 500))
            chart = synth.render_chart(r, (w, int(np.clip(w / ar, 150, 500))))
            if kind == "chart":
                chart = synth.trim_background(chart)
            # the whole chart, squashed
            return np.asarray(Image.fromarray(chart).resize(size, Image.BILINEAR)), f"chart:{chart_seed}:{counter[0]}"
        pixels, unit = tiles[int(rng.integers(len(tiles)))]
        return _fit_to(pixels, size, rng), unit

    return source


# ---------------------------------------------------------------------------------------------------- layouts
def _grid(rng: np.random.Generator, w: int, h: int, g: int) -> list[Box]:
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    if rows * cols < 2:
        cols = 2
    cw, ch = (w - g * (cols - 1)) / cols, (h - g * (rows - 1)) / rows
    return [(round(c * (cw + g)), round(r * (ch + g)), round(c * (cw + g) + cw), round(r * (ch + g) + ch))
            for r in range(rows) for c in range(cols)]


def _guillotine(rng: np.random.Generator, w: int, h: int, g: int, target: int) -> list[Box]:
    rects: list[Box] = [(0, 0, w, h)]
    for _ in range(200):
        if len(rects) >= target:
            break
        i = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) * rng.uniform(0.6, 1.0) for b in rects]))
        x0, y0, x1, y1 = rects[i]
        vertical = (x1 - x0) > (y1 - y0) * rng.uniform(0.7, 1.4)
        span = (x1 - x0) if vertical else (y1 - y0)
        if span < 2 * 70 + g:
            break
        cut = int(span * rng.uniform(0.3, 0.7))
        if vertical:
            parts = [(x0, y0, x0 + cut, y1), (x0 + cut + g, y0, x1, y1)]
        else:
            parts = [(x0, y0, x1, y0 + cut), (x0, y0 + cut + g, x1, y1)]
        rects[i : i + 1] = parts
    return rects


def _letters(rng: np.random.Generator, n: int) -> list[str]:
    style = int(rng.integers(4))
    base = "ABCDEFGHIJKLMNOP" if style in (0, 3) else "abcdefghijklmnop"
    fmt = ["{}", "{}", "({})", "{}."][style]
    return [fmt.format(base[i]) for i in range(n)]


def _reading_order(boxes: list[Box]) -> list[int]:
    """Indices of ``boxes`` top-to-bottom in rows (boxes whose centres share a row band), left-to-right."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1], boxes[i][0]))
    rows: list[list[int]] = []
    for i in order:
        cy = (boxes[i][1] + boxes[i][3]) / 2
        for row in rows:
            r = boxes[row[0]]
            if r[1] <= cy <= r[3]:
                row.append(i)
                break
        else:
            rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda k: boxes[k][0])]


def make_figure(rng: np.random.Generator, source: PanelSource, chart_share: float = 0.3) -> CompoundFigure:
    """One synthetic compound figure (module docstring)."""
    from PIL import Image, ImageDraw

    layout = str(rng.choice(["grid", "guillotine", "abutting", "single"], p=[0.4, 0.3, 0.22, 0.08]))
    bg_name = str(rng.choice(["white", "black", "grey"], p=[0.75, 0.15, 0.10]))
    bg = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (235, 235, 235)}[bg_name]
    gutter = 0 if layout == "abutting" else int(rng.integers(2, 25))
    margin = int(rng.integers(0, 21))
    label_mode = str(rng.choice(["inside", "inside_box", "outside", "none"], p=[0.35, 0.25, 0.25, 0.15]))
    if label_mode == "outside" and layout == "abutting":
        label_mode = "inside_box"
    w = int(rng.integers(360, 900))
    h = int(np.clip(w * np.exp(rng.uniform(-0.7, 0.5)), 240, 900))
    font_px = int(np.clip(rng.normal(0.035, 0.01) * min(w, h) * 2, 10, 36))
    strip = font_px + 4 if label_mode == "outside" else 0
    inner_w, inner_h = w - 2 * margin, h - 2 * margin
    if layout == "single":
        rects = [(0, 0, inner_w, inner_h)]
    elif layout == "grid" or (layout == "abutting" and rng.random() < 0.5):
        rects = _grid(rng, inner_w, inner_h, gutter)
    else:
        rects = _guillotine(rng, inner_w, inner_h, gutter, int(rng.integers(2, 8)))
    rects = [(x0 + margin, y0 + margin, x1 + margin, y1 + margin) for x0, y0, x1, y1 in rects]
    im = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(im)
    order = _reading_order(rects)
    letters = _letters(rng, len(rects))
    font = synth.pick_font(rng, font_px, bold=bool(rng.random() < 0.7))
    ink = (0, 0, 0) if bg_name != "black" else (255, 255, 255)
    boxes: list[Box] = []
    kinds, units = [], []
    for k, i in enumerate(order):
        x0, y0, x1, y1 = rects[i]
        py0 = y0 + (strip if label_mode == "outside" and y1 - y0 > 3 * strip else 0)
        pw, ph = x1 - x0, y1 - py0
        if pw < 8 or ph < 8:
            continue
        kind = "chart" if rng.random() < chart_share else "tissue"
        kinds.append(kind)
        if kind == "chart" and gutter == 0:
            kind = "chart_margin"  # a chart keeps its own white margin: charts do not abut images edge to edge
        pixels, unit = source(rng, kind, (pw, ph))
        units.append(unit)
        panel = Image.fromarray(pixels)
        if kind == "tissue" and min(pw, ph) >= 150 and rng.random() < 0.12:
            units.append(_inset(panel, source, rng))
        if kind == "tissue" and rng.random() < 0.3:
            _scale_bar(panel, rng)
        im.paste(panel, (x0, py0))
        box = (x0, py0, x1, y1)
        if layout != "single" and label_mode != "none":
            box = _label(draw, letters[k], font, label_mode, (x0, py0, x1, y1), y0, ink, rng, panel) or box
        boxes.append(box)
    meta = {"layout": layout, "background": bg_name, "gutter": gutter, "margin": margin, "labels": label_mode,
            "panels": len(boxes), "charts": kinds.count("chart"), "size": [w, h], "units": sorted(set(units))}
    return CompoundFigure(np.asarray(im), boxes, meta)


def _inset(panel, source: PanelSource, rng: np.random.Generator) -> str:
    """Paste a small tile with a border into a corner of ``panel``; returns the tile's unit."""
    from PIL import Image, ImageDraw

    pw, ph = panel.size
    s = int(min(pw, ph) * rng.uniform(0.2, 0.35))
    pixels, unit = source(rng, "tissue", (s, s))
    inset = Image.fromarray(pixels)
    b = int(rng.integers(1, 4))
    x = pw - s - 6 if rng.random() < 0.5 else 6
    y = ph - s - 6 if rng.random() < 0.5 else 6
    ImageDraw.Draw(panel).rectangle((x - b, y - b, x + s + b - 1, y + s + b - 1),
                                    fill=(255, 255, 255) if rng.random() < 0.7 else (0, 0, 0))
    panel.paste(inset, (x, y))
    return unit


def _scale_bar(panel, rng: np.random.Generator) -> None:
    from PIL import ImageDraw

    pw, ph = panel.size
    length = int(pw * rng.uniform(0.1, 0.25))
    y = ph - int(rng.integers(8, 16))
    x = pw - length - int(rng.integers(8, 16))
    colour = (255, 255, 255) if rng.random() < 0.6 else (0, 0, 0)
    ImageDraw.Draw(panel).rectangle((x, y, x + length, y + int(rng.integers(2, 5))), fill=colour)


def _label(draw, text: str, font, mode: str, panel: Box, top: int, ink, rng: np.random.Generator,
           image) -> Box | None:
    """Draw the panel letter; returns the panel's box grown to hold an outside letter, else None."""
    x0, y0, x1, y1 = panel
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - l, b - t
    if mode == "outside":
        if y0 - top < th + 2:
            return None
        draw.text((x0 - l, top - t), text, fill=ink, font=font)
        return (x0, top, x1, y1)
    corner = int(rng.choice(4, p=[0.7, 0.15, 0.1, 0.05]))
    pad = int(rng.integers(3, 10))
    lx = x0 + pad if corner in (0, 2) else x1 - pad - tw
    ly = y0 + pad if corner in (0, 1) else y1 - pad - th
    patch = np.asarray(image)[max(0, ly - y0) : ly - y0 + th, max(0, lx - x0) : lx - x0 + tw]
    dark = patch.size and patch.mean() < 110
    if mode == "inside_box":
        fill = (255, 255, 255) if rng.random() < 0.8 else (0, 0, 0)
        draw.rectangle((lx - 2, ly - 2, lx + tw + 2, ly + th + 2), fill=fill)
        colour = (0, 0, 0) if fill == (255, 255, 255) else (255, 255, 255)
    else:
        colour = (255, 255, 255) if dark else (0, 0, 0)
    draw.text((lx - l, ly - t), text, fill=colour, font=font)
    return None


# ------------------------------------------------------------------------------------------------ data set
def tiles_by_split(shared: Path | None, seed: int = 0,
                   per_source: int = 400) -> dict[str, list[tuple[np.ndarray, str]]]:
    """(pixels, split unit) of pathology images per split: the shared data's, or without it crops of
    scikit-image's IHC sample (a stand-in for tests and fresh installs; the same image in every split)."""
    from pathasst.finetune.data.filter_data import pathology_tiles, read_ref

    out: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "val": [], "test": []}
    if shared is not None and shared.is_dir():
        for ref in pathology_tiles(shared, seed, per_source=per_source):
            out[ref.split].append((read_ref(ref, 320), ref.group))
    if not all(out.values()):
        ihc = next((p for p in synth.package_images() if p.kind == "ihc"), None)
        if ihc is None:
            raise FileNotFoundError("no pathology images: neither shared data nor scikit-image's IHC sample")
        rgb = ihc.load()
        rng = np.random.default_rng(seed)
        for tiles in out.values():
            if not tiles:
                tiles.extend((synth.random_crop(rgb, rng, 0.25), "skimage:ihc") for _ in range(24))
    return out


def build_subfig_dataset(out: Path, shared: Path | None, counts: tuple[int, int, int] = (800, 100, 200),
                         seed: int = 0, per_source: int = 400,
                         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the YOLO-format data set of synthetic compound figures (module docstring), tiles drawn from at most
    ``per_source`` images of each shared-data source; returns a summary."""
    from PIL import Image

    tiles = tiles_by_split(shared, seed, per_source)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    facts: Counter = Counter()
    for s_i, (split, n) in enumerate(zip(("train", "val", "test"), counts)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        source = tile_pool(tiles[split], zlib.crc32(f"subfig-chart-{split}-{seed}".encode()))
        for i in range(n):
            fig = make_figure(np.random.default_rng([seed, s_i, i]), source)
            name = f"{split}_{i:05d}"
            Image.fromarray(fig.image).save(out / "images" / split / f"{name}.jpg", quality=90)
            h, w = fig.image.shape[:2]
            (out / "labels" / split / f"{name}.txt").write_text(
                "".join(f"0 {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} "
                        f"{(b[3] - b[1]) / h:.6f}\n" for b in fig.boxes))
            lines.append(json.dumps({"split": split, "image": f"images/{split}/{name}.jpg",
                                     "boxes": [list(b) for b in fig.boxes], "meta": fig.meta}) + "\n")
            facts[(split, fig.meta["layout"])] += 1
            if log and (i + 1) % 100 == 0:
                log(f"{split}: {i + 1}/{n}")
    (out / BOXES_FILE).write_text("".join(lines), encoding="utf-8")
    (out / "data.yaml").write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n  0: panel\n",
        encoding="utf-8")
    return {"figures": len(lines), "by_split_layout": {f"{s}/{lay}": c for (s, lay), c in sorted(facts.items())},
            "tiles_per_split": {k: len(v) for k, v in tiles.items()}, "out": str(out)}


def read_boxes(folder: Path, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``boxes.jsonl`` (of one split when given); ``FileNotFoundError`` when it is missing."""
    path = Path(folder) / BOXES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the data set with `pathasst-train data subfig-build`")
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if split is None or r["split"] == split]
