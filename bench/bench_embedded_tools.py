"""Latency of the four tools with embedded (shipped) backends, called as the agent calls them (``call_tool``), and the
share of it spent in the raw network forward (the rest: tiling, tissue masks, domain checks, overlays, GeoJSON).

Sections (each in its own process, so its peak RSS is its own; one warm-up call, then the median of ``--repeats``):
  tissue224   tissue_classification + tumor_segmentation on a 224x224 EBHI-Seg image, mpp unknown (target: both < 0.2 s)
  tissue2048  both tools on a 2048x2048 H&E region at the network's 1.25 um/px (he_stain_target_1000.png reflect-padded;
              no resampling); target < 10 s each
  mitosis1024 mitosis_detection on a 1024x1024 region at ~0.25 um/px (CMU-1: a 512x512 level-0 tissue window at
              0.499 um/px upsampled x2; the padded H&E tile when the slide is absent); target < 15 s
  slide       slide_classification on one BISQUE breast image, mpp unknown (skipped while tools/weights/slide_abmil.pt is
              absent)
  ihc512      ihc_quantification (ki67) on DeepLIIF 22_2 (512x512, 0.25 um/px); target < 2 s
  ihc2048     the same on a 2048x2048 region tiled from the four DeepLIIF images (hot spot included); target < 20 s
Baselines in the same process: TissueNet.classify of the image's 224 px tiles, TissueNet.lesion_probability,
MitosisNet.maps, nuclei_segmentation on the same IHC image (the detector ihc_quantification reads its nuclei with). Weights are the shipped ones: only speed is measured, never accuracy. Figures are printed,
never asserted.

Run: ``.venv/bin/python bench/bench_embedded_tools.py`` (``--repeats 3``, ``--sections tissue224,mitosis1024``,
``--threads 2``, ``--json out.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, rss_mib  # noqa: E402

SECTIONS = ("tissue224", "tissue2048", "mitosis1024", "slide", "ihc512", "ihc2048")
TARGETS = {"tissue224": {"classify+segment": 0.2}, "mitosis1024": {"mitosis_detection": 15.0},
           "ihc512": {"ihc_quantification": 2.0}, "ihc2048": {"ihc_quantification": 20.0},
           "tissue2048": {"tissue_classification": 10.0, "tumor_segmentation": 10.0}}  # seconds


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _padded_he(size: int) -> np.ndarray:
    rgb = _rgb(SHARED / "tiles" / "he_stain_target_1000.png")
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")[:size, :size]


def _cmu1_x2() -> tuple[np.ndarray, float, str] | None:
    slide = SHARED / "slides" / "cmu-1-small-region.svs"
    if not slide.is_file():
        return None
    import openslide
    from skimage.transform import resize

    from pathasst.core.readers import SlideReader

    with SlideReader(slide) as s:
        win, mpp = s.best_window(512, 512), float(s.mpp)
    osr = openslide.OpenSlide(str(slide))
    rgb = np.asarray(osr.read_region((win.x, win.y), 0, (512, 512)).convert("RGB"))
    osr.close()
    up = resize(rgb, (1024, 1024), order=1, preserve_range=True, anti_aliasing=False).round().astype(np.uint8)
    return up, mpp / 2, f"{slide.name} level 0 512x512 at ({win.x}, {win.y}), {mpp:.3f} um/px, upsampled x2"


def _median(fn: Any, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()  # loads the network
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _run_section(section: str, repeats: int, threads: int | None) -> dict[str, Any]:
    import torch

    from pathasst.core.imaging import ImageData
    from pathasst.core.settings import Settings
    from pathasst.tools.base import call_tool
    from pathasst.tools.registry import default_registry

    settings = Settings(_env_file=None, torch_threads=threads)
    reg = default_registry(settings)
    res: dict[str, Any] = {"tools": {}}

    def tool_time(name: str, rgb: np.ndarray, mpp: float | None, label: str) -> float:
        tool = reg.get(name)

        def once() -> Any:
            rec, _ = call_tool(tool, {"image": label}, lambda _n, _r, _m: ImageData(rgb, name=label, mpp=mpp))
            if rec.status != "ok":
                raise RuntimeError(f"{name}: status {rec.status}: {rec.summary} {rec.error or ''}")
            return rec

        rec = once()  # the warm-up
        s = _median(once, repeats, warm_up=False)
        res["tools"][name] = {"s": s, "mpix_per_s": rgb.shape[0] * rgb.shape[1] / 1e6 / s,
                              "backend": (rec.model or {}).get("backend"), "summary": rec.summary}
        return s

    if section in ("tissue224", "tissue2048"):
        from pathasst.tools.backends.tiling import tile_grid
        from pathasst.tools.backends.tissue_tiles import shipped_tissue_net

        if section == "tissue224":
            path = sorted((SHARED / "ebhi_seg" / "images" / "Normal").glob("*.jpg"))[0]
            rgb, mpp, res["input"] = _rgb(path), None, f"{path.name}, mpp unknown"
        else:
            rgb, mpp, res["input"] = _padded_he(2048), 1.25, "he_stain_target_1000.png reflect-padded, 1.25 um/px"
        net = shipped_tissue_net(settings)
        ts = net.config.tile_size
        tiles = [np.ascontiguousarray(rgb[t.y0:t.y1, t.x0:t.x1]) for t in tile_grid(rgb.shape[:2], ts, 0)]
        c = tool_time("tissue_classification", rgb, mpp, "x.png")
        s = tool_time("tumor_segmentation", rgb, mpp, "x.png")
        nc = _median(lambda: net.classify(tiles), repeats)
        ns = _median(lambda: net.lesion_probability(rgb), repeats)
        res["tools"]["tissue_classification"].update(net_s=nc, ratio=c / nc, net=f"classify({len(tiles)} tiles)")
        res["tools"]["tumor_segmentation"].update(net_s=ns, ratio=s / ns, net="lesion_probability")
        res["tools"]["classify+segment"] = {"s": c + s, "net_s": nc + ns, "ratio": (c + s) / (nc + ns)}
    elif section == "mitosis1024":
        cmu = _cmu1_x2()
        rgb, mpp, res["input"] = cmu or (_padded_he(1024), 0.25, "he_stain_target_1000.png reflect-padded, 0.25 um/px")
        t = tool_time("mitosis_detection", rgb, mpp, "x.png")
        net = reg.get("mitosis_detection")._embedded()
        n = _median(lambda: net.maps(rgb), repeats)
        res["tools"]["mitosis_detection"].update(net_s=n, ratio=t / n, net="MitosisNet.maps")
    elif section == "slide":
        from pathasst.tools.slide_classification import SHIPPED_SLIDE_WEIGHTS

        if not SHIPPED_SLIDE_WEIGHTS.is_file():
            return {"skipped": f"{SHIPPED_SLIDE_WEIGHTS} does not exist"}
        path = sorted((SHARED / "bisque_breast" / "images").glob("*.jpg"))[0]
        rgb = _rgb(path)
        res["input"] = f"{path.name} ({rgb.shape[1]}x{rgb.shape[0]}), mpp unknown"
        tool_time("slide_classification", rgb, None, path.name)
    elif section in ("ihc512", "ihc2048"):
        d = SHARED / "deepliif_ki67"
        if section == "ihc512":
            rgb, res["input"] = _rgb(d / "22_2_ihc.png"), "DeepLIIF 22_2_ihc.png, 0.25 um/px"
        else:
            q = [_rgb(d / f"{n}_ihc.png") for n in ("22_2", "34_3", "Bladder1", "Lung1")]
            block = np.concatenate([np.concatenate(q[:2], 1), np.concatenate(q[2:], 1)])
            rgb, res["input"] = np.tile(block, (2, 2, 1)), "the four DeepLIIF images tiled to 2048x2048, 0.25 um/px"
        t = tool_time("ihc_quantification", rgb, 0.25, "k.png")
        n = tool_time("nuclei_segmentation", rgb, 0.25, "k.png")
        res["tools"]["ihc_quantification"].update(net_s=n, ratio=t / n, net="nuclei_segmentation")
    res["peak_rss_mib"] = rss_mib()
    res["torch_threads"] = torch.get_num_threads()
    return res


def _cpu_model() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (median reported)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one section in this process, print its JSON
    opts = p.parse_args()
    if opts.one:
        print(json.dumps(_run_section(opts.one, opts.repeats, opts.threads)))
        return
    sections = [s.strip() for s in opts.sections.split(",") if s.strip()]
    if bad := [s for s in sections if s not in SECTIONS]:
        p.error(f"unknown section(s) {bad}; choose from {SECTIONS}")
    out: dict[str, Any] = {"cpu": _cpu_model(), "repeats": opts.repeats, "sections": {}}
    for sec in sections:
        cmd = [sys.executable, __file__, "--one", sec, "--repeats", str(opts.repeats)]
        cmd += ["--threads", str(opts.threads)] if opts.threads else []
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        lines = proc.stdout.strip().splitlines()
        out["sections"][sec] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
            "error": f"exit {proc.returncode}"}
    threads = {d.get("torch_threads") for d in out["sections"].values()} - {None}
    print(f"CPU: {out['cpu']}   torch threads: {', '.join(map(str, sorted(threads))) or '?'}   "
          f"median of {opts.repeats} after 1 warm-up")
    hdr = f"{'section':<12} {'tool':<22} {'tool s':>8} {'MP/s':>7} {'net s':>8} {'tool/net':>8} {'target':>9} {'RSS MiB':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for sec, d in out["sections"].items():
        if "tools" not in d:
            print(f"{sec:<12} {d.get('skipped') or d.get('error')}")
            continue
        print(f"{sec:<12} input: {d.get('input')}")
        for name, r in d["tools"].items():
            tgt = TARGETS.get(sec, {}).get(name)
            mps = f"{r['mpix_per_s']:.2f}" if "mpix_per_s" in r else ""
            net = f"{r['net_s']:.3f}" if "net_s" in r else ""
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
            target = "" if tgt is None else f"<{tgt:g} " + ("ok" if r["s"] < tgt else "MISS")
            print(f"{'':<12} {name:<22} {r['s']:>8.3f} {mps:>7} {net:>8} {ratio:>8} {target:>9} "
                  f"{d['peak_rss_mib']:>8.0f}")
    print("\nsummaries (what each timed call answered):")
    for sec, d in out["sections"].items():
        for name, r in d.get("tools", {}).items():
            if "summary" in r:
                print(f"  [{sec}] {r['summary']}")
    if opts.json:
        opts.json.write_text(json.dumps(out, indent=2))
        print(f"JSON written to {opts.json}")


if __name__ == "__main__":
    main()
