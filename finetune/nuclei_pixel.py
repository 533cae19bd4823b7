"""Train the nuclei pixel classifier of ``tools/nuclei_classical.py`` (model card:
``finetune/model_cards/nuclei_pixel_classifier.md``).

    python -m pathasst.finetune.nuclei_pixel --data ../shared/data/consep_train --out nuclei_pixel.npz

Recipe (the one that produced the embedded weights): CoNSeP tiles of the training source images (1-14 and every
odd-numbered one; tiles ``train_<source>_<k>``), ``--pixels-per-tile`` random pixels per tile; features =
:func:`pathasst.tools.nuclei_classical.pixel_features` (the tool's own function); targets = background /
nucleus / nucleus border (``find_boundaries(mode="inner")``) and the distance to the border normalised per
nucleus; a 24-32-32-4 perceptron, Adam (lr 3e-3, cosine schedule, batch 8192), loss = cross-entropy of the 3 class
logits + 2 x MSE of sigmoid(4th output) vs the distance. The weights are written in the tool's .npz format
(:func:`pathasst.tools.nuclei_classical.load_weights`), then scored with
:func:`pathasst.tools.evaluate.evaluate_nuclei` on held-out tiles (source images 16, 18, ... 26, never used for
training) next to the naive baseline; the metrics are printed as JSON.

Deterministic for a given ``--seed`` and ``--threads`` (the same file, byte for byte). Needs torch (CPU is enough).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.tools.evaluate import CONSEP_HELD_OUT_SOURCES

__all__ = [
    "HELD_OUT_SOURCES",
    "TrainResult",
    "held_out_tiles",
    "instance_distance",
    "is_training_source",
    "main",
    "pixel_targets",
    "sample_pixels",
    "source_image",
    "split_tiles",
    "train",
    "train_tiles",
]

#: CoNSeP source images whose tiles are never used for training or tuning (the held-out test set)
HELD_OUT_SOURCES = CONSEP_HELD_OUT_SOURCES


def source_image(name: str) -> int:
    """CoNSeP source image number of a tile name ``train_<source>_<k>``."""
    return int(name.split("_")[1])


def is_training_source(source: int) -> bool:
    """Training sources: 1-14 and every odd-numbered one (so 16, 18, ... 26 are held out)."""
    return source <= 14 or source % 2 == 1


def split_tiles(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(training, held_out)`` tile names, in the given order."""
    names = list(names)
    train_names = [n for n in names if is_training_source(source_image(n))]
    held = [n for n in names if not is_training_source(source_image(n))]
    assert not {source_image(n) for n in train_names} & HELD_OUT_SOURCES
    return train_names, held


def train_tiles(data_dir: Path | str) -> list[str]:
    """Sorted training tile names of a consep_train-layout folder."""
    from pathasst.tools.evaluate import nuclei_tiles

    return split_tiles(nuclei_tiles(data_dir))[0]


def held_out_tiles(data_dir: Path | str, every: int = 2) -> list[str]:
    """Held-out tile names (sources 16-26); ``every=2``: every 2nd, the 48 tiles of ``tests/test_tools_accuracy``."""
    from pathasst.tools.evaluate import nuclei_tiles

    held = split_tiles(nuclei_tiles(data_dir))[1]
    assert {source_image(n) for n in held} <= HELD_OUT_SOURCES
    return held[::every]


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


def _load_tile(data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    images = data_dir / "images"
    path = next((p for p in (images / f"{name}{e}" for e in (".png", ".jpg", ".jpeg", ".tif")) if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no image for {name} in {images}")
    return _read(path)[..., :3], _read(data_dir / "instances" / f"{name}.png")


def instance_distance(labels: np.ndarray) -> np.ndarray:
    """Per nucleus, the Euclidean distance to its border divided by its maximum (1 at the centre, 0 outside)."""
    from scipy import ndimage as ndi

    out = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        obj = labels[sl] == i
        d = ndi.distance_transform_edt(obj)
        if d.max() > 0:
            out[sl][obj] = (d / d.max())[obj]
    return out


def pixel_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class targets (0 background, 1 nucleus, 2 nucleus border) and the normalised distance of a label map."""
    from skimage.segmentation import find_boundaries

    cls = np.where(labels > 0, 1, 0)
    cls[find_boundaries(labels, mode="inner")] = 2
    return cls, instance_distance(labels)


def sample_pixels(
    data_dir: Path | str, names: Sequence[str], pixels_per_tile: int = 3000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features ``(N, 24)`` float32, classes ``(N,)`` int64 and distances ``(N,)`` float32 of ``pixels_per_tile``
    random pixels (without replacement) per tile, tiles in the given order."""
    from pathasst.tools.nuclei_classical import pixel_features

    data_dir = Path(data_dir)
    bad = sorted({s for s in map(source_image, names) if not is_training_source(s)})
    if bad:
        raise ValueError(f"refusing to train on held-out source images {bad}")
    rng = np.random.default_rng(seed)
    xs, ys, rs = [], [], []
    for name in names:
        rgb, labels = _load_tile(data_dir, name)
        cls, dist = pixel_targets(labels)
        f = pixel_features(rgb)
        idx = rng.choice(f.shape[0] * f.shape[1], pixels_per_tile, replace=False)
        xs.append(f.reshape(-1, f.shape[-1])[idx])
        ys.append(cls.ravel()[idx])
        rs.append(dist.ravel()[idx])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(rs)


@dataclass
class TrainResult:
    """Trained weights (the tool's format, float32 here) and the mean training loss of every epoch."""

    weights: dict[str, np.ndarray]
    epoch_loss: list[float] = field(default_factory=list)
    last_batch_loss: float = float("nan")


def train(
    x: np.ndarray,
    y: np.ndarray,
    r: np.ndarray,
    epochs: int = 40,
    seed: int = 0,
    hidden: int = 32,
    lr: float = 3e-3,
    batch: int = 8192,
    threads: int = 2,
    log: Any = None,
) -> TrainResult:
    """Fit the perceptron on standardised features; deterministic for a given seed and thread count.
    The caller's torch random state and thread count are left as they were."""
    import torch

    mu = x.mean(0)
    sd = x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd)
    yt = torch.tensor(y)
    rt = torch.tensor(r)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    losses: list[float] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torch.nn.Sequential(
                torch.nn.Linear(x.shape[1], hidden),
                torch.nn.ReLU(),
                torch.nn.Linear(hidden, hidden),
                torch.nn.ReLU(),
                torch.nn.Linear(hidden, 4),
            )
            opt = torch.optim.Adam(net.parameters(), lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
            loss = torch.zeros(())
            for ep in range(epochs):
                perm = torch.randperm(len(xt))
                total = 0.0
                for i in range(0, len(xt), batch):
                    j = perm[i : i + batch]
                    o = net(xt[j])
                    loss = torch.nn.functional.cross_entropy(o[:, :3], yt[j]) + 2 * torch.nn.functional.mse_loss(
                        torch.sigmoid(o[:, 3]), rt[j]
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(j)
                sched.step()
                losses.append(total / len(xt))
                if log is not None:
                    print(f"epoch {ep + 1}/{epochs} loss {losses[-1]:.4f}", file=log, flush=True)
    finally:
        torch.set_num_threads(old_threads)
    sdict = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    weights = {"mu": mu.astype(np.float32), "sd": sd.astype(np.float32)}
    for i, layer in enumerate(("0", "2", "4")):
        weights[f"w{i}"] = sdict[f"{layer}.weight"]
        weights[f"b{i}"] = sdict[f"{layer}.bias"]
    return TrainResult(weights, losses, float(loss.detach()))


def _summary(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items() if k != "per_tile"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m pathasst.finetune.nuclei_pixel", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="consep_train-layout folder (images/, instances/)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.npz, the tool's format)")
    parser.add_argument("--pixels-per-tile", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (part of the determinism)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training tiles (smoke runs)")
    parser.add_argument(
        "--eval-every", type=int, default=2, help="score every Nth held-out tile (2 = the 48 tiles of the tests)"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    args = parser.parse_args(argv)

    from pathasst.tools.evaluate import CONSEP_MPP, baseline_nuclei, evaluate_nuclei
    from pathasst.tools.nuclei_classical import load_weights, save_weights, segment_nuclei

    names = train_tiles(args.data)[: args.limit]
    log = sys.stderr
    t0 = time.perf_counter()
    print(f"sampling {args.pixels_per_tile} pixels from each of {len(names)} training tiles", file=log, flush=True)
    x, y, r = sample_pixels(args.data, names, args.pixels_per_tile, args.seed)
    t1 = time.perf_counter()
    print(f"features {x.shape} in {t1 - t0:.0f} s; training {args.epochs} epochs", file=log, flush=True)
    result = train(x, y, r, epochs=args.epochs, seed=args.seed, threads=args.threads, log=log)
    t2 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(args.out, result.weights)
    report: dict[str, Any] = {
        "out": str(args.out),
        "train_tiles": len(names),
        "train_sources": sorted({source_image(n) for n in names}),
        "pixels": int(x.shape[0]),
        "epochs": args.epochs,
        "seed": args.seed,
        "loss_first_epoch": round(result.epoch_loss[0], 4) if result.epoch_loss else None,
        "loss_last_epoch": round(result.epoch_loss[-1], 4) if result.epoch_loss else None,
        "feature_seconds": round(t1 - t0, 1),
        "train_seconds": round(t2 - t1, 1),
    }
    if not args.no_eval:
        weights = load_weights(args.out)  # exactly what was written (float16 layers)
        held = held_out_tiles(args.data, args.eval_every)
        report["held_out_sources"] = sorted({source_image(n) for n in held})

        def predict(rgb: np.ndarray) -> np.ndarray:
            return segment_nuclei(rgb, CONSEP_MPP, weights=weights)[0]

        report["held_out"] = _summary(evaluate_nuclei(predict, args.data, names=held))
        report["baseline"] = _summary(evaluate_nuclei(baseline_nuclei, args.data, names=held))
        report["eval_seconds"] = round(time.perf_counter() - t2, 1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
