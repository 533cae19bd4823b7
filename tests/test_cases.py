"""Case folders and image readers: formats, metadata, and every kind of bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathasst.core.cases import (
    CaseError,
    EmptyCaseError,
    InvalidCaseFileError,
    PathEscapeError,
    UnsupportedFormatError,
    discover_cases,
    load_case,
    single_image_case,
)
from pathasst.core.errors import ToolCallError, ToolExecutionError
from pathasst.core.readers import CaseImageResolver, SlideReader, read_patch
from pathasst.core.regions import Region


def _png(path: Path, size=(64, 48), value=128) -> Path:
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    arr[::4, ::4] = 30
    Image.fromarray(arr).save(path)
    return path


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_case_yaml_and_images(tmp_path, settings):
    c = tmp_path / "cases" / "c1"
    c.mkdir(parents=True)
    _png(c / "a.png")
    (c / "sub").mkdir()
    _png(c / "sub" / "b.jpg")
    (c / "case.yaml").write_text("stain: Ki-67\norgan: breast\nmpp: 0.25\nquestion: Ki-67 index?\nblock: A1\n")
    (c / "notes.docx").write_bytes(b"x")
    case = load_case(c, tmp_path / "cases", settings)
    assert [i.name for i in case.images] == ["a.png", "sub/b.jpg"]
    assert {i.kind for i in case.images} == {"patch"}
    assert case.meta.stain == "Ki-67" and case.meta.mpp == 0.25 and case.meta.organ == "breast"
    assert case.meta.extra == {"block": "A1"}
    assert case.ignored == ["notes.docx"]
    assert case.problems == []


def test_invalid_case_yaml(tmp_path, settings):
    c = tmp_path / "c"
    c.mkdir()
    _png(c / "a.png")
    (c / "case.yaml").write_text("stain: [unclosed\n")
    with pytest.raises(InvalidCaseFileError, match="not valid YAML"):
        load_case(c, tmp_path, settings)
    (c / "case.yaml").write_text("mpp: -1\n")
    with pytest.raises(InvalidCaseFileError, match="mpp"):
        load_case(c, tmp_path, settings)


def test_case_yaml_linking_outside_is_refused_unread_and_errors_quote_no_content(tmp_path, settings):
    """Issue 25: a case.yaml that is a symlink to a file elsewhere is not read, and no message quotes file text."""
    secret = tmp_path / "secret.txt"
    secret.write_text("password: hunter2\n[unclosed\n")
    root = tmp_path / "cases"
    c = root / "c"
    c.mkdir(parents=True)
    _png(c / "a.png")
    (c / "case.yaml").symlink_to(secret)
    with pytest.raises(InvalidCaseFileError) as err:
        load_case(c, root, settings)
    assert str(err.value) == "c/case.yaml: links outside its case folder; not read"
    (c / "case.yaml").unlink()
    (c / "case.yaml").write_text("stain: H&E\nnotes: the secret word is hunter2\n  bad: [indent\n")
    with pytest.raises(InvalidCaseFileError) as err:
        load_case(c, root, settings)
    assert str(err.value).startswith("c/case.yaml: not valid YAML at line") and "hunter2" not in str(err.value)


def test_corrupt_and_bomb_and_unknown_are_reported_not_fatal(tmp_path, settings):
    c = tmp_path / "c"
    c.mkdir()
    _png(c / "good.png")
    data = _png(c / "tmp.png", size=(200, 200)).read_bytes()
    (c / "tmp.png").unlink()
    (c / "truncated.png").write_bytes(data[: len(data) // 2])
    (c / "garbage.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    _bomb_png(c / "bomb.png", 100_000, 100_000)
    (c / "empty.png").write_bytes(b"")
    case = load_case(c, tmp_path, settings)
    assert [i.name for i in case.images] == ["good.png"]
    codes = {p.name: p.code for p in case.problems}
    assert codes == {
        "truncated.png": "corrupt_image",
        "garbage.jpg": "unsupported_format",
        "bomb.png": "image_too_large",
        "empty.png": "corrupt_image",
    }
    bomb = next(p for p in case.problems if p.name == "bomb.png")
    assert "10000000000 pixels" in bomb.message and "exceeds the limit of" in bomb.message
    assert "PATHASST_MAX_IMAGE_PIXELS" in bomb.message


def test_pixel_limit_from_settings(tmp_path, settings):
    c = tmp_path / "c"
    c.mkdir()
    _png(c / "a.png", size=(300, 300))
    _png(c / "b.png", size=(20, 20))
    small = settings.model_copy(update={"max_image_pixels": 10_000})
    case = load_case(c, tmp_path, small)
    assert [i.name for i in case.images] == ["b.png"]
    assert case.problems[0].code == "image_too_large"
    assert "300x300 = 90000 pixels exceeds the limit of 10000 pixels" in case.problems[0].message


def test_raising_the_pixel_limit_setting_raises_pillows_limit_too(tmp_path, settings):
    """Issue 25: a 100 M-pixel header (over Pillow's default 89 M, under a 150 M setting) is not refused as a bomb;
    it is read (and here found truncated), so the setting the message names is the one that decides."""
    c = tmp_path / "c"
    c.mkdir()
    _png(c / "good.png")
    _bomb_png(c / "big.png", 10_000, 10_000)
    case = load_case(c, tmp_path, settings.model_copy(update={"max_image_pixels": 150_000_000}))
    (problem,) = case.problems
    assert problem.code == "corrupt_image" and "decompression bomb" not in problem.message
    case = load_case(c, tmp_path, settings.model_copy(update={"max_image_pixels": 50_000_000}))
    (problem,) = case.problems
    assert problem.code == "image_too_large" and "limit of 50000000 pixels (PATHASST_MAX_IMAGE_PIXELS)" in problem.message


def test_empty_case(tmp_path, settings):
    c = tmp_path / "c"
    c.mkdir()
    (c / "readme.txt").write_text("nothing")
    with pytest.raises(EmptyCaseError, match="no usable images"):
        load_case(c, tmp_path, settings)
    (c / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(EmptyCaseError, match="broken.png"):
        load_case(c, tmp_path, settings)


def test_symlinks_escaping_the_root(tmp_path, settings):
    outside = tmp_path / "outside"
    outside.mkdir()
    _png(outside / "secret.png")
    root = tmp_path / "cases"
    c = root / "c"
    c.mkdir(parents=True)
    _png(c / "ok.png")
    (c / "link.png").symlink_to(outside / "secret.png")
    case = load_case(c, root, settings)
    assert [i.name for i in case.images] == ["ok.png"]
    assert case.problems[0].code == "path_escape" and "outside the cases root" in case.problems[0].message
    (root / "evil").symlink_to(outside)
    with pytest.raises(PathEscapeError):
        load_case(root / "evil", root, settings)
    with pytest.raises(PathEscapeError):
        load_case(root / ".." / "outside", root, settings)


def test_discover_cases(tmp_path):
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.png").write_bytes(b"")
    assert [p.name for p in discover_cases(tmp_path)] == ["a", "b"]
    with pytest.raises(CaseError, match="not found"):
        discover_cases(tmp_path / "missing")


def test_single_image_case_unsupported(tmp_path, settings):
    f = tmp_path / "x.docx"
    f.write_bytes(b"x")
    with pytest.raises(UnsupportedFormatError, match="supported:"):
        single_image_case(f, settings=settings)


def test_broken_slide_is_reported(tmp_path, settings, shared_data):
    c = tmp_path / "c"
    c.mkdir()
    (c / "broken.svs").symlink_to(shared_data / "slides" / "broken.svs")
    _png(c / "ok.png")
    case = load_case(c, tmp_path, settings.model_copy(update={"cases_root": None}))
    # the symlink points outside tmp_path: copy instead to test the slide check itself
    (c / "broken.svs").unlink()
    (c / "broken.svs").write_bytes((shared_data / "slides" / "broken.svs").read_bytes())
    case = load_case(c, tmp_path, settings)
    prob = {p.name: p for p in case.problems}["broken.svs"]
    assert prob.code == "unsupported_format" and "cannot be opened as a whole slide" in prob.message
    assert [i.name for i in case.images] == ["ok.png"]


def test_slide_reader_regions_never_whole_level0(shared_data):
    path = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    with SlideReader(path) as s:
        W, H = s.dimensions
        assert (W, H) == (4443, 3567) and len(s.level_downsamples) == 2
        whole = Region(x=0, y=0, width=W, height=H)
        img = s.read_region(whole, downsample=4.0, max_pixels=2_000_000)
        assert img.pixels.shape[0] * img.pixels.shape[1] <= 2_000_000
        assert img.scale == pytest.approx(4.0, rel=1e-3) and img.origin == (0.0, 0.0)
        assert s.last_level == 1  # read from the downsampled level, not level 0
        tiny = s.read_region(whole, downsample=1.0, max_pixels=100_000)  # asks level 0, budget forces coarser
        assert tiny.pixels.shape[0] * tiny.pixels.shape[1] <= 101_000
        assert s.last_level == 1
        tiles = list(s.tissue_tiles(512, min_tissue=0.5))
        assert 0 < len(tiles) < (W // 512 + 1) * (H // 512 + 1)
        assert all(t.tissue_fraction >= 0.5 for t in tiles)
        win = s.best_window(1024, 1024)
        assert win.width == 1024 and 0 <= win.x <= W - 1024 and 0 <= win.y <= H - 1024


def test_a_smaller_thumbnail_is_shrunk_from_the_one_read_not_read_again(shared_data, monkeypatch):
    with SlideReader(shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs") as s:
        big, ds_big = s.thumbnail(2048)
        assert max(big.shape[:2]) == 2048 and ds_big == pytest.approx(4443 / big.shape[1])

        def no_read(*_a, **_k):
            raise AssertionError("the slide was read again")

        monkeypatch.setattr(s._slide, "get_thumbnail", no_read)
        small, ds_small = s.thumbnail(1024)
        assert max(small.shape[:2]) == 1024 and ds_small == pytest.approx(4443 / small.shape[1])
        assert abs(small.mean() - big.mean()) < 2  # the same picture, shrunk
        with pytest.raises(AssertionError, match="read again"):
            s.thumbnail(4096)  # larger than any read so far: read from the slide


def test_slide_mpp_and_resolver(tmp_path, settings, shared_data):
    c = tmp_path / "c"
    c.mkdir()
    (c / "slide.svs").write_bytes((shared_data / "slides" / "cmu-1-small-region.svs").read_bytes())
    _png(c / "p.png", size=(100, 80))
    case = load_case(c, tmp_path, settings)
    assert {i.name: i.kind for i in case.images} == {"p.png": "patch", "slide.svs": "wsi"}
    r = CaseImageResolver(case, settings.model_copy(update={"max_region_pixels": 1_000_000}))
    try:
        with pytest.raises(ToolCallError, match="this case has: p.png, slide.svs"):
            r("nope.png", None, None)
        img = r("slide.svs", None, 1.0)  # 0.499 mpp slide read at ~1 mpp, too big for the budget -> best window
        assert abs(img.mpp - 1.0) < 0.05
        assert img.pixels.shape[0] * img.pixels.shape[1] <= 1_000_000
        assert img.notes and "window" in img.notes[0]
        crop = r("p.png", Region(x=10, y=20, width=30, height=40), None)
        assert crop.shape == (40, 30) and crop.origin == (10.0, 20.0)
        with pytest.raises(ToolCallError, match="outside the image"):
            r("p.png", Region(x=500, y=500, width=10, height=10), None)
    finally:
        r.close()


def test_resolver_turns_read_errors_into_tool_errors(tmp_path, settings):
    c = tmp_path / "c"
    c.mkdir()
    _png(c / "a.png")
    case = load_case(c, tmp_path, settings)
    (c / "a.png").write_bytes(b"corrupted after loading")
    with pytest.raises(ToolExecutionError, match="cannot read a.png"):
        CaseImageResolver(case, settings)("a.png", None, None)


def test_read_patch_tiff_and_grey(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "g.tif", np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)
    img = read_patch(tmp_path / "g.tif", 1000)
    assert img.pixels.shape == (10, 10, 3) and img.pixels.dtype == np.uint8
