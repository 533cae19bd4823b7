"""The shared tiler: grid coverage, blended stitching, box merging across tiles (synthetic data, known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from pathasst.core.imaging import ImageData
from pathasst.tools.backends.tiling import (
    Detections,
    Stitcher,
    blend_window,
    dense_tiled,
    detect_tiled,
    merge_boxes,
    tile_grid,
)


@pytest.mark.parametrize("shape", [(1, 1), (50, 70), (128, 128), (129, 300), (1000, 257)])
@pytest.mark.parametrize("tile,overlap", [(128, 0), (128, 32), (64, 63)])
def test_grid_covers_the_image_with_full_tiles_and_the_overlap(shape, tile, overlap) -> None:
    tiles = tile_grid(shape, tile, overlap)
    cover = np.zeros(shape, int)
    for t in tiles:
        assert t.width == min(tile, shape[1]) and t.height == min(tile, shape[0])  # full-size where the image allows
        cover[t.slices] += 1
    assert cover.min() >= 1
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= tile - overlap for a, b in zip(xs, xs[1:]))  # neighbours overlap by >= overlap
    assert [t.index for t in tiles] == list(range(len(tiles)))
    # inner flags: a side is inner exactly when another tile lies beyond it
    for t in tiles:
        assert t.inner_left == (t.x0 > 0) and t.inner_top == (t.y0 > 0)
        assert t.inner_right == (t.x1 < shape[1]) and t.inner_bottom == (t.y1 < shape[0])


def test_grid_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_grid((10, 10), 8, 8)
    with pytest.raises(ValueError, match="empty"):
        tile_grid((0, 10), 8, 2)


def test_blend_window_ramps_only_on_inner_sides() -> None:
    t = tile_grid((100, 300), 100, 20)[1]  # middle tile of one row: inner left and right
    w = blend_window(t, 20)
    assert w.shape == (100, 100) and w.min() > 0 and w.max() == pytest.approx(1.0)
    assert np.allclose(w[:, 50], 1.0)  # no ramp top/bottom (image edges)
    assert w[50, 0] < 0.05 and w[50, -1] < 0.05 and w[50, 20] == pytest.approx(1.0)


def test_stitched_constant_map_equals_the_constant() -> None:
    shape = (301, 257)
    out = dense_tiled(np.zeros((*shape, 3), np.uint8), lambda ts: [np.full((2, *t.shape[:2]), 0.37) for t in ts], 2, 96, 24)
    assert out.shape == (2, *shape) and np.allclose(out, 0.37, atol=1e-6)


def test_stitching_a_position_dependent_map_is_exact() -> None:
    """Each tile predicts the global x coordinate of its pixels: any weighted mean of equal values is that value."""
    shape = (200, 333)
    xs = np.broadcast_to(np.arange(shape[1], dtype=np.float32), shape)
    img = np.zeros((*shape, 3), np.uint8)
    tiles = tile_grid(shape, 64, 16)
    st = Stitcher(shape, 1, ramp=16)
    for t in tiles:
        st.add(t, t.crop(xs)[None])
    assert np.allclose(st.result()[0], xs, atol=1e-3)
    # a per-tile constant (the tile index) blends smoothly: values stay within the range of the tiles covering a pixel
    out = dense_tiled(img, lambda ts: [np.zeros((1, *t.shape[:2])) for t in ts], 1, 64, 16)
    assert np.all(out == 0)


def test_a_float16_stitcher_keeps_half_the_memory_at_float16_precision() -> None:
    """The nuclei network's maps are stitched in float16: blended values within float16 rounding of the float32
    result, half the bytes, and the accumulator is the result (normalised in place, no second copy)."""
    shape = (300, 420)
    rng = np.random.default_rng(3)
    field_ = rng.uniform(-1, 1, (3, *shape)).astype(np.float32)
    tiles = tile_grid(shape, 128, 24)
    values = [field_[:, t.slices[0], t.slices[1]] + rng.normal(0, 0.01, (3, t.height, t.width)) for t in tiles]
    maps = {}
    for dtype in (np.float32, np.float16):
        st = Stitcher(shape, 3, ramp=24, dtype=dtype)
        for t, v in zip(tiles, values, strict=True):
            st.add(t, v)
        acc = st._acc
        maps[dtype] = st.result()
        assert maps[dtype] is acc and maps[dtype].dtype == dtype
    assert maps[np.float16].nbytes * 2 == maps[np.float32].nbytes
    assert np.abs(maps[np.float16].astype(np.float32) - maps[np.float32]).max() < 2e-3
    assert np.abs(maps[np.float32] - field_).max() < 0.05  # and both are the field, not garbage


def test_stitcher_checks_shapes() -> None:
    t = tile_grid((10, 10), 8, 2)[0]
    with pytest.raises(ValueError, match="expected"):
        Stitcher((10, 10), 1, 2).add(t, np.zeros((1, 4, 4)))


# ---- boxes ------------------------------------------------------------------------------------------------------
def _disc_detector(discs: list[tuple[float, float, float]], tiles_xy: dict[int, tuple[int, int]]):
    """A fake detector over tiles: for each disc (cx, cy, r) in image coords, the box of its visible part."""

    def detect(tile_imgs: list[np.ndarray]) -> list[Detections]:
        out = []
        for img in tile_imgs:
            x0, y0 = _corner(img)
            h, w = img.shape[:2]
            boxes, scores = [], []
            for cx, cy, r in discs:
                bx0, by0, bx1, by1 = cx - r - x0, cy - r - y0, cx + r - x0, cy + r - y0
                vx0, vy0, vx1, vy1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
                if vx1 - vx0 > 1 and vy1 - vy0 > 1:
                    boxes.append([vx0, vy0, vx1, vy1])
                    scores.append(0.9 * (vx1 - vx0) * (vy1 - vy0) / (4 * r * r))  # cut boxes score lower
            out.append(Detections(np.array(boxes).reshape(-1, 4), np.array(scores), np.zeros(len(scores), np.int64)))
        return out

    return detect


def _coded_image(shape: tuple[int, int]) -> np.ndarray:
    """Pixels that encode their own coordinates, so a fake detector knows where its tile lies."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, xx // 256 + 16 * (yy // 256)], axis=-1).astype(np.uint8)


def _corner(img: np.ndarray) -> tuple[int, int]:
    """(x0, y0) of a tile of a coded image."""
    c0, c1, c2 = (int(v) for v in img[0, 0])
    return (c2 % 16) * 256 + c0, (c2 // 16) * 256 + c1


def test_boxes_on_tile_borders_merge_to_one_full_box() -> None:
    shape = (300, 400)
    # discs: one in a single tile, one across a vertical border, one across a corner (4 tiles), one near the edge
    discs = [(40.0, 40.0, 15.0), (200.0, 60.0, 20.0), (200.0, 150.0, 18.0), (390.0, 290.0, 8.0)]
    image = ImageData(_coded_image(shape), name="coded", origin=(1000.0, 2000.0), scale=2.0)
    res = detect_tiled(image, _disc_detector(discs, {}), tile=128, overlap=48)
    assert res.n_tiles > 4
    want = sorted((cx - r, cy - r, cx + r, cy + r) for cx, cy, r in discs)
    got = sorted(tuple(round(v, 6) for v in b) for b in res.boxes)
    assert got == want  # exactly one full box per disc, in array coordinates
    lvl0 = sorted(tuple(b) for b in res.boxes_level0)
    assert np.allclose(lvl0, [[1000 + 2 * a, 2000 + 2 * b, 1000 + 2 * c, 2000 + 2 * d] for a, b, c, d in want])


def test_merge_keeps_distinct_objects_and_same_tile_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 0, 1])
    tiles = np.array([0, 0, 1, 1])  # boxes 0 and 1 come from the same tile: never merged here
    merged = merge_boxes(boxes, scores, classes, tiles, np.zeros(4, bool))
    assert len(merged) == 4
    # class-agnostic merging joins box 3 (tile 1, other class) into box 0
    merged = merge_boxes(boxes, scores, classes, tiles, np.zeros(4, bool), class_aware=False)
    assert len(merged) == 3 and merged[0].members == (0, 3)
    # a cut box inside a whole box of another tile is absorbed (intersection over the smaller box), the whole kept
    b = np.array([[100, 100, 120, 140], [100, 100, 140, 140]], float)
    m = merge_boxes(b, np.array([0.95, 0.5]), np.zeros(2, int), np.array([0, 1]), np.array([True, False]))
    assert len(m) == 1 and m[0].box == (100, 100, 140, 140) and m[0].score == 0.95 and m[0].representative == 1


def test_merged_masks_follow_their_boxes() -> None:
    """Masks (as YOLO-seg gives them) are merged with their boxes: one object, its full mask, across the border."""
    shape = (128, 200)
    cx, cy, r = 100.0, 64.0, 20.0
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r

    def detect(tiles: list[np.ndarray]) -> list[Detections]:
        out = []
        for img in tiles:
            x0, _ = _corner(img)
            sub = disc[:, x0 : x0 + img.shape[1]]
            ys, xs = np.nonzero(sub)
            if len(xs) == 0:
                out.append(Detections())
                continue
            b = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            out.append(Detections(np.array([b], float), np.array([0.9]), np.zeros(1, np.int64),
                                  masks=[sub[b[1]:b[3], b[0]:b[2]]], mask_origins=[(int(b[0]), int(b[1]))]))
        return out

    res = detect_tiled(ImageData(_coded_image(shape)), detect, tile=128, overlap=64)
    assert len(res.scores) == 1 and res.masks is not None and res.mask_origins is not None
    full = np.zeros(shape, bool)
    (ox, oy), m = res.mask_origins[0], res.masks[0]
    full[oy : oy + m.shape[0], ox : ox + m.shape[1]] = m
    assert np.array_equal(full, disc)
