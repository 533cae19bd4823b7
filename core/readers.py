"""Pixel readers: plain images (PNG/JPEG/TIFF patches) and whole slides through OpenSlide.

A whole slide is never read whole at level 0: regions are read from the pyramid level closest to the wanted
resolution, and the pixels of one read are capped by ``Settings.max_region_pixels``. Plain images are checked
against ``Settings.max_image_pixels`` from their header, before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pathasst.core.case_model import (
    Case,
    CaseError,
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    clip,
)
from pathasst.core.errors import ToolCallError, ToolExecutionError
from pathasst.core.imaging import ImageData, as_rgb_uint8, tissue_mask
from pathasst.core.regions import Region
from pathasst.core.settings import Settings

__all__ = ["CaseImageResolver", "SlideReader", "TileSpec", "open_slide", "read_patch", "verify_patch"]


# --- plain images ----------------------------------------------------------------------------------
def read_patch(path: Path, max_pixels: int, mpp: float | None = None, name: str | None = None) -> ImageData:
    """Read a PNG/JPEG/TIFF patch as RGB, refusing images above ``max_pixels`` before decoding them."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in {".tif", ".tiff"}:
        pixels = _read_tiff(path, max_pixels)
    else:
        pixels = _read_pil(path, max_pixels)
    try:
        return ImageData(pixels=pixels, name=name or path.name, mpp=mpp)
    except ValueError as exc:
        raise CorruptImageError(f"{path.name}: {exc}") from exc


def _too_large(path: Path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(
            f"{path.name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels "
            "(PATHASST_MAX_IMAGE_PIXELS)"
        )


def _bomb(path: Path, max_pixels: int | None, exc: Exception) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{path.name}: refused as a decompression bomb before decoding ({exc}); it exceeds the limit of "
        f"{max_pixels} pixels (PATHASST_MAX_IMAGE_PIXELS)"
    )


def _without_location(exc: BaseException, path: Path) -> str:
    """A decoder's message with the file's folder removed (messages reach clients; the location is the server's)."""
    text = str(exc)
    for where in {str(path), str(Path(path).resolve())}:
        text = text.replace(where, path.name)
    return clip(text, 300)


@contextmanager
def _image_errors(path: Path, max_pixels: int | None, tiff: bool = False) -> Iterator[None]:
    """The one place where decoder exceptions become typed ``CaseError``s with a clear reason."""
    import tifffile

    # with a limit set, the header check against it (_too_large, right after opening, before decoding) is the only
    # bomb check: Pillow's own default (89 M pixels) would otherwise refuse images the setting allows
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except CaseError:
        raise
    except (Image.UnidentifiedImageError, ImportError) as exc:
        # ImportError: a library that patches PIL.Image.open (ultralytics) failed to load an optional format plugin
        raise UnsupportedFormatError(f"{path.name}: not a readable image ({_without_location(exc, path)})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(path, max_pixels, exc) from exc
    except (tifffile.TiffFileError, OSError, SyntaxError, ValueError, IndexError) as exc:
        kind = "corrupt TIFF" if tiff else "corrupt or truncated image"
        raise CorruptImageError(f"{path.name}: {kind} ({_without_location(exc, path)})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def verify_patch(path: Path, max_pixels: int | None) -> None:
    """Check a patch's header size against ``max_pixels`` and its data for corruption, without keeping pixels."""
    path = Path(path)
    if path.suffix.lower() in {".tif", ".tiff"}:
        _read_tiff(path, max_pixels)
        return
    with _image_errors(path, max_pixels):
        with Image.open(path) as im:
            _too_large(path, *im.size, max_pixels)
            im.verify()
        with Image.open(path) as im:  # verify() misses truncated pixel data in some formats
            im.load()


def _read_pil(path: Path, max_pixels: int | None) -> np.ndarray:
    with _image_errors(path, max_pixels), Image.open(path) as im:
        _too_large(path, *im.size, max_pixels)
        im.load()
        # one copy at most: an RGB image is viewed as it is (``convert`` would copy it first)
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    import tifffile

    with _image_errors(path, max_pixels, tiff=True), tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _too_large(path, int(page.shape[1]), int(page.shape[0]), max_pixels)
        arr = page.asarray()
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return as_rgb_uint8(arr)


# --- whole slides ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileSpec:
    x: int
    y: int
    width: int
    height: int
    tissue_fraction: float


class SlideReader:
    """A whole slide opened with OpenSlide: size, mpp, thumbnail, regions at a resolution, tissue tiles."""

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise UnsupportedFormatError(f"{self.path.name}: cannot be opened as a whole slide (corrupt file or a format OpenSlide does not read)") from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise CorruptImageError(f"{self.path.name}: corrupt whole-slide file ({exc})") from exc
        props = self._slide.properties
        file_mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp: float | None = float(file_mpp) if file_mpp else mpp
        self.dimensions: tuple[int, int] = self._slide.dimensions
        self.level_downsamples: tuple[float, ...] = tuple(self._slide.level_downsamples)
        self.vendor: str | None = props.get(openslide.PROPERTY_NAME_VENDOR)
        objective = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.objective_power: float | None = float(objective) if objective else None
        self._thumb: tuple[np.ndarray, float] | None = None
        self._errors = (openslide.OpenSlideError, OSError)
        self.last_level: int | None = None  # pyramid level of the last read (for tests and traces)

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        return {
            "dimensions": list(self.dimensions),
            "levels": len(self.level_downsamples),
            "level_downsamples": [round(d, 3) for d in self.level_downsamples],
            "mpp": self.mpp,
            "objective_power": self.objective_power,
            "vendor": self.vendor,
        }

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """RGB thumbnail whose longer side is at most ``max_size``, and its downsample from level 0. The largest
        thumbnail read so far is kept: a smaller one is shrunk from it instead of read from the slide again."""
        want = min(max_size, max(self.dimensions))
        if self._thumb is None or max(self._thumb[0].shape[:2]) < want:
            try:
                im = self._slide.get_thumbnail((max_size, max_size))
            except self._errors as exc:
                raise CorruptImageError(f"{self.path.name}: cannot read thumbnail ({exc})") from exc
            arr = as_rgb_uint8(np.asarray(im.convert("RGB")))
            self._thumb = (arr, self.dimensions[0] / arr.shape[1])
        arr = self._thumb[0]
        if max(arr.shape[:2]) > want:
            im = Image.fromarray(arr)
            im.thumbnail((want, want), Image.Resampling.BOX)
            arr = np.asarray(im)
        return arr, self.dimensions[0] / arr.shape[1]

    def read_region(self, region: Region, downsample: float, max_pixels: int) -> ImageData:
        """Read ``region`` (level 0) at ``downsample`` (>= 1) from the best pyramid level, capped at ``max_pixels``."""
        W, H = self.dimensions
        x0, y0 = max(0, region.x), max(0, region.y)
        x1, y1 = min(W, region.x + region.width), min(H, region.y + region.height)
        if x1 <= x0 or y1 <= y0:
            raise ToolCallError(f"region {region.model_dump()} lies outside the slide ({W}x{H})")
        downsample = max(1.0, downsample)
        out_w, out_h = (x1 - x0) / downsample, (y1 - y0) / downsample
        if out_w * out_h > max_pixels:  # never exceed the pixel budget: read coarser instead
            downsample *= math.sqrt(out_w * out_h / max_pixels)
            out_w, out_h = (x1 - x0) / downsample, (y1 - y0) / downsample
        out_w, out_h = max(1, round(out_w)), max(1, round(out_h))
        level = self._slide.get_best_level_for_downsample(downsample)
        self.last_level = level
        ds = self.level_downsamples[level]
        lw, lh = math.ceil((x1 - x0) / ds), math.ceil((y1 - y0) / ds)
        try:
            im = self._slide.read_region((x0, y0), level, (lw, lh)).convert("RGBA")
        except self._errors as exc:
            raise CorruptImageError(f"{self.path.name}: cannot read region ({exc})") from exc
        # composite transparent (outside scanned area) pixels on white
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(bg, im).convert("RGB")
        if rgb.size != (out_w, out_h):
            rgb = rgb.resize((out_w, out_h), Image.Resampling.LANCZOS)
        scale = (x1 - x0) / out_w
        return ImageData(
            pixels=np.asarray(rgb),
            name=self.path.name,
            mpp=self.mpp * scale if self.mpp else None,
            origin=(float(x0), float(y0)),
            scale=float(scale),
        )

    def tissue_tiles(
        self, tile_size: int, min_tissue: float = 0.5, thumb_size: int = 1024
    ) -> Iterator[TileSpec]:
        """Level-0 tiles of ``tile_size`` whose tissue fraction (from the thumbnail mask) is >= ``min_tissue``."""
        thumb, ds = self.thumbnail(thumb_size)
        mask = tissue_mask(thumb)
        W, H = self.dimensions
        for y in range(0, H, tile_size):
            for x in range(0, W, tile_size):
                tx0, ty0 = int(x / ds), int(y / ds)
                tx1, ty1 = max(tx0 + 1, int((x + tile_size) / ds)), max(ty0 + 1, int((y + tile_size) / ds))
                frac = float(mask[ty0:ty1, tx0:tx1].mean()) if mask[ty0:ty1, tx0:tx1].size else 0.0
                if frac >= min_tissue:
                    yield TileSpec(x, y, min(tile_size, W - x), min(tile_size, H - y), frac)

    def best_window(self, width: int, height: int, within: Region | None = None) -> Region:
        """The level-0 window of the given size holding the most tissue (for analysing part of a big slide), inside
        ``within`` when given."""
        W, H = self.dimensions
        area = within or Region(x=0, y=0, width=W, height=H)
        x0, y0 = min(area.x, W - 1), min(area.y, H - 1)
        aw, ah = min(area.width, W - x0), min(area.height, H - y0)
        width, height = min(width, aw), min(height, ah)
        thumb, ds = self.thumbnail(1024)
        mask = tissue_mask(thumb)[int(y0 / ds) : max(int(y0 / ds) + 1, int((y0 + ah) / ds)),
                                  int(x0 / ds) : max(int(x0 / ds) + 1, int((x0 + aw) / ds))]
        x, y = tissue_window(mask, ds, (aw, ah), (width, height))
        return Region(x=x0 + x, y=y0 + y, width=width, height=height)


def tissue_window(mask: np.ndarray, ds: float, size: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """Top-left (x, y), in full-resolution pixels, of the ``window`` (w, h) holding the most tissue of an image of
    ``size`` (w, h), from its tissue ``mask`` at 1/``ds`` resolution."""
    (W, H), (width, height) = size, window
    ww, wh = min(mask.shape[1], max(1, int(width / ds))), min(mask.shape[0], max(1, int(height / ds)))
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[wh:, ww:] - integral[:-wh, ww:] - integral[wh:, :-ww] + integral[:-wh, :-ww]
    iy, ix = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return max(0, min(int(ix * ds), W - width)), max(0, min(int(iy * ds), H - height))


def open_slide(path: Path, mpp: float | None = None) -> SlideReader:
    return SlideReader(path, mpp=mpp)


# --- the resolver tools use -------------------------------------------------------------------------
class CaseImageResolver:
    """Turns a tool's ``image`` / ``region`` arguments into pixels for one case (implements ``ImageResolver``).

    Plain images are read once and cropped per region. Slides are read at the tool's working resolution; when the
    whole tissue area does not fit the pixel budget, the window with the most tissue is analysed and a note says so.
    """

    #: pixel budget for slide reads by tools with no working resolution (thumbnail-level analysis)
    THUMB_PIXELS = 2048 * 2048

    def __init__(self, case: Case, settings: Settings) -> None:
        self.case = case
        self.settings = settings
        self._patches: dict[str, ImageData] = {}
        self._slides: dict[str, SlideReader] = {}

    def close(self) -> None:
        for s in self._slides.values():
            s.close()
        self._slides.clear()

    def names(self) -> list[str]:
        return [i.name for i in self.case.images]

    def _mpp(self) -> float | None:
        return self.case.meta.mpp or self.settings.default_mpp

    def slide(self, name: str) -> SlideReader:
        if name not in self._slides:
            self._slides[name] = SlideReader(self.case.image(name).path, mpp=self._mpp())
        return self._slides[name]

    def patch(self, name: str) -> ImageData:
        """The decoded image, kept for the next call only when it fits the analysis budget (a larger one is decoded
        per call and only its analysed part outlives the call: a 9400 px PNG held for the case costs 265 MB)."""
        if name in self._patches:
            return self._patches[name]
        data = read_patch(self.case.image(name).path, self.settings.max_image_pixels, mpp=self._mpp(), name=name)
        if data.shape[0] * data.shape[1] <= self.settings.max_region_pixels:
            self._patches[name] = data
        return data

    def __call__(self, name: str, region: Region | None, working_mpp: float | None) -> ImageData:
        if name not in self.names():
            raise ToolCallError(f"unknown image {clip(repr(name))}; this case has: {clip(', '.join(self.names()), 400)}")
        try:
            img = self.case.image(name)
            if img.kind == "patch":
                return self._within_budget(self._crop(self.patch(name), region), working_mpp)
            return self._slide_pixels(name, region, working_mpp)
        except CaseError as exc:
            raise ToolExecutionError(f"cannot read {name}: {exc}") from exc

    @staticmethod
    def _crop(image: ImageData, region: Region | None) -> ImageData:
        if region is None:
            return image
        h, w = image.shape
        x0, y0 = min(region.x, w), min(region.y, h)
        x1, y1 = min(region.x + region.width, w), min(region.y + region.height, h)
        if x1 <= x0 or y1 <= y0:
            raise ToolCallError(f"region {region.model_dump()} lies outside the image ({w}x{h})")
        return ImageData(
            pixels=image.pixels[y0:y1, x0:x1], name=image.name, mpp=image.mpp, origin=(float(x0), float(y0))
        )

    def _within_budget(self, image: ImageData, working_mpp: float | None) -> ImageData:
        """A plain image (or region of one) over the pixel budget, bounded the way slides are: tools with a working
        resolution get the window of the budget's size with the most tissue at full resolution; tools without one
        (thumbnail-level analysis) get the whole image downsampled to ``THUMB_PIXELS``. A note says which."""
        h, w = image.shape
        budget = self.settings.max_region_pixels
        if working_mpp is None:
            budget = min(budget, self.THUMB_PIXELS)
            if h * w <= budget:
                return image
            ds = math.sqrt(h * w / budget)
            out_w, out_h = max(1, int(w / ds)), max(1, int(h / ds))
            small = np.asarray(Image.fromarray(image.pixels).resize((out_w, out_h), Image.Resampling.BOX))
            scale = w / out_w
            return ImageData(pixels=small, name=image.name, mpp=image.mpp * scale if image.mpp else None,
                             origin=image.origin, scale=image.scale * scale, notes=[
                                 *image.notes, f"image larger than the analysis budget ({w}x{h}): analysed at "
                                 f"1/{scale:.2f} of its resolution (PATHASST_MAX_REGION_PIXELS)"])
        ds = working_mpp / image.mpp if image.mpp else 1.0  # < 1: the tool enlarges it; the budget holds after that
        if (w / ds) * (h / ds) <= budget:
            return image
        side, allowed = int(math.sqrt(budget) * ds), budget * ds * ds  # source pixels one call may analyse
        ww, wh = min(w, side), min(h, side)
        if ww < side:  # a narrow image: a taller window
            wh = min(h, int(allowed // ww))
        elif wh < side:
            ww = min(w, int(allowed // wh))
        step = max(1, max(h, w) // 1024)
        x, y = tissue_window(tissue_mask(image.pixels[::step, ::step]), step, (w, h), (ww, wh))
        return ImageData(pixels=image.pixels[y : y + wh, x : x + ww], name=image.name, mpp=image.mpp,
                         origin=(image.origin[0] + x * image.scale, image.origin[1] + y * image.scale),
                         scale=image.scale, notes=[
                             *image.notes, f"image larger than the analysis budget ({w}x{h}): analysed the {ww}x{wh} "
                             f"window at ({x}, {y}) with the most tissue (PATHASST_MAX_REGION_PIXELS)"])

    def _slide_pixels(self, name: str, region: Region | None, working_mpp: float | None) -> ImageData:
        slide = self.slide(name)
        W, H = slide.dimensions
        budget = self.settings.max_region_pixels
        if working_mpp is None or slide.mpp is None:
            # thumbnail-level analysis of the region (or whole slide)
            reg = region or Region(x=0, y=0, width=W, height=H)
            ds = max(1.0, math.sqrt(reg.width * reg.height / min(budget, self.THUMB_PIXELS)))
            data = slide.read_region(reg, ds, budget)
            data.slide = slide
            return data
        ds = max(1.0, working_mpp / slide.mpp)
        # the budget holds at the working resolution: a 20x slide read for a 40x tool is enlarged 2x by the tool
        work_ds = working_mpp / slide.mpp
        notes: list[str] = []
        whole = region or Region(x=0, y=0, width=W, height=H)
        if (whole.width / work_ds) * (whole.height / work_ds) <= budget:
            region = whole
        else:
            side = int(math.sqrt(budget) * work_ds)
            region = slide.best_window(side, side, within=whole)
            what = "slide" if whole.width == W and whole.height == H else "region"
            notes.append(
                f"{what} larger than the analysis budget: analysed the {region.width}x{region.height} level-0 "
                f"window at ({region.x}, {region.y}) with the most tissue"
            )
        data = slide.read_region(region, ds, int(budget * min(1.0, work_ds) ** 2))
        data.notes.extend(notes)
        data.slide = slide
        return data
