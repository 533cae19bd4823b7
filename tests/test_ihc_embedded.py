"""The embedded Ki-67 reading: one nucleus detector shared with nuclei_segmentation, stain-strength independence,
compartment awareness, and typed answers for images it cannot read (issue 24)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tool_helpers import make_resolver

from pathasst.core.imaging import ImageData
from pathasst.tools.base import call_tool
from pathasst.tools.evaluate import ihc_ground_truth
from pathasst.tools.evaluate_ihc import scale_stains
from pathasst.tools.ihc_quantification import IHCQuantificationInput, IHCQuantificationTool
from pathasst.tools.nuclei_segmentation import NucleiSegmentationInput, NucleiSegmentationTool


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _ki67(settings: Any, rgb: np.ndarray, mpp: float | None = 0.25, **args: Any):
    tool = IHCQuantificationTool(settings)
    return tool.analyze(ImageData(rgb, name="k.png", mpp=mpp), IHCQuantificationInput(image="k.png", **args))


@pytest.mark.data
def test_nuclei_segmentation_and_ihc_quantification_find_the_same_nuclei(settings: Any, shared_data: Path) -> None:
    rgb = _rgb(shared_data / "deepliif_ki67" / "Bladder1_ihc.png")
    nuc = NucleiSegmentationTool(settings).analyze(ImageData(rgb, name="b", mpp=0.25),
                                                   NucleiSegmentationInput(image="b"))
    ihc = _ki67(settings, rgb)
    assert nuc.output.method == "nuclei_net"  # the network on the normalised nuclear stain, not deconvolution
    assert nuc.output.count == ihc.output.total_cells > 100
    assert np.array_equal(nuc.labels > 0, ihc.labels > 0)
    true_xy, _ = ihc_ground_truth(_rgb(shared_data / "deepliif_ki67" / "Bladder1_groundtruth.png"))
    assert abs(ihc.output.total_cells - len(true_xy)) < 0.2 * len(true_xy)  # 184 annotated nuclei


@pytest.mark.data
def test_20x_network_reads_ihc_and_a_configured_network_gets_the_pseudo_he_too(settings: Any,
                                                                              shared_data: Path) -> None:
    """IHC nuclei come from the 20x network at 0.5 um/px; a configured nuclei network reads the same pseudo-H&E (it
    used to get the raw immunostain and found 6 of 137 nuclei on 22_2)."""
    from pathasst.tools.backends.nuclei_net import SLIDE_NET_WEIGHTS

    rgb = _rgb(shared_data / "deepliif_ki67" / "22_2_ihc.png")
    true_xy, true_pos = ihc_ground_truth(_rgb(shared_data / "deepliif_ki67" / "22_2_groundtruth.png"))
    image = ImageData(rgb, name="k.png", mpp=0.25)
    default = IHCQuantificationTool(settings).analyze(image, IHCQuantificationInput(image="k.png"))
    assert any("nuclei_net_20x.pt" in n for n in image.notes)
    configured = _ki67(settings.model_copy(update={"nuclei_weights": SLIDE_NET_WEIGHTS}), rgb)
    for out in (default.output, configured.output):
        assert abs(out.total_cells - len(true_xy)) < 0.15 * len(true_xy)  # 137 annotated nuclei
        assert abs(out.positivity_index - 100 * true_pos.mean()) < 3  # 7.3 %
    assert configured.output.total_cells == default.output.total_cells


@pytest.mark.data
@pytest.mark.parametrize("h,d", [(0.3, 1.0), (1.0, 0.5)], ids=["pale-counterstain", "weak-DAB"])
def test_pale_counterstain_and_weak_dab_keep_the_nuclei_and_the_index(settings: Any, shared_data: Path, h: float,
                                                                     d: float) -> None:
    """The failure the issue reported: a pale counterstain lost most negative nuclei and the index jumped."""
    rgb = _rgb(shared_data / "deepliif_ki67" / "22_2_ihc.png")
    base = _ki67(settings, rgb).output
    pert = _ki67(settings, scale_stains(rgb, h, d)).output
    assert abs(pert.total_cells - base.total_cells) <= 0.05 * base.total_cells
    assert pert.negative_cells >= 0.9 * base.negative_cells
    assert abs(pert.positivity_index - base.positivity_index) <= 3.0


def test_membranous_dab_is_flagged_not_counted_as_ki67(settings: Any) -> None:
    from skimage import data

    rgb = data.immunohistochemistry()  # DAB in membranes and cytoplasm, blue nuclei between
    ki = _ki67(settings, rgb, mpp=None).output
    assert ki.positivity_index is None and ki.in_domain is False
    assert "membranous or cytoplasmic" in ki.warnings[0] and "index withheld" in ki.warnings[0]
    pdl1 = _ki67(settings, rgb, mpp=None, mode="pdl1").output  # a membrane marker keeps its reading
    assert pdl1.tps is not None and pdl1.in_domain is True and not pdl1.warnings


@pytest.mark.data
def test_he_image_sent_as_ki67_gets_no_index(settings: Any, shared_data: Path) -> None:
    rgb = _rgb(shared_data / "tiles" / "he_tile_240.png")
    out = _ki67(settings, rgb).output
    assert out.positivity_index is None and "looks like H&E" in out.warnings[0]
    assert "WARNING" in IHCQuantificationTool(settings).summarize(out)


@pytest.mark.data
def test_image_without_dab_gets_no_index(settings: Any, shared_data: Path) -> None:
    rgb = scale_stains(_rgb(shared_data / "deepliif_ki67" / "22_2_ihc.png"), d=0.0)
    out = _ki67(settings, rgb).output
    assert out.positivity_index is None and out.warnings[0].startswith("no DAB staining found")


def test_all_brown_image_gets_no_index(settings: Any) -> None:
    rng = np.random.default_rng(0)
    rgb = np.clip(np.array([150, 95, 60]) + rng.normal(0, 6, (256, 256, 3)), 0, 255).astype(np.uint8)
    out = _ki67(settings, rgb).output
    assert out.positivity_index is None and "DAB covers" in out.warnings[0]


def test_tiny_image_is_a_clear_error(settings: Any) -> None:
    image = ImageData(np.full((20, 20, 3), 200, np.uint8), name="t.png", mpp=0.25)
    record, result = call_tool(IHCQuantificationTool(settings), {"image": "t.png"}, make_resolver({"t.png": image}))
    assert record.status == "failed" and result is None
    assert "at least 32 px" in record.error


@pytest.mark.data
def test_overlay_has_a_legend_and_geojson_classes(settings: Any, shared_data: Path) -> None:
    res = _ki67(settings, _rgb(shared_data / "deepliif_ki67" / "34_3_ihc.png"))
    out = res.output
    names = [f["properties"]["classification"]["name"] for f in res.features]
    assert names.count("Positive") == out.positive_cells and names.count("Negative") == out.negative_cells
    assert all("DAB fraction" in f["properties"]["measurements"] for f in res.features)
    # the legend box is drawn at the top-left: dark pixels there that the plain outline overlay does not have
    assert res.overlay.shape == (512, 512, 3) and (res.overlay[5:40, 5:120].mean(-1) < 40).mean() > 0.3


@pytest.mark.data
def test_hot_spot_on_a_large_region_lies_in_the_most_positive_part(settings: Any, shared_data: Path) -> None:
    """A 1024 px region of four Ki-67 fields (true indices 7, 21, 8, 18 %): the hot spot of 100 nuclei is in the
    21 % field, above the global index, and drawn as a GeoJSON annotation."""
    d = shared_data / "deepliif_ki67"
    q = {n: _rgb(d / f"{n}_ihc.png") for n in ("22_2", "34_3", "Bladder1", "Lung1")}
    rgb = np.concatenate([np.concatenate([q["22_2"], q["34_3"]], 1), np.concatenate([q["Bladder1"], q["Lung1"]], 1)])
    image = ImageData(rgb, name="r.png", mpp=0.25, origin=(1000.0, 2000.0))
    res = IHCQuantificationTool(settings).analyze(image, IHCQuantificationInput(image="r.png", hotspot_nuclei=100))
    out = res.output
    assert out.total_cells > 400 and out.hotspot_index is not None and out.hotspot_index > out.positivity_index
    r = out.hotspot_region
    cx, cy = r.x + r.width / 2 - 1000, r.y + r.height / 2 - 2000  # back to region pixels
    assert cx >= 512 and cy < 512, r  # the top-right field, 34_3
    (spot,) = [f for f in res.features if f["properties"]["classification"]["name"] == "Hot spot"]
    assert spot["properties"]["measurements"]["Nuclei"] == 100
    assert "hot spot" in IHCQuantificationTool(settings).summarize(out)
    small = IHCQuantificationTool(settings).analyze(ImageData(q["22_2"], name="s.png", mpp=0.25),
                                                    IHCQuantificationInput(image="s.png")).output
    assert small.hotspot_index is None and small.total_cells < 500  # fewer than 500 nuclei: no hot spot
