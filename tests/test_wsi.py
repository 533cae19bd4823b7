"""Whole-slide nuclei runs (pathasst.tools.wsi): the tile plan, ownership at seams, the on-disk store, resume after
a crash or a kill, slide-level figures, and the CLI.

Most tests run on a synthetic tiled TIFF (read by OpenSlide as a generic-tiff slide) whose nuclei are dark disks at
known places, segmented by a threshold: the expected answer is exact. The real networks run in the CLI tests.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pathasst.core.readers import SlideReader
from pathasst.tools.backends.nuclei_net import NucleiPrediction
from pathasst.tools.geojson import read_features
from pathasst.tools.wsi.density import density_grid, hot_spot
from pathasst.tools.wsi.plan import plan_slide
from pathasst.tools.wsi.run import SlideNucleiRun
from pathasst.tools.wsi.store import NucleiStore, StoreMismatchError

CLI_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1"}


@pytest.fixture(scope="module")
def slides(shared_data: Path) -> Path:
    """The real slides of ``../shared/data/slides`` (the tests using them skip when the shared data is absent)."""
    return shared_data / "slides"


# ---- a synthetic slide with known nuclei ---------------------------------------------------------------------------
def _disk_centres(width: int, height: int, tissue: tuple[int, int, int, int], rng: np.random.Generator,
                  seam: int) -> np.ndarray:
    """Disk centres on a jittered 24 px grid inside ``tissue``, plus disks centred exactly on the seams of a ``seam``
    px tile grid and on their crossings (the cases a tiler double-counts or loses)."""
    x0, y0, x1, y1 = tissue
    pts = [(x + rng.uniform(-3, 3), y + rng.uniform(-3, 3))
           for y in range(y0 + 16, y1 - 16, 24) for x in range(x0 + 16, x1 - 16, 24)]
    pts = [p for p in pts if all(abs(p[k] % seam - seam / 2) < seam / 2 - 14 for k in (0, 1))]  # keep seams free
    for s in range(seam, min(x1, y1), seam):
        for t in range(y0 + 40, y1 - 40, 60):
            if x0 + 20 < s < x1 - 20:
                pts.append((s - 0.5, t))  # on a vertical seam (between pixels s-1 and s)
            if y0 + 20 < s < y1 - 20:
                pts.append((t + 7, s - 0.5))
        if x0 + 20 < s < x1 - 20 and y0 + 20 < s < y1 - 20:
            pts.append((s - 0.5, s - 0.5))  # on a crossing
    kept: list[tuple[float, float]] = []
    for p in pts:  # disks at least 13 px apart never touch
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= 13**2 for q in kept):
            kept.append(p)
    return np.array(kept)


def write_slide(path: Path, seam: int = 128, seed: int = 0, mpp: float = 0.5) -> np.ndarray:
    """A 1200 x 900 generic tiled TIFF at ``mpp`` um/px (default 0.5): white glass, a pink tissue block, dark disks (radius 5 px) in it.
    Returns the disk centres (level-0 x, y; pixel-centre convention)."""
    import tifffile

    rng = np.random.default_rng(seed)
    W, H = 1200, 900
    tissue = (100, 80, 1000, 800)
    img = np.full((H, W, 3), 245, np.uint8)
    img[tissue[1] : tissue[3], tissue[0] : tissue[2]] = (230, 170, 210)
    centres = _disk_centres(W, H, tissue, rng, seam)
    yy, xx = np.mgrid[0:H, 0:W]
    for cx, cy in centres:
        sl = (slice(int(cy) - 7, int(cy) + 8), slice(int(cx) - 7, int(cx) + 8))
        disk = (xx[sl] - cx) ** 2 + (yy[sl] - cy) ** 2 <= 5.2**2
        img[sl][disk] = (60, 30, 110)
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return centres


class ThresholdSegmenter:
    """Dark pixels, one nucleus per 4-connected component (what the disks are); optionally fails on a tile."""

    mpp = 0.5
    type_classes = ["Nucleus"]

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after, self.calls = fail_after, 0

    def __call__(self, pixels: np.ndarray, seconds: dict[str, float]) -> NucleiPrediction:
        from scipy import ndimage as ndi

        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("segmenter crashed")
        labels, n = ndi.label(pixels.astype(np.int32).sum(-1) < 400)
        seconds["network"] = seconds.get("network", 0.0) + 0.0
        return NucleiPrediction(labels, {i: 1 for i in range(1, n + 1)}, self.type_classes)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("wsi") / "synthetic.tif"
    return path, write_slide(path)


def _match(found: np.ndarray, truth: np.ndarray) -> tuple[int, float]:
    """(truth disks with exactly one found centroid within 2 px, largest distance of the matches)."""
    from scipy.spatial import cKDTree

    d, idx = cKDTree(found[:, :2]).query(truth, k=2, distance_upper_bound=8.0)
    one = (d[:, 0] <= 2.0) & ~(d[:, 1] <= 8.0)
    return int(one.sum()), float(d[one, 0].max()) if one.any() else float("inf")


# ---- plan ----------------------------------------------------------------------------------------------------------
def test_the_plan_covers_the_tissue_with_cores_that_partition_it(slide: tuple[Path, np.ndarray]) -> None:
    path, _ = slide
    with SlideReader(path) as reader:
        plan = plan_slide(reader, 0.5, tile=128, halo=24)
    assert plan.slide_mpp == 0.5 and not plan.mpp_assumed and plan.downsample == 1.0
    assert plan.grid == (10, 8)  # ceil(1200 / 128), ceil(900 / 128)
    # the glass-only tiles are skipped: the tissue block spans columns 0-7 and rows 0-6 only
    assert {t.col for t in plan.tiles} == set(range(8)) and {t.row for t in plan.tiles} == set(range(7))
    cores = {(t.core[0], t.core[1]) for t in plan.tiles}
    assert len(cores) == len(plan.tiles)
    for t in plan.tiles:
        x0, y0, x1, y1 = t.core
        wx0, wy0, wx1, wy1 = t.window
        assert (x1 - x0, y1 - y0) == (128, 128) or x1 == 1200 or y1 == 900
        assert wx0 == max(0, x0 - 24) and wy1 == min(900, y1 + 24)
    assert 0.16 < plan.tissue_mm2 < 0.20  # 900 x 720 px of tissue at 0.5 um/px = 0.162 mm^2 (mask edges blur a little)
    assert plan.mask_downsample * plan.slide_mpp == pytest.approx(1.0, rel=0.01)  # MASK_UM_PER_PX, not level 0


def test_a_region_run_counts_the_nuclei_of_that_region_only(slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    from pathasst.core.regions import Region

    path, truth = slide
    box = Region(x=250, y=200, width=400, height=300)
    s = SlideNucleiRun(path, tmp_path, ThresholdSegmenter(), tile=128, halo=24, region=box).run()
    inside = ((truth[:, 0] >= 250) & (truth[:, 0] < 650) & (truth[:, 1] >= 200) & (truth[:, 1] < 500)).sum()
    assert s["nuclei"] == inside > 100 and list(s["region"]) == [250, 200, 400, 300]
    assert s["tiles"]["in_plan"] == 4 * 3  # 400 x 300 px in 128 px cores
    assert s["tissue_mm2"] == pytest.approx(400 * 300 * 0.25e-6, rel=0.03)


def test_a_slide_without_resolution_is_assumed_20x_and_says_so(slides: Path) -> None:
    with SlideReader(slides / "tcga-cr-7395-01a-01-ts1.svs") as reader:
        plan = plan_slide(reader, 0.5)
    assert plan.mpp_assumed and plan.slide_mpp == 0.5
    assert 0 < len(plan.tiles) <= plan.grid[0] * plan.grid[1]


# ---- seams ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [128, 1024])
def test_every_disk_is_found_once_however_the_grid_cuts_it(slide: tuple[Path, np.ndarray], tmp_path: Path,
                                                          tile: int) -> None:
    path, truth = slide
    summary = SlideNucleiRun(path, tmp_path, ThresholdSegmenter(), tile=tile, halo=24).run()
    with NucleiStore(tmp_path / "nuclei.sqlite") as store:
        found = store.centroids()
    on_seams = sum(1 for x, y in truth if (x + 0.5) % 128 == 0 or (y + 0.5) % 128 == 0)
    assert on_seams >= 40
    assert summary["nuclei"] == len(truth) == len(found)  # none lost, none doubled
    matched, worst = _match(found, truth)
    assert matched == len(truth) and worst < 0.6


def test_a_slide_coarser_than_the_network_is_enlarged_to_its_resolution(tmp_path: Path) -> None:
    path = tmp_path / "coarse.tif"
    truth = write_slide(path, mpp=1.0)

    class Recording(ThresholdSegmenter):
        shapes: list[tuple[int, ...]] = []

        def __call__(self, pixels: np.ndarray, seconds: dict[str, float]) -> NucleiPrediction:
            self.shapes.append(pixels.shape)
            return super().__call__(pixels, seconds)

    seg = Recording()
    s = SlideNucleiRun(path, tmp_path / "out", seg, tile=256, halo=24).run()
    assert s["slide_mpp"] == 1.0 and s["work_mpp"] == 0.5
    assert max(sh[0] for sh in seg.shapes) == 2 * (128 + 24)  # 128 level-0 px of core + 12 px halo, enlarged 2x
    assert s["nuclei"] == len(truth)
    with NucleiStore(tmp_path / "out" / "nuclei.sqlite") as store:
        matched, worst = _match(store.centroids(), truth)
    assert matched == len(truth) and worst < 1.0  # back in level-0 pixels
    assert s["tissue_mm2"] == pytest.approx(900 * 720 * 1e-6, rel=0.1)


# ---- store ---------------------------------------------------------------------------------------------------------
def test_the_store_answers_region_queries_and_exports_qupath_geojson(slide: tuple[Path, np.ndarray],
                                                                      tmp_path: Path) -> None:
    path, truth = slide
    summary = SlideNucleiRun(path, tmp_path, ThresholdSegmenter(), tile=256, halo=24).run()
    with NucleiStore(tmp_path / "nuclei.sqlite") as store:
        box = (300.0, 200.0, 500.0, 350.0)
        got = list(store.nuclei_in(*box))
        expect = [(x, y) for x, y in truth if box[0] - 6 <= x <= box[2] + 6 and box[1] - 6 <= y <= box[3] + 6]
        assert len(got) == len(expect) > 20
        for n in got:
            assert n.type == "Nucleus" and 60 < n.area_um2 / 0.25 < 100  # a radius-5 disk: about 81-89 px
            lo, hi = n.outline.min(0), n.outline.max(0)
            assert lo[0] - 1 <= n.x <= hi[0] + 1 and lo[1] - 1 <= n.y <= hi[1] + 1
        assert list(store.nuclei_in(1100, 820, 1190, 890)) == []  # glass
        assert store.composition() == {"Nucleus": len(truth)}
    features = read_features(tmp_path / "nuclei.geojson")
    assert len(features) == summary["nuclei"] == len(truth)
    doc = json.loads((tmp_path / "nuclei.geojson").read_text())
    ring = doc["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and doc["features"][0]["properties"]["objectType"] == "detection"
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["nuclei"] == len(truth) and s["composition_fraction"] == {"Nucleus": 1.0}
    assert s["nuclei_per_mm2"] == pytest.approx(len(truth) / s["tissue_mm2"], rel=1e-3)
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_store_of_another_run_is_refused_and_left_untouched(slide: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, truth = slide
    SlideNucleiRun(path, tmp_path, ThresholdSegmenter(), tile=256, halo=24).run()
    before = (tmp_path / "nuclei.sqlite").stat().st_size
    with pytest.raises(StoreMismatchError, match=r"differs in \['tile', 'tiles'\].*--restart"):
        SlideNucleiRun(path, tmp_path, ThresholdSegmenter(), tile=128, halo=24).run()
    with NucleiStore(tmp_path / "nuclei.sqlite") as store:
        assert store.count() == len(truth)
    assert (tmp_path / "nuclei.sqlite").stat().st_size >= before
    s = SlideNucleiRun(path, tmp_path, ThresholdSegmenter(), tile=128, halo=24, restart=True).run()
    assert s["nuclei"] == len(truth) and s["tiles"]["resumed"] == 0


def test_a_crash_mid_run_keeps_whole_tiles_and_the_rerun_finishes_the_rest(slide: tuple[Path, np.ndarray],
                                                                          tmp_path: Path) -> None:
    path, truth = slide
    with pytest.raises(RuntimeError, match="segmenter crashed"):
        SlideNucleiRun(path, tmp_path, ThresholdSegmenter(fail_after=9), tile=128, halo=24, batch=2, group=2).run()
    db = sqlite3.connect(tmp_path / "nuclei.sqlite")
    tiles, nuclei = db.execute("SELECT count(*), coalesce(sum(nuclei), 0) FROM tiles").fetchone()
    assert tiles == 8  # groups of 2 x 2 windows: the 9th window failed in the third group; its group wrote nothing
    assert db.execute("SELECT count(*) FROM nuclei").fetchone()[0] == nuclei > 0  # no orphan nuclei
    assert db.execute("SELECT count(*) FROM nuclei_box").fetchone()[0] == nuclei
    db.close()
    resumed = ThresholdSegmenter()
    s = SlideNucleiRun(path, tmp_path, resumed, tile=128, halo=24).run()
    assert s["tiles"]["resumed"] == 8 and resumed.calls == s["tiles"]["in_plan"] - 8
    assert s["nuclei"] == len(truth)


def test_windows_are_read_ahead_in_a_thread_and_a_read_error_keeps_the_finished_tiles(
        slide: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from pathasst.core.case_model import CorruptImageError

    path, truth = slide
    real = SlideNucleiRun._window
    readers: list[str] = []

    def window(self, reader, plan, t):  # the 9th window's pixels cannot be decoded
        readers.append(threading.current_thread().name)
        if len(readers) == 9:
            raise CorruptImageError("synthetic.tif: cannot read region (bad tile)")
        return real(self, reader, plan, t)

    monkeypatch.setattr(SlideNucleiRun, "_window", window)
    seg = ThresholdSegmenter()
    with pytest.raises(CorruptImageError, match="bad tile"):
        SlideNucleiRun(path, tmp_path, seg, tile=128, halo=24, batch=2, group=2).run()
    assert readers and all(name.startswith("slide-read") for name in readers)  # never on the segmenting thread
    assert seg.calls == 8  # groups of 4: the third group's read failed after the second was segmented
    db = sqlite3.connect(tmp_path / "nuclei.sqlite")
    assert db.execute("SELECT count(*) FROM tiles").fetchone()[0] == 8
    db.close()
    monkeypatch.setattr(SlideNucleiRun, "_window", real)
    s = SlideNucleiRun(path, tmp_path, ThresholdSegmenter(), tile=128, halo=24).run()
    assert s["tiles"]["resumed"] == 8 and s["nuclei"] == len(truth)
    assert s["seconds"]["read"] > 0 and s["seconds"]["read_wait"] >= 0


# ---- slide-level figures ---------------------------------------------------------------------------------------------
def test_density_grid_and_hot_spot_follow_the_nuclei(slide: tuple[Path, np.ndarray]) -> None:
    path, truth = slide
    with SlideReader(path) as reader:
        plan = plan_slide(reader, 0.5, tile=128, halo=24)
    extra = np.array([[700 + dx, 400 + dy] for dx in range(0, 60, 4) for dy in range(0, 60, 4)], float)
    grid = density_grid(plan, [truth, extra], cell_um=50)
    assert grid.counts.sum() == len(truth) + len(extra)
    inner = grid.density[4:7, 4:8]  # tissue cells away from the dense patch: one disk per 24 px square
    assert np.nanmedian(inner) == pytest.approx(1 / (12e-3**2), rel=0.35)
    assert np.isnan(grid.density[0, 0]) and np.isnan(grid.density[-1, -1])  # glass
    x, y, dens = hot_spot(grid, 50)
    assert 690 <= x <= 770 and 390 <= y <= 470 and dens > 2 * np.nanmedian(inner)


def test_the_heat_map_colours_dense_cells_hot_and_leaves_glass_clear(slide: tuple[Path, np.ndarray],
                                                                      tmp_path: Path) -> None:
    from PIL import Image

    from pathasst.tools.backends.render import colormap
    from pathasst.tools.wsi.density import render_heat_map

    path, truth = slide
    with SlideReader(path) as reader:
        plan = plan_slide(reader, 0.5, tile=128, halo=24)
        thumb, tds = reader.thumbnail(600)
    extra = np.array([[700 + dx, 400 + dy] for dx in range(0, 60, 4) for dy in range(0, 60, 4)], float)
    grid = density_grid(plan, [truth, extra], cell_um=50)
    render_heat_map(grid, thumb, tds, tmp_path / "density.png", "synthetic: dense patch at (700, 400)")
    img = np.asarray(Image.open(tmp_path / "density.png").convert("RGB")).astype(int)
    pad, top = 8, 22 + 8  # the renderer's margins: the thumbnail is drawn at (pad, top)
    assert img.shape[1] > thumb.shape[1] + 2 * pad and img.shape[0] > thumb.shape[0] + top  # colour bar, title

    def at(x0: float, y0: float) -> np.ndarray:  # the drawn pixel at level-0 (x, y)
        return img[top + int(y0 / tds), pad + int(x0 / tds)]

    hot = colormap(np.array([1.0]))[0].astype(int)
    blend = 0.45 * thumb[int(420 / tds), int(720 / tds)] + 0.55 * hot
    assert np.abs(at(720, 420) - blend).max() <= 2  # the densest cell: the top of the scale over the tissue
    assert np.abs(at(1150, 860) - thumb[int(860 / tds), int(1150 / tds)]).max() <= 1  # glass: no colour
    assert np.abs(at(300, 300) - thumb[int(300 / tds), int(300 / tds)]).max() > 20  # ordinary tissue is coloured


# ---- the CLI, with the shipped 20x network ------------------------------------------------------------------------
def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pathasst.cli.main", "slide", *args], env=CLI_ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_a_killed_slide_run_resumes_from_its_finished_tiles(slides: Path, tmp_path: Path) -> None:
    slide = slides / "cmu-1-small-region.svs"
    args = ["nuclei", str(slide), "--tile", "256", "--json"]
    clean = _cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    expected = json.loads(clean.stdout)
    assert expected["nuclei"] > 1000 and expected["tiles"]["resumed"] == 0 and not expected["mpp_assumed"]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pathasst.cli.main", "slide", *args, "--out", str(out)],
                            env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, deadline = 0, time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "nuclei.sqlite").is_file():
            try:
                with sqlite3.connect(f"file:{out / 'nuclei.sqlite'}?mode=ro", uri=True) as db:
                    done = db.execute("SELECT count(*) FROM tiles").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is being created
                done = 0
            if done >= 3:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= done < expected["tiles"]["in_plan"]
    assert not (out / "summary.json").exists()
    resumed = _cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads(resumed.stdout)
    assert got["tiles"]["resumed"] >= done
    assert got["nuclei"] == expected["nuclei"] and got["composition"] == expected["composition"]
    assert len(read_features(out / "nuclei.geojson")) == expected["nuclei"]

    query = _cli("query", str(out), "1000", "1000", "1300", "1200")
    assert query.returncode == 0, query.stderr
    feats = json.loads(query.stdout)["features"]
    with NucleiStore(out / "nuclei.sqlite") as store:
        assert len(feats) == len(list(store.nuclei_in(1000, 1000, 1300, 1200))) > 10
    for f in feats:
        xs = [p[0] for p in f["geometry"]["coordinates"][0]]
        ys = [p[1] for p in f["geometry"]["coordinates"][0]]
        assert max(xs) >= 1000 and min(xs) <= 1300 and max(ys) >= 1000 and min(ys) <= 1200


def test_a_corrupt_slide_or_a_missing_run_is_a_clear_error(slides: Path, tmp_path: Path) -> None:
    bad = _cli("nuclei", str(slides / "broken.svs"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "broken.svs" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "o" / "summary.json").exists()
    missing = _cli("query", str(tmp_path / "nothing"), "0", "0", "10", "10")
    assert missing.returncode == 2 and "no slide run" in missing.stderr


def test_the_nuclei_tool_runs_the_20x_network_on_slide_pixels_and_says_so(slides: Path) -> None:
    from pathasst.core.imaging import ImageData
    from pathasst.core.regions import Region
    from pathasst.core.settings import Settings
    from pathasst.tools.registry import default_registry

    tool = default_registry(Settings(_env_file=None)).get("nuclei_segmentation")
    args = tool.input_model.model_validate({"image": "slide"})
    with SlideReader(slides / "cmu-1-small-region.svs") as reader:
        img = reader.read_region(Region(x=900, y=1300, width=320, height=320), 1.0, 320 * 320)
        img.slide = reader
        on_slide = tool.analyze(img, args).output
    assert on_slide.method == "nuclei_net" and on_slide.type_counts
    assert any("20x slide network" in n for n in img.notes)
    patch = ImageData(pixels=img.pixels, mpp=img.mpp)
    as_patch = tool.analyze(patch, args).output
    assert not any("20x" in n for n in patch.notes)
    assert as_patch.method in ("nuclei_net", "deconvolution")  # the patch path: ensemble, guarded as before
    assert 40 < on_slide.count < 160 and 1500 < on_slide.density_per_mm2 < 6000  # dermis and basal layer at 20x
