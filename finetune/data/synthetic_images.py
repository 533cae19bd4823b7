"""Non-pathology images built honestly for the image filter and the compound figures (issue 29, item 4).

Nothing is downloaded: every image is either rendered here (matplotlib charts and tables, text pages, diagrams,
UI-like screenshots, grayscale micrograph-like textures) or a photo / drawing that an installed package ships
(:func:`package_images`: scikit-image's sample photos, matplotlib's Grace Hopper, scikit-learn's two sample photos,
ultralytics' two assets, networkx's drawing baselines). Every renderer takes a ``numpy`` generator, so one seed
gives one image: the seed is the image's "source", and splits keep seeds apart.

:func:`render_fluorescence` turns a real H&E tile into a fluorescence-looking image (haematoxylin -> blue nuclear
counterstain, eosin -> green or red on black): a pathology-adjacent hard case, labelled *not* brightfield pathology.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

__all__ = [
    "CHART_KINDS",
    "RENDERERS",
    "PackageImage",
    "encode_png",
    "font_paths",
    "package_images",
    "pick_font",
    "plot_chart",
    "random_crop",
    "render_chart",
    "render_diagram",
    "render_fluorescence",
    "render_grayscale_texture",
    "render_text_page",
    "render_ui",
    "trim_background",
]

_WORDS = (
    "expression survival months patients control treated cohort tumour stroma grade stage response index score "
    "fraction density cells nuclei ratio group baseline week dose marker positive negative total mean median "
    "analysis sample tissue model figure table method result value change level time rate risk hazard "
    "proliferation infiltration epithelium carcinoma benign malignant biopsy specimen staining intensity area "
    "Ki-67 HER2 ER PR PD-L1 CD8 p53 TP53 KRAS EGFR survival overall disease-free accuracy sensitivity specificity"
).split()
CHART_KINDS = ("bar", "line", "scatter", "box", "heatmap", "table", "pie", "hist", "errorbar", "km", "violin",
               "stacked", "area", "forest")
_STYLES = ("default", "ggplot", "bmh", "classic", "seaborn-v0_8-whitegrid", "dark_background", "fivethirtyeight",
           "grayscale", "seaborn-v0_8-pastel")


def _words(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS, int(rng.integers(lo, hi + 1))))


@lru_cache(maxsize=1)
def font_paths() -> tuple[str, ...]:
    """TrueType fonts that matplotlib ships (DejaVu Sans / Serif / Mono, STIX), or () without matplotlib."""
    spec = find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return ()
    root = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"
    names = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf",
             "DejaVuSans-Oblique.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf")
    return tuple(str(root / n) for n in names if (root / n).is_file())


def pick_font(rng: np.random.Generator, size: int, bold: bool | None = None):
    from PIL import ImageFont

    paths = font_paths()
    if bold is not None:
        paths = tuple(p for p in paths if ("Bol" in p) == bold) or paths
    if not paths:
        return ImageFont.load_default()
    return ImageFont.truetype(paths[int(rng.integers(len(paths)))], size=max(6, int(size)))


# ------------------------------------------------------------------------------------------------------ charts
def plot_chart(ax, kind: str, rng: np.random.Generator) -> None:
    """Draw a random chart of ``kind`` (one of :data:`CHART_KINDS`) on matplotlib axes ``ax``."""
    n = int(rng.integers(3, 9))
    labels = [w[:10] for w in rng.choice(_WORDS, n, replace=False)]
    if kind == "bar":
        vals = rng.gamma(2, 10, n)
        (ax.barh if rng.random() < 0.3 else ax.bar)(labels, vals, yerr=None if rng.random() < 0.5 else vals * 0.1)
    elif kind == "stacked":
        bottom = np.zeros(n)
        for _ in range(int(rng.integers(2, 4))):
            v = rng.gamma(2, 5, n)
            ax.bar(labels, v, bottom=bottom, label=_words(rng, 1, 1))
            bottom += v
        ax.legend(fontsize="small")
    elif kind in ("line", "area"):
        x = np.arange(int(rng.integers(5, 40)))
        for _ in range(int(rng.integers(1, 4))):
            y = np.cumsum(rng.normal(0, 1, len(x))) + rng.normal(0, 5)
            (ax.fill_between(x, y, y.min() - 1, alpha=0.4) if kind == "area" else
             ax.plot(x, y, marker=rng.choice(["", "o", "s", "^"]), label=_words(rng, 1, 2)))
        if kind == "line" and rng.random() < 0.6:
            ax.legend(fontsize="small")
    elif kind == "scatter":
        m = int(rng.integers(20, 300))
        x = rng.normal(0, 1, m)
        y, s = x * rng.normal(0, 1) + rng.normal(0, 1, m), rng.uniform(3, 30)
        c = rng.random(m) if rng.random() < 0.5 else None
        cmap = str(rng.choice(["viridis", "RdPu", "coolwarm"]))
        ax.scatter(x, y, s=s, c=c, cmap=cmap if c is not None else None)
    elif kind == "box":
        ax.boxplot([rng.normal(rng.normal(0, 2), rng.uniform(0.5, 2), 40) for _ in range(n)])
        ax.set_xticks(range(1, n + 1), labels)
    elif kind == "violin":
        ax.violinplot([rng.normal(rng.normal(0, 2), rng.uniform(0.5, 2), 60) for _ in range(n)])
    elif kind == "heatmap":
        h, w = int(rng.integers(4, 30)), int(rng.integers(4, 30))
        im = ax.imshow(rng.normal(0, 1, (h, w)).cumsum(int(rng.integers(0, 2))),
                       cmap=rng.choice(["viridis", "magma", "RdBu_r", "PuRd", "Purples", "RdPu", "hot", "YlGnBu"]),
                       aspect="auto")
        ax.figure.colorbar(im, ax=ax)
    elif kind == "table":
        ax.axis("off")
        cells = [[f"{v:.{int(rng.integers(0, 3))}f}" for v in rng.gamma(2, 10, 4)] for _ in range(n)]
        t = ax.table(cellText=cells, rowLabels=labels, colLabels=[w[:8] for w in rng.choice(_WORDS, 4)], loc="center")
        t.scale(1, rng.uniform(1.0, 2.0))
    elif kind == "pie":
        ax.pie(rng.gamma(2, 10, n), labels=labels, autopct="%1.0f%%" if rng.random() < 0.5 else None)
    elif kind == "hist":
        ax.hist(rng.normal(0, 1, 500) * rng.uniform(0.5, 3), bins=int(rng.integers(8, 40)),
                histtype=rng.choice(["bar", "step", "stepfilled"]))
    elif kind == "errorbar":
        x = np.arange(n)
        ax.errorbar(x, rng.normal(5, 2, n), yerr=rng.uniform(0.2, 1.5, n), fmt=rng.choice(["o", "s", "-o"]), capsize=3)
        ax.set_xticks(x, labels)
    elif kind == "km":
        for _ in range(int(rng.integers(1, 4))):
            t = np.sort(rng.exponential(30, 60))
            ax.step(np.r_[0, t], np.r_[1, 1 - np.arange(1, 61) / 60 * rng.uniform(0.4, 1)], where="post",
                    label=_words(rng, 1, 2))
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize="small")
    else:  # forest plot
        est = rng.normal(1, 0.4, n)
        err = rng.uniform(0.1, 0.6, n)
        ax.errorbar(est, np.arange(n), xerr=err, fmt="s", color="k")
        ax.axvline(1, ls="--", color="grey")
        ax.set_yticks(np.arange(n), labels)


def render_chart(rng: np.random.Generator, size: tuple[int, int] = (320, 240), kind: str | None = None) -> np.ndarray:
    """A matplotlib chart or table with a title, axis labels and ticks, as (H, W, 3) uint8; ``size`` = (w, h)."""
    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kind = kind or str(rng.choice(CHART_KINDS))
    dpi = float(rng.uniform(60, 110))
    with matplotlib.style.context(str(rng.choice(_STYLES))), matplotlib.rc_context(
        {"font.size": float(rng.uniform(6, 11)), "font.family": str(rng.choice(["sans-serif", "serif", "monospace"]))}
    ):
        fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        plot_chart(ax, kind, rng)
        if rng.random() < 0.7:
            ax.set_title(_words(rng, 1, 4).capitalize(), fontsize="medium")
        if kind not in ("table", "pie"):
            ax.set_xlabel(_words(rng, 1, 2))
            ax.set_ylabel(_words(rng, 1, 2))
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


# ------------------------------------------------------------------------------------------ PIL-drawn images
def _canvas(size: tuple[int, int], colour: tuple[int, int, int]):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, colour)
    return im, ImageDraw.Draw(im)


def _light(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(225, 256, 3))  # type: ignore[return-value]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def render_text_page(rng: np.random.Generator, size: tuple[int, int] = (320, 400)) -> np.ndarray:
    """A page of text: a heading, paragraphs in one or two columns, sometimes a rule or a boxed note."""
    w, h = size
    im, d = _canvas(size, _light(rng))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    cols = 1 if rng.random() < 0.6 else 2
    margin = int(rng.integers(8, 30))
    fs = int(rng.integers(7, 16))
    y = margin
    d.text((margin, y), _words(rng, 2, 6).title(), fill=ink, font=pick_font(rng, fs * 1.6, bold=True))
    y += int(fs * 2.6)
    col_w = (w - 2 * margin) // cols
    font = pick_font(rng, fs, bold=False)
    for c in range(cols):
        yy = y
        x0 = margin + c * col_w
        while yy < h - margin - fs:
            if rng.random() < 0.08:
                yy += fs  # paragraph break
                continue
            line_w = int(col_w * (rng.uniform(0.4, 0.95) if rng.random() < 0.15 else 0.95))
            text = ""
            while font.getlength(text + " x") < line_w:
                text += " " + str(rng.choice(_WORDS))
            d.text((x0, yy), text.strip(), fill=ink, font=font)
            yy += int(fs * rng.uniform(1.2, 1.6))
    if rng.random() < 0.3:
        d.line((margin, y - fs // 2, w - margin, y - fs // 2), fill=ink, width=1)
    return np.asarray(im)


def _arrow(d, p0: tuple[int, int], p1: tuple[int, int], colour, width: int) -> None:
    d.line((p0, p1), fill=colour, width=width)
    a = np.arctan2(p1[1] - p0[1], p1[0] - p0[0])
    s = 4 + 2 * width
    pts = [p1, (p1[0] - s * np.cos(a - 0.4), p1[1] - s * np.sin(a - 0.4)),
           (p1[0] - s * np.cos(a + 0.4), p1[1] - s * np.sin(a + 0.4))]
    d.polygon([(float(x), float(y)) for x, y in pts], fill=colour)


def render_diagram(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A flow chart / schematic: boxes, ellipses and rounded boxes with labels, joined by arrows."""
    w, h = size
    im, d = _canvas(size, _light(rng) if rng.random() < 0.85 else _colour(rng))
    n = int(rng.integers(3, 9))
    font = pick_font(rng, rng.integers(8, 15))
    centres = []
    for _ in range(n):
        bw, bh = int(rng.integers(w // 8, w // 3)), int(rng.integers(h // 10, h // 4))
        x, y = int(rng.integers(2, max(3, w - bw - 2))), int(rng.integers(2, max(3, h - bh - 2)))
        fill = _colour(rng) if rng.random() < 0.6 else None
        outline = tuple(int(v) for v in rng.integers(0, 120, 3))
        shape = rng.integers(3)
        box = (x, y, x + bw, y + bh)
        if shape == 0:
            d.rectangle(box, fill=fill, outline=outline, width=int(rng.integers(1, 4)))
        elif shape == 1:
            d.ellipse(box, fill=fill, outline=outline, width=int(rng.integers(1, 4)))
        else:
            d.rounded_rectangle(box, radius=int(min(bw, bh) // 4), fill=fill, outline=outline, width=2)
        d.text((x + 4, y + bh // 2 - 6), _words(rng, 1, 2), fill=(0, 0, 0), font=font)
        centres.append((x + bw // 2, y + bh // 2))
    for a, b in zip(centres, centres[1:]):
        if rng.random() < 0.8:
            _arrow(d, a, b, tuple(int(v) for v in rng.integers(0, 100, 3)), int(rng.integers(1, 4)))
    return np.asarray(im)


def render_ui(rng: np.random.Generator, size: tuple[int, int] = (400, 280)) -> np.ndarray:
    """A screenshot-like application window: title bar, sidebar, buttons, text fields, a table, text."""
    w, h = size
    dark = rng.random() < 0.25
    bg = tuple(int(v) for v in (rng.integers(20, 50, 3) if dark else rng.integers(235, 256, 3)))
    ink = (230, 230, 230) if dark else (30, 30, 30)
    im, d = _canvas(size, bg)  # type: ignore[arg-type]
    accent = _colour(rng)
    bar = int(rng.integers(16, 30))
    d.rectangle((0, 0, w, bar), fill=tuple(max(0, c - 40) for c in bg))
    for i in range(3):
        d.ellipse((6 + i * 14, bar // 2 - 4, 14 + i * 14, bar // 2 + 4), fill=[(255, 95, 87), (254, 188, 46),
                                                                              (40, 200, 64)][i])
    font = pick_font(rng, rng.integers(8, 13), bold=False)
    d.text((60, bar // 2 - 6), _words(rng, 2, 4).title(), fill=ink, font=font)
    side = int(rng.integers(0, w // 4)) if rng.random() < 0.7 else 0
    if side:
        d.rectangle((0, bar, side, h), fill=tuple(max(0, c - 15) for c in bg))
        for k in range(int(rng.integers(3, 10))):
            d.text((8, bar + 10 + k * 20), _words(rng, 1, 2), fill=ink, font=font)
    y = bar + 12
    while y < h - 30:
        x = side + 12
        r = rng.random()
        if r < 0.3:  # buttons
            for _ in range(int(rng.integers(1, 4))):
                bw = int(rng.integers(50, 100))
                d.rounded_rectangle((x, y, x + bw, y + 22), radius=5, fill=accent)
                d.text((x + 8, y + 4), _words(rng, 1, 1), fill=(255, 255, 255), font=font)
                x += bw + 10
            y += 34
        elif r < 0.55:  # text field
            d.text((x, y), _words(rng, 1, 2) + ":", fill=ink, font=font)
            d.rectangle((x, y + 15, min(w - 12, x + int(rng.integers(120, 300))), y + 37), outline=(150, 150, 150),
                        fill=(255, 255, 255) if not dark else (60, 60, 60))
            y += 46
        elif r < 0.8:  # table rows
            for _ in range(int(rng.integers(2, 6))):
                d.line((x, y + 18, w - 12, y + 18), fill=(180, 180, 180))
                d.text((x, y + 3), "   ".join(f"{v:.1f}" if i % 2 else str(rng.choice(_WORDS))
                                              for i, v in enumerate(rng.gamma(2, 10, 4))), fill=ink, font=font)
                y += 20
            y += 8
        else:
            d.text((x, y), _words(rng, 4, 10), fill=ink, font=font)
            y += 22
    return np.asarray(im)


def render_grayscale_texture(rng: np.random.Generator, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A grayscale micrograph-like texture (blurred noise and dark or bright blobs, electron- or phase-contrast
    look). A hard case, labelled not brightfield pathology: it has no stain colour."""
    from scipy import ndimage as ndi

    w, h = size
    x = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(1, 6))
    x = (x - x.min()) / (np.ptp(x) + 1e-9)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(5, 60))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 18)
        ell = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.6, 1.6))) ** 2
        x = x + rng.choice([-1, 1]) * rng.uniform(0.2, 0.7) * np.exp(-ell)
    x = ndi.gaussian_filter(x, rng.uniform(0.5, 1.5)) + rng.normal(0, rng.uniform(0.01, 0.06), x.shape)
    x = (x - x.min()) / (np.ptp(x) + 1e-9)
    g = (np.clip(x ** rng.uniform(0.6, 1.6), 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


def render_fluorescence(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fluorescence-looking image made from a real H&E tile: haematoxylin -> blue (DAPI-like) nuclei, eosin ->
    a green or red channel, on black. A pathology-adjacent hard case, labelled not brightfield pathology."""
    from skimage.color import rgb2hed

    hed = rgb2hed(tile[..., :3])
    hh = np.clip(hed[..., 0] / (np.percentile(hed[..., 0], 99.5) + 1e-6), 0, 1)
    ee = np.clip(hed[..., 1] / (np.percentile(hed[..., 1], 99.5) + 1e-6), 0, 1)
    out = np.zeros(tile.shape[:2] + (3,), np.float32)
    out[..., 2] = hh ** rng.uniform(1.0, 2.0)
    out[..., 1 if rng.random() < 0.6 else 0] = rng.uniform(0.3, 1.0) * ee ** rng.uniform(1.5, 3.0)
    if rng.random() < 0.3:  # single channel, pseudo-coloured
        out = out[..., 2:3] * np.array(rng.choice([[0, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]), np.float32)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- package images
@dataclass(frozen=True)
class PackageImage:
    """An image file an installed package ships: ``name`` is its identity for splits, ``kind`` what it shows."""

    name: str
    path: Path
    kind: str  # "photo" | "drawing" | "micrograph" | "ihc" | "medical"

    def load(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        from PIL import Image

        with Image.open(self.path) as im:
            return np.asarray(im.convert("RGB"))


def _pkg_dir(package: str, *parts: str) -> Path | None:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.exists() else None


_SKIMAGE = {
    "astronaut.png": "photo", "brick.png": "photo", "camera.png": "photo", "chelsea.png": "photo",
    "clock_motion.png": "photo", "coffee.png": "photo", "coins.png": "photo", "color.png": "drawing",
    "grass.png": "photo", "gravel.png": "photo", "horse.png": "drawing", "hubble_deep_field.jpg": "photo",
    "logo.png": "drawing", "moon.png": "photo", "motorcycle_left.png": "photo", "page.png": "photo",
    "phantom.png": "medical", "retina.jpg": "medical", "microaneurysms.png": "medical", "rocket.jpg": "photo",
    "text.png": "photo", "chessboard_RGB.png": "drawing", "cell.png": "micrograph", "ihc.png": "ihc",
}


def package_images() -> list[PackageImage]:
    """Images shipped by installed packages (whichever are installed), sorted by name. ``ihc`` is scikit-image's
    immunohistochemistry sample (a pathology image); ``cell`` a phase-contrast micrograph of one cell."""
    found: list[PackageImage] = []
    sk = _pkg_dir("skimage", "data")
    if sk is not None:
        for fname, kind in _SKIMAGE.items():
            if (sk / fname).is_file():
                found.append(PackageImage(f"skimage:{Path(fname).stem}", sk / fname, kind))
    extra = [("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg"), "photo"),
             ("sklearn", ("datasets", "images", "china.jpg"), "photo"),
             ("sklearn", ("datasets", "images", "flower.jpg"), "photo"),
             ("ultralytics", ("assets", "bus.jpg"), "photo"),
             ("ultralytics", ("assets", "zidane.jpg"), "photo")]
    for pkg, parts, kind in extra:
        p = _pkg_dir(pkg, *parts)
        if p is not None:
            found.append(PackageImage(f"{pkg}:{Path(parts[-1]).stem}", p, kind))
    nx = _pkg_dir("networkx", "drawing", "tests", "baseline")
    if nx is not None:
        for p in sorted(nx.glob("*.png")):
            found.append(PackageImage(f"networkx:{p.stem}", p, "drawing"))
    return sorted(found, key=lambda x: x.name)


# ------------------------------------------------------------------------------------------------------ helpers
def random_crop(rgb: np.ndarray, rng: np.random.Generator, min_frac: float = 0.3) -> np.ndarray:
    """A random crop covering ``min_frac``..1 of each side (aspect 0.5-2)."""
    h, w = rgb.shape[:2]
    fh = rng.uniform(min_frac, 1.0)
    fw = float(np.clip(fh * h / w * np.exp(rng.uniform(-0.69, 0.69)), min_frac * 0.5, 1.0))
    ch, cw = max(8, int(h * fh)), max(8, int(w * fw))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return rgb[y0 : y0 + ch, x0 : x0 + cw]


def trim_background(rgb: np.ndarray, tol: int = 12) -> np.ndarray:
    """``rgb`` without its outer rows / columns of the corner colour (the white margin of a rendered chart)."""
    bg = rgb[0, 0].astype(np.int16)
    fg = np.abs(rgb.astype(np.int16) - bg).max(-1) > tol
    ys, xs = np.nonzero(fg.any(1))[0], np.nonzero(fg.any(0))[0]
    if len(ys) == 0 or len(xs) == 0:
        return rgb
    return rgb[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


#: renderers of the non-pathology kinds, each ``(rng, (w, h)) -> (H, W, 3) uint8``
RENDERERS: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "chart": render_chart,
    "text_page": render_text_page,
    "diagram": render_diagram,
    "ui": render_ui,
    "grayscale_texture": render_grayscale_texture,
}
