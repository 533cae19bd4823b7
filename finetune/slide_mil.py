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

With 40 images there is no room for a held-out split: the figures are **leave-one-TMA-group-out** cross-validation (7
folds; every image scored by a head trained without its group), with the hyper-parameters fixed beforehand; the
mean-pooled embedding with logistic regression is the simple baseline in the same run. The shipped head is then
trained on all 40 images (``OUT/slide_abmil.pt``); the fold heads go to ``OUT/slide_abmil_cv.pt`` so that
``pathasst tools eval slide_classification DATA --held-out`` can score each image with the head that never saw its
group.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.augment import colour_jitter, dihedral, jpeg_round_trip

__all__ = ["Bag", "embed_bags", "fit_head", "logistic_baseline", "main", "train"]

LABELS = ["benign", "malignant"]


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


def fit_head(bags: list[Bag], epochs: int = 60, hidden: int = 64, attention: int = 32, lr: float = 5e-4,
             weight_decay: float = 1e-2, bag_dropout: float = 0.5, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """Train an ABMIL head on ``bags``; returns the module and the feature mean / std it expects."""
    import torch
    from torch.nn import functional as F

    from pathasst.tools.backends.abmil import build_abmil

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    allv = np.concatenate([v for b in bags for v in b.views])
    mean, std = allv.mean(0), allv.std(0) + 1e-6
    model = build_abmil(allv.shape[1], len(LABELS), hidden, attention, gated=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
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
    model.eval()
    return model, mean, std


def predict(model: Any, mean: np.ndarray, std: np.ndarray, x: np.ndarray) -> float:
    """P(malignant) of one bag (view 0)."""
    import torch

    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(((x - mean) / std).astype(np.float32)))
        return float(torch.softmax(logits, -1)[1])


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


def _state(model: Any) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(data_dir: Path, out_dir: Path, views: int = 4, tile_mpp: float = 0.5, tile_size: int = 224,
          min_tissue: float = 0.5, embed_mpp: float | None = None, epochs: int = 60, seed: int = 0,
          log: Any = sys.stderr, embedder: str = "hed_texture") -> dict[str, Any]:
    """Cross-validate by TMA group, then train the shipped head on every image; write both files."""
    import io

    import torch

    from pathasst.tools.metrics import binary_auc

    log = log if log is not None else io.StringIO()
    bags = embed_bags(data_dir, views, tile_mpp, tile_size, min_tissue, embed_mpp, seed, log, embedder)
    groups = sorted({b.group for b in bags})
    oof, oof_lr, folds = {}, {}, []
    base_cfg = {"labels": LABELS, "tile_mpp": tile_mpp, "tile_size": tile_size, "min_tissue": min_tissue,
                "embedder": embedder, "embed_mpp": embed_mpp}
    for g in groups:
        tr = [b for b in bags if b.group != g]
        te = [b for b in bags if b.group == g]
        model, mean, std = fit_head(tr, epochs=epochs, seed=seed)
        for b in te:
            oof[b.name] = predict(model, mean, std, b.views[0])
        for b, p in zip(te, logistic_baseline(tr, te)):
            oof_lr[b.name] = p
        folds.append({"group": g, "state_dict": _state(model),
                      "config": {**base_cfg, "feature_mean": mean.tolist(), "feature_std": std.tolist()}})
        print(f"fold {g}: " + ", ".join(f"{b.name[-18:]} {oof[b.name]:.2f}" for b in te), file=log, flush=True)
    y = np.array([b.label for b in bags], bool)
    p = np.array([oof[b.name] for b in bags])
    p_lr = np.array([oof_lr[b.name] for b in bags])
    cv = {"folds": len(groups), "auc": binary_auc(p, y), "accuracy": float(np.mean((p > 0.5) == y)),
          "baseline_mean_pool_logistic": {"auc": binary_auc(p_lr, y), "accuracy": float(np.mean((p_lr > 0.5) == y))},
          "baseline_majority": {"auc": 0.5, "accuracy": float(max(y.mean(), 1 - y.mean()))}}
    model, mean, std = fit_head(bags, epochs=epochs, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {**base_cfg, "feature_mean": mean.tolist(), "feature_std": std.tolist(),
           "training": {"data": "bisque_breast (UCSB breast TMA, 40 images, 7 groups)", "views": views,
                        "epochs": epochs, "cross_validation": cv}}
    torch.save({"state_dict": _state(model), "config": cfg}, out_dir / "slide_abmil.pt")
    torch.save({"folds": folds}, out_dir / "slide_abmil_cv.pt")
    summary = {"cross_validation": cv, "n_images": len(bags), "tiles_per_image": float(np.mean([len(b.views[0]) for b in bags])),
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
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    result = train(a.data, a.out, a.views, a.tile_mpp, a.tile_size, a.min_tissue, a.embed_mpp, a.epochs, a.seed,
                   embedder=a.embedder)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
