"""Throughput (megapixels/s at each tool's working resolution), peak memory, projected time per gigapixel, and
the tiling overhead of the deep backends, on this machine's CPU.

Deep tools run with weights created here in their real formats (random values: the speed of a trained model of the
same architecture is the same): ultralytics YOLOv8n detect / -seg at 640 px, PathCLIP ViT-B-16, a U-Net (base 32,
depth 4, 512 px tiles), an ABMIL head, segment-anything vit_b. Each tool is measured in its own process, so its peak
RSS is its own. Figures are printed (JSON), never asserted.

Run: ``.venv/bin/python bench/bench_tools.py`` (all tools; ``--tools mitosis_detection,tumor_segmentation`` for some,
``--size 1024`` region side, ``--threads 2``, ``--skip-sam``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import he_region, rss_mib  # noqa: E402

TOOLS = (
    "nuclei_segmentation",
    "ihc_quantification",
    "tissue_qc",
    "region_segmentation",
    "mitosis_detection",
    "tissue_classification",
    "tumor_segmentation",
    "slide_classification",
    "region_segmentation_sam",
    "ihc_quantification_yolo",
    "nuclei_segmentation_yolo",
)
GIGAPIXEL = 1e9


# ---- weights in their real formats -------------------------------------------------------------------------------
def _yolo(folder: Path, kind: str) -> Path:
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    spec = {
        "mitosis": (DetectionModel, "yolov8n.yaml", ["mitotic figure"], "detect"),
        "cells": (DetectionModel, "yolov8n.yaml", ["positive tumor cell", "negative tumor cell", "lymphocyte", "fibroblast"], "detect"),
        "nuclei": (SegmentationModel, "yolov8n-seg.yaml", ["nucleus"], "segment"),
    }[kind]
    torch.manual_seed(0)
    y = YOLO(spec[1])
    m = spec[0](spec[1], nc=len(spec[2]), verbose=False)
    m.names = dict(enumerate(spec[2]))
    y.model = m
    y.ckpt = {"train_args": {"imgsz": 640, "task": spec[3]}}
    path = folder / f"{kind}.pt"
    y.save(path)
    (folder / f"{kind}.json").write_text(json.dumps({"min_score": 0.25}))
    return path


def _pathclip(folder: Path) -> Path:
    import open_clip
    import torch

    path = folder / "pathclip-base.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).state_dict(), path)
    return path


def _unet(folder: Path) -> Path:
    import torch

    from pathasst.tools.backends.unet import build_unet

    torch.manual_seed(0)
    cfg = {"classes": ["background", "tumor", "stroma", "necrosis", "lymphocytes", "other"], "input_mpp": 1.0,
           "base_channels": 32, "depth": 4, "tile_size": 512, "overlap": 64}
    path = folder / "unet.pt"
    torch.save({"state_dict": build_unet(6, 32, 4).state_dict(), "config": cfg}, path)
    return path


def _abmil(folder: Path) -> Path:
    import torch

    from pathasst.tools.backends.abmil import build_abmil

    torch.manual_seed(0)
    path = folder / "abmil.pt"
    torch.save({"state_dict": build_abmil(512, 2).state_dict(), "config": {"labels": ["normal", "tumour"]}}, path)
    return path


def _sam(folder: Path) -> Path:
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = folder / "sam_vit_b.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


# ---- one tool in this process ---------------------------------------------------------------------------------------
def _measure_tool(key: str, size: int, threads: int, folder: Path) -> dict[str, Any]:
    from pathasst.core.imaging import ImageData
    from pathasst.core.settings import Settings
    from pathasst.tools.registry import default_registry

    settings = Settings(_env_file=None, torch_threads=threads)
    name = key.replace("_sam", "").replace("_yolo", "")
    weights: dict[str, Any] = {}
    t0 = time.perf_counter()
    if key == "mitosis_detection":
        weights = {"mitosis_weights": _yolo(folder, "mitosis")}
    elif key == "ihc_quantification_yolo":
        weights = {"ihc_weights": _yolo(folder, "cells")}
    elif key == "nuclei_segmentation_yolo":
        weights = {"nuclei_weights": _yolo(folder, "nuclei")}
    elif key == "tissue_classification":
        weights = {"pathclip_weights": _pathclip(folder)}
    elif key == "slide_classification":
        weights = {"pathclip_weights": _pathclip(folder), "slide_mil_weights": _abmil(folder)}
    elif key == "tumor_segmentation":
        weights = {"tumor_seg_weights": _unet(folder)}
    elif key == "region_segmentation_sam":
        weights = {"sam_weights": _sam(folder)}
    make_s = time.perf_counter() - t0
    settings = settings.model_copy(update=weights)
    tool = default_registry(settings).get(name)
    # the tool's working resolution: the region is size x size pixels at working_mpp (0.25 um/px when it has none)
    mpp = tool.working_mpp or 0.25
    rgb, src_mpp, where = he_region(size)
    if "ihc" in key:
        from skimage import data

        ihc = np.asarray(data.immunohistochemistry())
        rgb = np.tile(ihc, (-(-size // 512), -(-size // 512), 1))[:size, :size]
        where = "tiled skimage IHC image"
    image = ImageData(rgb, name="region.png", mpp=mpp)
    args: dict[str, Any] = {"image": "region.png"}
    if name == "region_segmentation":
        args["point"] = [size // 2, size // 2]
    t0 = time.perf_counter()
    tool.load()
    load_s = time.perf_counter() - t0
    parsed = tool.input_model.model_validate(args)
    times = []
    repeat = 1 if key in ("region_segmentation_sam", "tumor_segmentation", "slide_classification", "tissue_classification") else 2
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = tool.analyze(image, parsed)
        times.append(time.perf_counter() - t0)
    best = min(times)
    mpix = size * size / 1e6
    row: dict[str, Any] = {
        "tool": key,
        "region": f"{size}x{size} px at {mpp} um/px ({where})",
        "weights_build_s": round(make_s, 2),
        "load_s": round(load_s, 2),
        "call_s": round(best, 3),
        "peak_rss_mib": round(rss_mib(), 1),
        "torch_threads": threads,
        "status": result.output.status,
    }
    if name == "region_segmentation":
        row["seconds_per_prompt"] = round(best, 3)
    else:
        row["mpix_per_s"] = round(mpix / best, 4)
        row["projected_hours_per_gigapixel"] = round(GIGAPIXEL / 1e6 / (mpix / best) / 3600, 2)
    row.update(_tiling_overhead(key, tool, rgb))
    return row


def _tiling_overhead(key: str, tool: Any, rgb: np.ndarray) -> dict[str, Any]:
    """Tiled call vs one forward pass over a region that fits one pass (deep dense / detection backends)."""
    from pathasst.core.imaging import ImageData

    if key == "tumor_segmentation":
        unet = tool._unet
        region = rgb[:1024, :1024]
        t0 = time.perf_counter()
        unet.probabilities(region)  # 512 px tiles, 64 px overlap: 3 x 3 tiles
        tiled = time.perf_counter() - t0
        t0 = time.perf_counter()
        unet.probabilities(region, tile=1024, overlap=0)
        single = time.perf_counter() - t0
        return {"tiling": {"region": "1024x1024", "tiled_s": round(tiled, 3), "single_pass_s": round(single, 3),
                           "overhead": round(tiled / single - 1, 3)}}
    if key in ("mitosis_detection", "nuclei_segmentation_yolo", "ihc_quantification_yolo"):
        if key == "mitosis_detection":
            backend = tool._backend
        elif key == "nuclei_segmentation_yolo":
            backend = tool._deep.yolo
        else:
            backend = tool._cells.yolo
        region = ImageData(rgb[:1024, :1024], mpp=0.25)
        t0 = time.perf_counter()
        backend.detect(region, conf=0.25, overlap=64)
        tiled = time.perf_counter() - t0
        imgsz = backend.imgsz
        backend.imgsz = 1024  # one letterboxed pass over the whole region
        try:
            t0 = time.perf_counter()
            backend.detect(region, conf=0.25, overlap=64)
            single = time.perf_counter() - t0
        finally:
            backend.imgsz = imgsz
        return {"tiling": {"region": "1024x1024", "tiled_s": round(tiled, 3), "single_pass_s": round(single, 3),
                           "overhead": round(tiled / single - 1, 3), "tile": imgsz}}
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--size", type=int, default=1024, help="region side in pixels at the working resolution")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-sam", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.one:
        print(json.dumps(_measure_tool(a.one, a.size, a.threads, Path(a.folder))))
        return
    keys = [k for k in a.tools.split(",") if k and not (a.skip_sam and k == "region_segmentation_sam")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, YOLO_CONFIG_DIR=str(Path(folder) / "yolo"))
        for key in keys:
            cmd = [sys.executable, __file__, "--one", key, "--size", str(a.size), "--threads", str(a.threads), "--folder", folder]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                rows.append({"tool": key, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
            else:
                rows.append(json.loads(lines[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"cpu_count": os.cpu_count(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
