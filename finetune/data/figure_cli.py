"""The ``pathasst-train data`` commands of the figure tools (issue 29, item 4): the pathology image filter and the
sub-figure splitter. :func:`pathasst.finetune.cli` hands these command names here.

    filter-build --out DIR [--shared DIR]          pathology-vs-other data set (split by case / slide / source)
    filter-train DIR --out WEIGHTS.pt              train the filter (train split; val picks epoch and threshold)
    filter-eval DIR [WEIGHTS] [--jpeg Q]           JSON scores on the held-out split (bootstrap 95 % intervals)
    filter-eval DIR [WEIGHTS] --perturb [NAME ...] the same under stain / blur / JPEG / scale / grayscale changes
    filter-images IN_DIR --out FILE.jsonl          keep / drop every image of a folder, with its probability
    subfig-build --out DIR [--shared DIR]          synthetic compound figures, YOLO format
    subfig-train DIR --out RUN [--epochs N]        YOLO (yolov8n.yaml, from scratch) on them
    subfig-eval DIR [--weights W]                  JSON scores of the deterministic splitter (and YOLO)
    split-figure IMAGE --out DIR                   panel crops + STEM_panels.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pathasst.finetune.data.image_io import CaseError

__all__ = ["COMMANDS", "main"]

COMMANDS = ("filter-build", "filter-train", "filter-eval", "filter-images", "subfig-build", "subfig-train",
            "subfig-eval", "split-figure")
#: shared/data next to the repository (as the tests find it), or PATHASST_SHARED_DATA
_SHARED = Path(os.environ.get("PATHASST_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pathasst-train data")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("filter-build", help="pathology-vs-other image data set")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--shared", type=Path, default=_SHARED, help="shared/data (real pathology images)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scale", type=float, default=1.0, help="multiply every count (0.02 for a smoke test)")
    t = sub.add_parser("filter-train", help="train the image filter")
    t.add_argument("data", type=Path)
    t.add_argument("--out", type=Path, required=True, help="weights file (.pt); a .pt.json summary is written too")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--samples-per-epoch", type=int, default=4000)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this")
    t.add_argument("--threads", type=int, default=None)
    e = sub.add_parser("filter-eval", help="score filter weights on the held-out split")
    e.add_argument("data", type=Path)
    e.add_argument("weights", type=Path, nargs="?", default=None, help="default: the shipped weights")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--threshold", type=float, default=None)
    e.add_argument("--jpeg", type=int, default=None, help="re-encode every image as JPEG of this quality first")
    e.add_argument("--bootstrap", type=int, default=1000)
    e.add_argument("--perturb", nargs="*", default=None, metavar="NAME",
                   help="robustness sweep: score the split under each perturbation (all when no NAME is given; "
                        "see finetune/data/filter_robustness.py)")
    f = sub.add_parser("filter-images", help="keep / drop the images of a folder")
    f.add_argument("src", type=Path)
    f.add_argument("--out", type=Path, required=True, help="JSONL, one line per file")
    f.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    f.add_argument("--threshold", type=float, default=None, help="default: the weights' own")
    s = sub.add_parser("subfig-build", help="synthetic compound figures in YOLO format")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--shared", type=Path, default=_SHARED)
    s.add_argument("--counts", type=int, nargs=3, default=[800, 100, 200], metavar=("TRAIN", "VAL", "TEST"))
    s.add_argument("--seed", type=int, default=0)
    y = sub.add_parser("subfig-train", help="YOLO from scratch on a subfig-build folder")
    y.add_argument("data", type=Path)
    y.add_argument("--out", type=Path, required=True, help="run folder (weights in OUT/train/weights/best.pt)")
    y.add_argument("--epochs", type=int, default=15)
    y.add_argument("--imgsz", type=int, default=320)
    y.add_argument("--batch", type=int, default=16)
    y.add_argument("--fraction", type=float, default=1.0, help="use this share of the training images")
    y.add_argument("--minutes", type=float, default=None, help="time budget (ultralytics fits the epochs into it)")
    v = sub.add_parser("subfig-eval", help="score the splitter backends")
    v.add_argument("data", type=Path)
    v.add_argument("--weights", type=Path, default=None, help="YOLO best.pt: scored too")
    v.add_argument("--split", default="test", choices=["train", "val", "test"])
    v.add_argument("--imgsz", type=int, default=320)
    v.add_argument("--matplotlib", type=int, default=40, help="matplotlib-laid-out figures to score (0: none)")
    v.add_argument("--limit", type=int, default=None)
    v.add_argument("--bootstrap", type=int, default=1000)
    p = sub.add_parser("split-figure", help="panel crops and boxes of one figure")
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backend", choices=["deterministic", "yolo"], default="deterministic")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--imgsz", type=int, default=320)
    return ap


def _run(a: argparse.Namespace) -> object:
    if a.cmd == "filter-build":
        from pathasst.finetune.data.filter_data import build_filter_dataset

        return build_filter_dataset(a.shared if a.shared.is_dir() else None, a.out, seed=a.seed, scale=a.scale)
    if a.cmd == "filter-train":
        from pathasst.finetune.data.filter_train import train

        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        summary = train(a.data, a.out, epochs=a.epochs, samples_per_epoch=a.samples_per_epoch, batch=a.batch, lr=a.lr,
                        seed=a.seed, max_minutes=a.max_minutes, threads=a.threads, log=log)
        return {k: v for k, v in summary.items() if k != "history"}
    if a.cmd == "filter-eval":
        if a.perturb is not None:
            if a.jpeg is not None:
                raise ValueError("--jpeg and --perturb do not combine (the sweep has jpeg_q75 and jpeg_q50)")
            from pathasst.finetune.data.filter_robustness import perturbation_sweep

            return perturbation_sweep(a.data, a.weights, split=a.split, threshold=a.threshold,
                                      settings=a.perturb or None, bootstrap=a.bootstrap,
                                      log=lambda m: print(m, file=sys.stderr, flush=True))
        from pathasst.finetune.data.filter_train import evaluate

        return evaluate(a.data, a.weights, split=a.split, threshold=a.threshold, jpeg=a.jpeg, bootstrap=a.bootstrap)
    if a.cmd == "filter-images":
        from pathasst.finetune.data.image_filter import filter_images

        return filter_images(a.src, a.out, a.weights, a.threshold)
    if a.cmd == "subfig-build":
        from pathasst.finetune.data.compound import build_subfig_dataset

        return build_subfig_dataset(a.out, a.shared if a.shared.is_dir() else None, tuple(a.counts), seed=a.seed)
    if a.cmd == "subfig-train":
        from pathasst.finetune.data.subfig_yolo import train_yolo, yolo_available

        if not yolo_available():
            raise RuntimeError("subfig-train needs ultralytics (pip install ultralytics)")
        return train_yolo(a.data, a.out, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, fraction=a.fraction,
                          minutes=a.minutes)
    if a.cmd == "subfig-eval":
        from pathasst.finetune.data.subfig_eval import evaluate_subfigures

        return evaluate_subfigures(a.data, a.weights, split=a.split, imgsz=a.imgsz, matplotlib_n=a.matplotlib,
                                   limit=a.limit, bootstrap=a.bootstrap,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
    from pathasst.finetune.data.subfigures import split_figure

    return split_figure(a.image, a.out, backend=a.backend, weights=a.weights, imgsz=a.imgsz)


def main(argv: list[str]) -> int:
    """Run one command; errors become one ``error: ...`` line on stderr and exit code 2."""
    from pathasst.core.errors import WeightsError

    a = _parser().parse_args(argv)
    try:
        result = _run(a)
    except (CaseError, WeightsError, FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0
