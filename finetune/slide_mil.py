"""Train the shipped slide classifier: an ABMIL head over tile descriptors, on the UCSB breast set.

    python -m pathasst.finetune.slide_mil --data ../shared/data/bisque_breast --out runs/slide

Data: ``bisque_breast`` (40 breast TMA H&E images, 896 x 768, benign / malignant, 7 TMA groups; ``labels.csv``:
image, label, group). Tiles are cut exactly as ``slide_classification`` cuts them from a plain image
(:func:`pathasst.tools.slide_classification.pixel_tiles`; no mpp given, so at the image's own resolution) and
described with ``--embedder``: the ``hed-texture-v1`` descriptor (default; stain, texture, nuclear size and shape,
no weights) or the shipped tissue network's pooled features. Each image is also
embedded in ``--views`` augmented views (flips / rotations, HED stain and colour jitter, blur, JPEG), one of which is
drawn per epoch; half of a bag's tiles are dropped at random in each step (bag dropout). Features are standardised
with the training tiles' mean and standard deviation (stored in the head's config).

Every head is a **seed ensemble**: the mean of ``--seeds`` (5) ABMIL heads trained with different seeds (their class
probabilities and attention weights are averaged; :func:`pathasst.tools.backends.abmil.ensemble_state_dict`).

With 40 images there is no room for a held-out split: the figures are **nested leave-one-TMA-group-out**
cross-validation. The hyper-parameters (epochs x weight decay, :data:`GRID`, fixed in code before any run) are chosen
for each outer fold (one TMA group held out) by an inner leave-one-group-out cross-validation over the other groups
(pooled inner AUC; ties go to the earlier setting in :data:`GRID`); the fold head is then trained on those groups with
the chosen setting and scores the held-out group. The mean-pooled embedding with logistic regression and the majority
class are the baselines in the same run. The shipped head: an inner cross-validation over all groups chooses the
setting, then it is trained on all 40 images (``OUT/slide_abmil.pt``); the fold heads go to ``OUT/slide_abmil_cv.pt``
so that ``pathasst tools eval slide_classification DATA --held-out`` can score each image with the head that never saw
its group. ``--no-nested`` skips the inner loops and uses ``--epochs`` / ``--weight-decay`` (a fast path).

Training runs are shared: one run of a seed on a set of groups keeps its head after each epoch count of the grid
(the learning rate is constant, so the head after 30 of 120 epochs is the 30-epoch head), and an inner fold of one
outer fold trains on the same groups as an inner fold of another, so each (groups, weight decay, seed) run is trained
once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.augment import colour_jitter, dihedral, jpeg_round_trip

__all__ = ["GRID", "SEEDS", "Bag", "HeadRuns", "choose_setting", "embed_bags", "fit_head", "fit_snapshots",
           "logistic_baseline", "main", "predict", "train"]

LABELS = ["benign", "malignant"]
#: (epochs, weight decay) settings the nested cross-validation chooses from, fixed before any run; most regularised
#: first, so that ties go to fewer epochs and stronger weight decay
GRID: tuple[tuple[int, float], ...] = ((30, 1e-1), (30, 1e-2), (60, 1e-1), (60, 1e-2), (120, 1e-1), (120, 1e-2))
#: heads (seeds) per ensemble
SEEDS = 5
Setting = tuple[int, float]


@dataclass
class Bag:
    name: str
    group: str
    label: int
    views: list[np.ndarray]  # one (N_tiles, D) embedding array per view (view 0 = the image as it is)


def _view(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    (rgb,) = dihedral([rgb], rng)
    x = colour_jitter(rgb, rng)
    if rng.random() < 0.5:
        x = jpeg_round_trip(x, rng)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


def tile_embedder(name: str, tile_mpp: float, embed_mpp: float | None) -> Any:
    """The tile embedder the tool builds for a head with ``embedder: name``."""
    if name == "tissue_net":
        from pathasst.tools.backends.tissue_tiles import TissueNetEmbedder, shipped_tissue_net

        return TissueNetEmbedder(shipped_tissue_net(), tile_mpp, embed_mpp)
    if name == "hed_texture":
        from pathasst.core.descriptor import HEDTextureEmbedder

        return HEDTextureEmbedder()
    raise ValueError(f"embedder {name!r}: use tissue_net or hed_texture")


def embed_bags(data_dir: Path, views: int, tile_mpp: float, tile_size: int, min_tissue: float,
               embed_mpp: float | None, seed: int = 0, log: Any = sys.stderr, embedder: str = "hed_texture") -> list[Bag]:
    """Embed every image's tiles (and ``views - 1`` augmented copies) as the tool does."""
    from PIL import Image

    from pathasst.core.imaging import ImageData
    from pathasst.tools.datasets import read_csv_rows
    from pathasst.tools.slide_classification import pixel_tiles

    embed = tile_embedder(embedder, tile_mpp, embed_mpp)
    rng = np.random.default_rng(seed)
    bags = []
    for row in read_csv_rows(data_dir / "labels.csv"):
        path = next(data_dir.glob(f"images/{row['image']}.*"))
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        embs = []
        for v in range(views):
            img = ImageData(rgb if v == 0 else _view(rgb, rng), name=path.name)
            rects, read = pixel_tiles(img, tile_mpp, tile_size, min_tissue)
            embs.append(embed.embed_images(read(rects)))
        bags.append(Bag(row["image"], row["group"], LABELS.index(row["label"]), embs))
        print(f"{row['image']}: {len(embs[0])} tiles", file=log, flush=True)
    return bags


def fit_snapshots(bags: list[Bag], epochs: Sequence[int], weight_decay: float = 1e-2, seed: int = 0, hidden: int = 64,
                  attention: int = 32, lr: float = 5e-4, bag_dropout: float = 0.5) -> tuple[dict[int, Any], np.ndarray, np.ndarray]:
    """Train one ABMIL head on ``bags`` for ``max(epochs)`` epochs; returns a copy of it after each of ``epochs``
    (epochs -> module) and the feature mean / std it expects."""
    import copy

    import torch
    from torch.nn import functional as F

    from pathasst.tools.backends.abmil import build_abmil

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    allv = np.concatenate([v for b in bags for v in b.views])
    mean, std = allv.mean(0), allv.std(0) + 1e-6
    model = build_abmil(allv.shape[1], len(LABELS), hidden, attention, gated=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    snapshots = {}
    model.train()
    for epoch in range(1, max(epochs) + 1):
        for i in rng.permutation(len(bags)):
            b = bags[i]
            x = b.views[int(rng.integers(len(b.views)))]
            if len(x) > 2 and bag_dropout > 0:
                keep = rng.random(len(x)) >= bag_dropout
                if keep.sum() >= 1:
                    x = x[keep]
            xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
            logits, _ = model(xt)
            loss = F.cross_entropy(logits[None], torch.tensor([b.label]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in epochs:
            snapshots[epoch] = copy.deepcopy(model).eval()
    return snapshots, mean, std


def fit_head(bags: list[Bag], epochs: int = 60, weight_decay: float = 1e-2, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """Train one ABMIL head on ``bags``; returns the module and the feature mean / std it expects."""
    snapshots, mean, std = fit_snapshots(bags, [epochs], weight_decay, seed)
    return snapshots[epochs], mean, std


def predict(models: list[Any], mean: np.ndarray, std: np.ndarray, x: np.ndarray) -> float:
    """P(malignant) of one bag (view 0): the mean over the ensemble's heads, computed as the tool computes it."""
    import torch

    xs = (x.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    probs = []
    with torch.inference_mode():
        for model in models:
            logits, _ = model(torch.from_numpy(xs))
            probs.append(float(torch.softmax(logits.float(), -1)[1]))
    return float(np.mean(probs))


class HeadRuns:
    """Seed ensembles trained on the bags outside a set of groups, each (groups, weight decay, seed) run trained once
    and kept after every epoch count of the grid."""

    def __init__(self, bags: list[Bag], grid: Sequence[Setting], seeds: int = SEEDS, seed: int = 0, log: Any = None) -> None:
        self.bags, self.grid, self.seeds, self.seed, self.log = bags, tuple(grid), seeds, seed, log
        self._runs: dict[tuple[frozenset[str], float], list[tuple[dict[int, Any], np.ndarray, np.ndarray]]] = {}

    def ensemble(self, held_out: frozenset[str], setting: Setting) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """The heads (one per seed) trained without ``held_out`` with ``setting``, and their feature mean / std."""
        epochs, wd = setting
        key = (held_out, wd)
        if key not in self._runs:
            train = [b for b in self.bags if b.group not in held_out]
            keep = sorted({e for e, _ in self.grid})
            self._runs[key] = [fit_snapshots(train, keep, wd, self.seed + k) for k in range(self.seeds)]
            if self.log is not None:
                print(f"trained {self.seeds} heads without {sorted(held_out)}, weight decay {wd:g}", file=self.log, flush=True)
        runs = self._runs[key]
        return [snaps[epochs] for snaps, _, _ in runs], runs[0][1], runs[0][2]


def _setting_name(setting: Setting) -> str:
    return f"{setting[0]} epochs, wd {setting[1]:g}"


def choose_setting(runs: HeadRuns, held_out: frozenset[str] = frozenset()) -> tuple[Setting, dict[str, float]]:
    """The grid setting with the best pooled AUC in a leave-one-group-out CV over the groups not in ``held_out``
    (ties: the earlier setting), and every setting's inner AUC."""
    from pathasst.tools.metrics import binary_auc

    inner = sorted({b.group for b in runs.bags} - held_out)
    scores = {}
    for setting in runs.grid:
        p, y = [], []
        for h in inner:
            models, mean, std = runs.ensemble(held_out | {h}, setting)
            for b in (b for b in runs.bags if b.group == h):
                p.append(predict(models, mean, std, b.views[0]))
                y.append(b.label == 1)
        scores[setting] = binary_auc(np.array(p), np.array(y))
    best = max(runs.grid, key=lambda s: scores[s])
    return best, {_setting_name(s): round(float(a), 4) for s, a in scores.items()}


def logistic_baseline(train: list[Bag], test: list[Bag], c: float = 1.0) -> list[float]:
    """Mean-pooled embeddings, standardised, L2-regularised logistic regression (gradient descent): P(malignant)."""
    xtr = np.stack([b.views[0].mean(0) for b in train])
    ytr = np.array([b.label for b in train], float)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr = (xtr - mu) / sd
    w, bias = np.zeros(xtr.shape[1]), 0.0
    for _ in range(2000):
        p = 1 / (1 + np.exp(-(xtr @ w + bias)))
        w -= 0.1 * (xtr.T @ (p - ytr) / len(ytr) + w / (c * len(ytr)))
        bias -= 0.1 * float(np.mean(p - ytr))
    xte = (np.stack([b.views[0].mean(0) for b in test]) - mu) / sd
    return list(1 / (1 + np.exp(-(xte @ w + bias))))


def _ensemble_state(models: list[Any]) -> dict[str, Any]:
    from pathasst.tools.backends.abmil import ensemble_state_dict

    return ensemble_state_dict([{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in models])


def _head_config(base: dict[str, Any], mean: np.ndarray, std: np.ndarray, setting: Setting, seeds: int) -> dict[str, Any]:
    return {**base, "feature_mean": mean.tolist(), "feature_std": std.tolist(), "ensemble": seeds,
            "epochs": setting[0], "weight_decay": setting[1]}


def train(data_dir: Path, out_dir: Path, views: int = 4, tile_mpp: float = 0.5, tile_size: int = 224,
          min_tissue: float = 0.5, embed_mpp: float | None = None, epochs: int = 60, seed: int = 0,
          log: Any = sys.stderr, embedder: str = "hed_texture", nested: bool = True, weight_decay: float = 1e-2,
          seeds: int = SEEDS, grid: Sequence[Setting] = GRID) -> dict[str, Any]:
    """Nested cross-validation by TMA group, then the shipped head on every image; write both files. Without
    ``nested`` every head uses ``epochs`` / ``weight_decay``."""
    import io

    import torch

    from pathasst.tools.metrics import binary_auc

    log = log if log is not None else io.StringIO()
    bags = embed_bags(data_dir, views, tile_mpp, tile_size, min_tissue, embed_mpp, seed, log, embedder)
    groups = sorted({b.group for b in bags})
    fixed = (epochs, weight_decay)
    runs = HeadRuns(bags, grid if nested else (fixed,), seeds, seed, log)
    oof, oof_lr, folds, chosen = {}, {}, [], []
    base_cfg = {"labels": LABELS, "tile_mpp": tile_mpp, "tile_size": tile_size, "min_tissue": min_tissue,
                "embedder": embedder, "embed_mpp": embed_mpp}
    for g in groups:
        out = frozenset({g})
        setting, inner = choose_setting(runs, out) if nested else (fixed, {})
        models, mean, std = runs.ensemble(out, setting)
        tr = [b for b in bags if b.group != g]
        te = [b for b in bags if b.group == g]
        for b in te:
            oof[b.name] = predict(models, mean, std, b.views[0])
        for b, p in zip(te, logistic_baseline(tr, te)):
            oof_lr[b.name] = p
        folds.append({"group": g, "state_dict": _ensemble_state(models),
                      "config": _head_config(base_cfg, mean, std, setting, seeds)})
        chosen.append({"group": g, "epochs": setting[0], "weight_decay": setting[1], "inner_auc": inner})
        print(f"fold {g}: {_setting_name(setting)}; " + ", ".join(f"{b.name[-18:]} {oof[b.name]:.2f}" for b in te),
              file=log, flush=True)
    y = np.array([b.label for b in bags], bool)
    p = np.array([oof[b.name] for b in bags])
    p_lr = np.array([oof_lr[b.name] for b in bags])
    cv = {"folds": len(groups), "nested": nested, "seeds": seeds, "grid": [list(s) for s in runs.grid],
          "auc": binary_auc(p, y), "accuracy": float(np.mean((p > 0.5) == y)), "chosen": chosen,
          "baseline_mean_pool_logistic": {"auc": binary_auc(p_lr, y), "accuracy": float(np.mean((p_lr > 0.5) == y))},
          "baseline_majority": {"auc": 0.5, "accuracy": float(max(y.mean(), 1 - y.mean()))}}
    setting, inner = choose_setting(runs) if nested else (fixed, {})
    models, mean, std = runs.ensemble(frozenset(), setting)
    shipped = {"epochs": setting[0], "weight_decay": setting[1], "inner_auc": inner}
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {**_head_config(base_cfg, mean, std, setting, seeds),
           "training": {"data": "bisque_breast (UCSB breast TMA, 40 images, 7 groups)", "views": views,
                        "chosen": shipped, "cross_validation": cv}}
    torch.save({"state_dict": _ensemble_state(models), "config": cfg}, out_dir / "slide_abmil.pt")
    torch.save({"folds": folds}, out_dir / "slide_abmil_cv.pt")
    summary = {"cross_validation": cv, "shipped_head": shipped, "n_images": len(bags),
               "tiles_per_image": float(np.mean([len(b.views[0]) for b in bags])),
               "oof": {b.name: round(oof[b.name], 4) for b in bags}}
    (out_dir / "train_log.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m pathasst.finetune.slide_mil", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="bisque_breast folder (labels.csv, images/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--views", type=int, default=4, help="embedded views per image (1 = no augmentation)")
    p.add_argument("--tile-mpp", type=float, default=0.5, help="um/px tiles are cut at when the mpp is known")
    p.add_argument("--tile-size", type=int, default=224)
    p.add_argument("--min-tissue", type=float, default=0.5)
    p.add_argument("--embed-mpp", type=float, help="tissue_net: resample tiles to this um/px before embedding")
    p.add_argument("--embedder", default="hed_texture", choices=["hed_texture", "tissue_net"],
                   help="tile features: the hed-texture descriptor (default) or the tissue network's")
    p.add_argument("--nested", action=argparse.BooleanOptionalAction, default=True,
                   help="choose epochs and weight decay by inner cross-validation (default); --no-nested: use the two below")
    p.add_argument("--epochs", type=int, default=60, help="--no-nested: epochs of every head")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="--no-nested: weight decay of every head")
    p.add_argument("--seeds", type=int, default=SEEDS, help="heads (seeds) per ensemble")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the heads are tiny: one thread is as fast and leaves the other cores free
    result = train(a.data, a.out, a.views, a.tile_mpp, a.tile_size, a.min_tissue, a.embed_mpp, a.epochs, a.seed,
                   embedder=a.embedder, nested=a.nested, weight_decay=a.weight_decay, seeds=a.seeds)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
