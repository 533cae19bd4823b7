"""``h_maxima_by_component``: the seeds of the classical watersheds (and of the nuclei network's domain guard) are
skimage's ``h_maxima``, computed one object at a time. It must give exactly skimage's answer on real nuclei energies
and on the edge cases of the argument in its docstring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import gaussian
from skimage.morphology import h_maxima

from pathasst.tools.nuclei_classical import deconvolution_nuclei, h_maxima_by_component


def _energy(rgb: np.ndarray) -> np.ndarray:
    """The deconvolution method's watershed energy: the smoothed distance transform of its nuclei mask."""
    mask = deconvolution_nuclei(rgb) > 0
    return gaussian(ndi.distance_transform_edt(mask), 1.0)


def _same(image: np.ndarray, h: float) -> int:
    ours, ref = h_maxima_by_component(image, h), h_maxima(image, h).astype(bool)
    assert ours.dtype == bool and ours.shape == image.shape
    assert np.array_equal(ours, ref), (int(ours.sum()), int(ref.sum()), int((ours != ref).sum()))
    return int(ref.sum())


def test_equals_skimage_on_a_real_nuclei_energy() -> None:
    from skimage import data

    energy = _energy(np.asarray(data.immunohistochemistry()))
    n_objects = ndi.label(energy > 0, structure=np.ones((3, 3)))[1]
    assert energy.min() == 0 and n_objects > 50  # many separate objects with exact zeros between them
    for h in (0.5, 1.0, 2.0, 4.0):
        assert _same(energy, h) > 0
    assert _same(energy.astype(np.float32), 1.0) > 0


@pytest.mark.data
def test_equals_skimage_on_consep_tiles(shared_data: Path) -> None:
    from pathasst.finetune.nuclei_pixel import _load_tile, train_tiles

    data = shared_data / "consep_train"
    seeds = 0
    for name in train_tiles(data)[::40]:
        rgb, _ = _load_tile(data, name)
        seeds += _same(_energy(np.ascontiguousarray(rgb[..., :3])), 1.0)
    assert seeds > 100


def test_edge_cases_match_skimage() -> None:
    yy, xx = np.mgrid[:60, :80]

    def bump(y: int, x: int, r: float, height: float) -> np.ndarray:
        return np.clip(height * (1 - np.hypot(yy - y, xx - x) / r), 0, None)

    low_and_high = bump(15, 15, 8, 0.6) + bump(40, 50, 12, 5.0)  # one object below h, one well above
    assert _same(low_and_high, 1.0) > 0 and not h_maxima_by_component(low_and_high, 1.0)[:30, :30].any()
    assert _same(bump(15, 15, 8, 0.6), 1.0) == 0  # nothing reaches h: h exceeds the range
    at_border = bump(0, 0, 15, 4.0) + bump(59, 79, 10, 3.0) + bump(30, 40, 9, 2.5)  # objects cut by the border
    _same(at_border, 1.0)
    twin = np.maximum(bump(30, 30, 12, 4.0), bump(30, 46, 12, 3.6))  # one object, two peaks (split only if deep)
    assert _same(twin, 0.5) == 2
    _same(twin, 3.0)
    no_zeros = twin + 0.25  # a single component covering the image: skimage's computation on the whole image
    _same(no_zeros, 1.0)
    negative = twin - 1.0  # negative values: handed to skimage as a whole
    _same(negative, 1.0)
    integers = (twin * 10).astype(np.uint16)
    assert np.array_equal(h_maxima_by_component(integers, 5), h_maxima(integers, 5).astype(bool))
    assert not h_maxima_by_component(np.zeros((8, 8)), 1.0).any()
    with pytest.raises(ValueError, match="ambiguous"):  # h = 0 goes to skimage, which refuses it
        h_maxima_by_component(twin, 0.0)
