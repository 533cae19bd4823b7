"""Train and score the pathology image filter (``pathasst-train data filter-train`` / ``filter-eval``).

Training reads the ``train`` split of a :mod:`~pathasst.finetune.data.filter_data` folder; the ``val`` split picks
the epoch (lowest log-loss: its AUC saturates at 1.0 early) and the decision threshold (best balanced accuracy,
middle of the best plateau); the ``test`` split is
read only by :func:`evaluate`. Each epoch draws ``samples_per_epoch`` images with replacement, half pathology and
half not, every source weighted by ``1 / sqrt(its images)`` within its class (so charts do not drown photos, nor
mitosis crops the other tissue). Augmentation: a random crop of 35-100 % of the area (aspect 3:4-4:3) resized to
128 px, the 8 flips / rotations, HED stain + brightness / contrast / saturation / hue jitter, sometimes blur, noise
and a JPEG round trip (:mod:`pathasst.finetune.augment`). AdamW, cosine schedule, binary cross-entropy.

:func:`evaluate` reports accuracy, balanced accuracy and ROC AUC with 95 % intervals from a cluster bootstrap over
the split units (case, slide, source image, render seed: resampling units, not tiles), and per source the accuracy
and mean probability; out-of-domain sources (never trained on) and hard cases are listed apart.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.data.filter_data import FilterSample, read_manifest
from pathasst.finetune.data.image_filter import ARCHITECTURE, DEFAULT_WIDTHS, INPUT_SIZE, build_filter_net, prepare
from pathasst.finetune.data.image_io import load_image

__all__ = ["REAL_NEGATIVES", "auc", "evaluate", "split_scores", "train"]

#: negative sources that are real images (package photos and drawings, the phase-contrast micrograph), not renders
REAL_NEGATIVES = ("photo", "micrograph")


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count half); nan when one class is missing."""
    y = np.asarray(y).astype(bool)
    pos, neg = np.asarray(p)[y], np.asarray(p)[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _balanced(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    rates = [float((pred[y == c] == c).mean()) for c in (True, False) if (y == c).any()]
    return float(np.mean(rates)) if rates else float("nan")


def _augment(rgb: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image

    from pathasst.finetune.augment import colour_jitter, dihedral, jpeg_round_trip

    h, w = rgb.shape[:2]
    area = rng.uniform(0.35, 1.0)
    ar = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch = int(np.clip(round(h * math.sqrt(area / ar)), 8, h))
    cw = int(np.clip(round(w * math.sqrt(area * ar)), 8, w))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw])).resize((size, size), Image.BILINEAR)
    (x,) = dihedral([np.asarray(crop)], rng)
    x = colour_jitter(x, rng)
    if rng.random() < 0.35:
        x = jpeg_round_trip(x, rng, (30, 95))
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _load(folder: Path, rows: list[FilterSample]) -> list[np.ndarray]:
    return [load_image(folder / r.image) for r in rows]


def _weights(rows: list[FilterSample]) -> np.ndarray:
    count = Counter((r.label, r.source) for r in rows)
    per_class: dict[int, float] = defaultdict(float)
    w = np.array([1 / math.sqrt(count[(r.label, r.source)]) for r in rows])
    for r, wi in zip(rows, w):
        per_class[r.label] += wi
    return w / np.array([2 * per_class[r.label] for r in rows])


def _predict(net: Any, images: list[np.ndarray], size: int = INPUT_SIZE, batch: int = 128) -> np.ndarray:
    import torch

    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack([prepare(im, size) for im in images[i : i + batch]]))
            out.append(torch.sigmoid(net(x)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    grid = np.linspace(0.05, 0.95, 91)
    scores = [_balanced(y, p >= t) for t in grid]
    best = max(scores)
    # the middle of the best plateau: stable against one image more or less
    ties = grid[np.isclose(scores, best)]
    return float(ties[len(ties) // 2])


def train(data: Path, out: Path, epochs: int = 20, samples_per_epoch: int = 4000, batch: int = 64, lr: float = 2e-3,
          seed: int = 0, max_minutes: float | None = None, threads: int | None = None,
          log: Any = print) -> dict[str, Any]:
    """Train on ``data``'s train split, choose epoch and threshold on its val split, save to ``out`` (a ``.pt``).
    Returns the training summary (also written next to the weights as ``OUT.json``)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = read_manifest(data)
    tr = [r for r in rows if r.split == "train"]
    va = [r for r in rows if r.split == "val"]
    if not tr or len({r.label for r in tr}) < 2:
        raise ValueError(f"{data}: the train split needs images of both classes (has {len(tr)} images)")
    t0 = time.time()
    tr_img, va_img = _load(data, tr), _load(data, va)
    y_tr = np.array([r.label for r in tr], np.float32)
    y_va = np.array([r.label for r in va], np.float32)
    prob = _weights(tr)
    net = build_filter_net(DEFAULT_WIDTHS)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, samples_per_epoch // batch)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best: dict[str, Any] = {"key": (-float("inf"),)}
    history = []
    for epoch in range(epochs):
        net.train()
        losses = []
        for _ in range(steps_per_epoch):
            idx = rng.choice(len(tr), batch, p=prob)
            x = torch.from_numpy(np.stack([_augment(tr_img[i], rng, INPUT_SIZE) for i in idx]))
            loss = loss_fn(net(x), torch.from_numpy(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4),
                                 "minutes": round((time.time() - t0) / 60, 2)}
        if va:
            p = _predict(net, va_img)
            thr = _best_threshold(y_va, p)
            pc = np.clip(p, 1e-6, 1 - 1e-6)
            val_loss = float(-(y_va * np.log(pc) + (1 - y_va) * np.log(1 - pc)).mean())
            entry.update(val_loss=round(val_loss, 4), val_auc=round(auc(y_va, p), 4),
                         val_balanced_accuracy=round(_balanced(y_va, p >= thr), 4), val_threshold=round(thr, 3))
            key = (-val_loss,)  # AUC and accuracy saturate on the validation split; its log-loss does not
            if key > best["key"]:
                best = {"key": key, "epoch": epoch + 1, "threshold": thr,
                        "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
        log(json.dumps(entry))
        history.append(entry)
        if max_minutes is not None and (time.time() - t0) / 60 > max_minutes:
            log(json.dumps({"stopped": f"time budget of {max_minutes} min reached after epoch {epoch + 1}"}))
            break
    if "state" not in best:  # no validation split: the last epoch, threshold 0.5
        best = {"epoch": history[-1]["epoch"], "threshold": 0.5, "state": net.state_dict()}
    config = {"architecture": ARCHITECTURE, "widths": list(DEFAULT_WIDTHS), "input_size": INPUT_SIZE,
              "threshold": round(float(best["threshold"]), 4), "epoch": best["epoch"],
              "train_images": len(tr), "seed": seed}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": best["state"], "config": config}, out)
    summary = {"weights": str(out), "config": config, "minutes": round((time.time() - t0) / 60, 2),
               "params": sum(p.numel() for p in net.parameters()), "history": history}
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _rates(rows: list[FilterSample], p: np.ndarray, thr: float) -> dict[str, Any]:
    y = np.array([r.label for r in rows])
    pred = p >= thr
    return {"n": len(rows), "accuracy": round(float((pred == y).mean()), 4),
            "mean_probability": round(float(p.mean()), 4)}


def _bootstrap(rows: list[FilterSample], p: np.ndarray, thr: float, reps: int, seed: int) -> dict[str, list[float]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r.group].append(i)
    units = [np.array(v) for v in groups.values()]
    y = np.array([r.label for r in rows]).astype(bool)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        idx = np.concatenate([units[k] for k in rng.integers(0, len(units), len(units))])
        yy, pp = y[idx], p[idx]
        for name, value in _point_scores(yy, pp, thr).items():
            draws[name].append(value)

    def ci(values: list[float]) -> list[float] | None:
        v = np.asarray(values)[~np.isnan(values)]  # AUC, recall ... are undefined on a resample holding one class
        return [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)] if len(v) else None

    return {f"{name}_ci95": ci(values) for name, values in draws.items()}


def _point_scores(y: np.ndarray, p: np.ndarray, thr: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC, pathology recall and non-pathology specificity (nan when undefined)."""
    pred = p >= thr
    rate = lambda m: float((pred[m] == y[m]).mean()) if m.any() else float("nan")  # noqa: E731
    return {"accuracy": rate(np.ones_like(y)), "balanced_accuracy": _balanced(y, pred), "auc": auc(y, p),
            "recall": rate(y), "specificity": rate(~y)}


def split_scores(rows: list[FilterSample], p: np.ndarray, thr: float, reps: int, seed: int) -> dict[str, Any]:
    """Point scores of ``rows`` with their cluster-bootstrap 95 % intervals."""
    y = np.array([r.label for r in rows]).astype(bool)
    out: dict[str, Any] = {"n": len(rows), "positives": int(y.sum()), "negatives": int((~y).sum()),
                           "units": len({r.group for r in rows})}
    out.update({k: None if np.isnan(v) else round(v, 4) for k, v in _point_scores(y, p, thr).items()})
    out.update(_bootstrap(rows, p, thr, reps, seed))
    return out


def evaluate(data: Path, weights: Path | None = None, split: str = "test", threshold: float | None = None,
             jpeg: int | None = None, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score weights (default: the shipped ones) on ``split`` of a data set folder (module docstring). ``jpeg``
    re-encodes every image at that JPEG quality first (robustness check)."""
    from pathasst.finetune.data.filter_robustness import jpeg as jpeg_round_trip
    from pathasst.finetune.data.image_filter import load_filter

    model = load_filter(weights)
    thr = model.threshold if threshold is None else threshold
    rows = [r for r in read_manifest(data) if r.split == split]
    if not rows:
        raise ValueError(f"{data}: no images in split {split!r}")
    images = _load(data, rows)
    if jpeg is not None:
        images = [jpeg_round_trip(im, jpeg) for im in images]
    p = model.probabilities(images)
    per_source = {}
    for source in sorted({r.source for r in rows}):
        idx = [i for i, r in enumerate(rows) if r.source == source]
        sub = [rows[i] for i in idx]
        per_source[source] = {"label": "pathology" if sub[0].label else "other", "kind": sub[0].kind,
                              **_rates(sub, p[idx], thr)}
    sel = lambda kinds: [i for i, r in enumerate(rows) if r.kind in kinds]  # noqa: E731
    result: dict[str, Any] = {"split": split, "weights": str(model.path), "threshold": thr, "jpeg_quality": jpeg,
                              "bootstrap": f"{bootstrap} resamples of the split units (case, slide, source image, "
                                           "render seed), 2.5-97.5 percentiles"}
    for name, kinds in (("all", ("in_domain", "out_of_domain", "hard")), ("in_domain", ("in_domain",)),
                        ("in_domain_and_hard", ("in_domain", "hard")),
                        ("out_of_domain_positives_vs_in_domain_negatives", ("out_of_domain",))):
        idx = sel(kinds)
        if name.startswith("out_of_domain"):
            idx = idx + [i for i, r in enumerate(rows) if r.kind == "in_domain" and r.label == 0]
        if idx:
            result[name] = split_scores([rows[i] for i in idx], p[idx], thr, bootstrap, seed)
    # real images only: the shared-data tiles and the photos / micrographs that packages ship (no renders)
    real = [i for i, r in enumerate(rows) if r.label == 1 or r.source in REAL_NEGATIVES]
    if real:
        result["real_images_only"] = split_scores([rows[i] for i in real], p[real], thr, bootstrap, seed)
    result["per_source"] = per_source
    return result
