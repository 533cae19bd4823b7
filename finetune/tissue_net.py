"""Train the project's tissue network (:mod:`pathasst.tools.backends.tissue_net`) on EBHI-Seg, on the CPU or a GPU.

    python -m pathasst.finetune.tissue_net --data ../shared/data/ebhi_seg --out runs/tissue --minutes 90

Data: the EBHI-Seg images of the training cases of the fixed case split (:func:`pathasst.tools.datasets.ebhi_split`;
held-out cases are never read here); the validation cases choose the checkpoint. One network learns both tasks:
the image's diagnostic class (six classes; cross-entropy with label smoothing, images drawn with probability
proportional to ``count(class) ** -balance`` so rare classes are seen as often as ``balance`` asks) and the lesion
mask (cross-entropy + soft Dice; the two images without a mask add no segmentation loss).

Augmentation (every sample): random scale 0.86-1.25 and crop of ``--crop`` px, the 8 flips / rotations, HED stain
jitter, brightness / contrast / saturation / hue jitter, sometimes blur, noise and a JPEG re-encoding
(:mod:`pathasst.finetune.augment`). AdamW, time-based cosine schedule over ``--minutes``; an exponential moving
average of the weights (``--ema``; BatchNorm statistics re-estimated on the training images for it) is what is
validated and saved. Every ``--val-every`` minutes the model is scored
on the validation cases (balanced accuracy, macro F1, mean lesion Dice); the best (mean of balanced accuracy and
Dice) is written as ``OUT/tissue_net.pt``.

At the end the out-of-domain statistics are fitted: mean and shrunk covariance of the training images' embeddings;
the threshold on the squared Mahalanobis distance is the ``--ood-quantile`` of the validation images' distances.
``--evaluate CKPT`` scores a checkpoint on the held-out cases (the model card's figures; run once, after choosing);
``--domain-report SHARED_DATA`` measures the domain check of the shipped tool on in-domain and foreign images.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.augment import colour_jitter, dihedral, jpeg_round_trip
from pathasst.finetune.batchnorm import recalibrate_bn
from pathasst.tools.backends.tissue_net import EBHI_CLASSES

__all__ = ["EbhiSample", "augment", "fit_ood", "load_samples", "main", "save_checkpoint", "score", "train"]

#: assumed microns per pixel of EBHI-Seg's 224 px "400x" images (model card: lymphocyte nuclei of ~6 um span 4-5 px,
#: normal crypts of ~60 um about 50 px)
EBHI_MPP = 1.25


@dataclass
class EbhiSample:
    name: str
    case: str
    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) bool lesion mask
    label: int


def load_samples(data_dir: Path, splits: tuple[str, ...], limit: int | None = None) -> list[EbhiSample]:
    """Decode the images (and masks) of ``splits`` once."""
    from PIL import Image

    from pathasst.tools.datasets import ebhi_items

    out = []
    for it in ebhi_items(data_dir, splits)[:limit]:  # type: ignore[arg-type]
        with Image.open(it.image) as im:
            rgb = np.asarray(im.convert("RGB"))
        mask = None
        if it.mask is not None:
            with Image.open(it.mask) as im:
                mask = np.asarray(im.convert("L")) > 127
        out.append(EbhiSample(it.name, it.case, rgb, mask, EBHI_CLASSES.index(it.label)))
    return out


def augment(s: EbhiSample, crop: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rgb float (3, c, c) in [0, 1], lesion target (c, c) int64: 0/1, -100 where the image has no mask)."""
    import torch
    from torch.nn import functional as F

    h, w = s.rgb.shape[:2]
    scale = rng.uniform(0.86, 1.25)
    src = min(int(round(crop / scale)), h, w)
    y0, x0 = rng.integers(0, h - src + 1), rng.integers(0, w - src + 1)
    rgb = s.rgb[y0 : y0 + src, x0 : x0 + src]
    mask = (s.mask[y0 : y0 + src, x0 : x0 + src] if s.mask is not None else np.zeros((src, src), bool)).astype(np.float32)
    rgb, mask = dihedral([rgb, mask], rng)
    x = colour_jitter(rgb, rng)
    if rng.random() < 0.3:
        x = jpeg_round_trip(x, rng)
    t = torch.from_numpy(np.concatenate([x.transpose(2, 0, 1), mask[None]], 0))[None]
    if src != crop:
        t = F.interpolate(t, size=(crop, crop), mode="bilinear", align_corners=False, antialias=src > crop)
    t = t[0].numpy()
    target = (t[3] > 0.5).astype(np.int64) if s.mask is not None else np.full((crop, crop), -100, np.int64)
    return np.ascontiguousarray(t[:3]), target


def _losses(cls_logits: Any, seg_logits: Any, y: Any, seg: Any, smoothing: float) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    l_cls = F.cross_entropy(cls_logits, y, label_smoothing=smoothing)
    valid = (seg >= 0).float()
    if valid.sum() == 0:
        return {"cls": l_cls, "seg": l_cls * 0.0}
    l_ce = F.cross_entropy(seg_logits, seg, ignore_index=-100)
    p = torch.softmax(seg_logits, 1)[:, 1] * valid
    t = seg.clamp_min(0).float() * valid
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return {"cls": l_cls, "seg": l_ce + dice}


def _predict(model: Any, samples: list[EbhiSample], batch: int = 32) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Class probabilities (N, C), P(lesion) maps and embeddings (N, D) of whole images (eval mode)."""
    import torch

    from pathasst.tools.backends.tissue_net import STRIDE

    model.eval()
    probs, maps, embs = [], [], []
    with torch.inference_mode():
        for i in range(0, len(samples), batch):
            part = samples[i : i + batch]
            arr = np.stack([s.rgb for s in part])
            h, w = arr.shape[1:3]
            ph, pw = (-h) % STRIDE, (-w) % STRIDE
            arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
            x = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
            f = model.features(x)
            emb = f[-1].mean((2, 3))
            probs.append(torch.softmax(model.classifier(emb), 1).numpy())
            seg = torch.softmax(model.segment(f, x.shape[-2:]), 1)[:, 1, :h, :w].numpy()
            maps += list(seg)
            embs.append(emb.numpy())
    return np.concatenate(probs), maps, np.concatenate(embs)


def score(probs: np.ndarray, maps: list[np.ndarray], samples: list[EbhiSample], threshold: float = 0.5) -> dict[str, Any]:
    """Balanced accuracy, macro F1, confusion matrix; mean Dice and IoU of the lesion maps over images with masks."""
    from pathasst.tools.metrics import classification_scores, dice, mask_iou

    true = [EBHI_CLASSES[s.label] for s in samples]
    pred = [EBHI_CLASSES[int(i)] for i in probs.argmax(1)]
    out = classification_scores(true, pred, list(EBHI_CLASSES))
    with_mask = [(m, s.mask) for m, s in zip(maps, samples) if s.mask is not None]
    out["dice"] = float(np.mean([dice(t, m > threshold) for m, t in with_mask])) if with_mask else None
    out["iou"] = float(np.mean([mask_iou(t, m > threshold) for m, t in with_mask])) if with_mask else None
    return out


def fit_ood(train_emb: np.ndarray, val_emb: np.ndarray, quantile: float, shrink: float = 0.1) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean and precision (inverse of the covariance shrunk towards its mean variance by ``shrink``) of the
    training embeddings, and the ``quantile`` of the validation embeddings' squared Mahalanobis distances."""
    mean = train_emb.mean(0)
    cov = np.cov(train_emb - mean, rowvar=False)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    prec = np.linalg.inv(cov)
    d = val_emb - mean
    dist = np.einsum("ij,jk,ik->i", d, prec, d)
    return mean, prec, float(np.quantile(dist, quantile))


def save_checkpoint(path: Path, model: Any, config: dict[str, Any]) -> Path:
    """fp16 weights (the out-of-domain buffers stay float32) + config, written atomically."""
    import torch

    state = {k: (v.half() if v.is_floating_point() and not k.startswith("ood_") else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "config": config}, tmp)
    tmp.replace(path)
    return path


def _config(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from pathasst.tools.backends.tissue_net import TissueNetConfig

    cfg = TissueNetConfig(classes=list(EBHI_CLASSES), mpp=EBHI_MPP, widths=list(args["widths"]),
                          blocks=list(args["blocks"]), tile_size=224, extra=extra)
    return cfg.to_dict()


def train(
    data_dir: Path,
    out_dir: Path,
    minutes: float,
    widths: tuple[int, ...] = (32, 64, 128, 192, 256),
    blocks: tuple[int, ...] = (1, 1, 2, 2, 2),
    crop: int = 192,
    batch: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    balance: float = 0.75,
    smoothing: float = 0.1,
    seg_weight: float = 1.0,
    ema: float = 0.998,
    seed: int = 0,
    threads: int = 2,
    val_every: float = 3.0,
    max_steps: int | None = None,
    limit: int | None = None,
    ood_quantile: float = 0.99,
    device: str = "auto",
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """Train; returns a summary (validation history, best scores, the checkpoint path)."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from pathasst.finetune.nuclei_net import training_device
    from pathasst.tools.backends.tissue_net import build_tissue_net

    dev = training_device(device)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    train_s = load_samples(data_dir, ("train",), limit)
    val_s = load_samples(data_dir, ("validation",), limit)
    if not train_s or not val_s:
        raise ValueError(f"no training or validation images in {data_dir}")
    counts = np.bincount([s.label for s in train_s], minlength=len(EBHI_CLASSES)).astype(float)
    weights = np.array([max(counts[s.label], 1.0) ** -balance for s in train_s])
    weights /= weights.sum()
    print(f"{len(train_s)} training / {len(val_s)} validation images ({time.perf_counter() - t0:.0f} s); "
          f"class counts {dict(zip(EBHI_CLASSES, counts.astype(int).tolist()))}", file=log, flush=True)
    model = build_tissue_net(len(EBHI_CLASSES), widths, blocks).to(dev)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema)) if ema > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    budget, start = minutes * 60.0, time.perf_counter()
    last_val, best, step, history, recent = start, -1.0, 0, [], []
    ckpt_path = out_dir / "tissue_net.pt"
    run_args = {"widths": widths, "blocks": blocks}

    def validate(final: bool = False) -> None:
        nonlocal best, last_val
        net = averaged.module if averaged is not None else model
        if averaged is not None:
            recalibrate_bn(net, [s.rgb for s in train_s], net.features)
        probs, maps, _ = _predict(net, val_s)
        sc = score(probs, maps, val_s)
        elapsed = (time.perf_counter() - start) / 60
        combined = 0.5 * (sc["balanced_accuracy"] + (sc["dice"] or 0.0))
        row = {"minutes": round(elapsed, 1), "step": step, "loss": round(float(np.mean(recent)), 4) if recent else None,
               "balanced_accuracy": round(sc["balanced_accuracy"], 4), "macro_f1": round(sc["macro_f1"], 4),
               "accuracy": round(sc["accuracy"], 4), "dice": round(sc["dice"] or 0.0, 4), "score": round(combined, 4)}
        history.append(row)
        if combined > best:
            best = combined
            extra = {"training": {"data": "EBHI-Seg training cases (tools/data/ebhi_seg_split.json)", "steps": step,
                                  "minutes": round(elapsed, 1), "params": n_params, "validation": row}}
            save_checkpoint(ckpt_path, net, _config(run_args, extra))
            row["saved"] = True
        print(json.dumps(row), file=log, flush=True)
        recent.clear()
        last_val = time.perf_counter()

    model.train()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget or (max_steps is not None and step >= max_steps):
            break
        for g in opt.param_groups:
            warm = min(1.0, (step + 1) / 100)
            g["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        idx = rng.choice(len(train_s), size=batch, p=weights)
        items = [augment(train_s[i], crop, rng) for i in idx]
        x = torch.from_numpy(np.stack([it[0] for it in items])).to(dev)
        x = (x - 0.5) / 0.5
        seg = torch.from_numpy(np.stack([it[1] for it in items])).to(dev)
        y = torch.tensor([train_s[i].label for i in idx], device=dev)
        cls_logits, seg_logits, _ = model(x)
        parts = _losses(cls_logits, seg_logits, y, seg, smoothing)
        loss = parts["cls"] + seg_weight * parts["seg"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if averaged is not None:
            averaged.update_parameters(model)
        model.train()
        recent.append(float(loss.detach()))
        step += 1
        if time.perf_counter() - last_val >= val_every * 60:
            validate()
            model.train()
    validate(final=True)
    # out-of-domain statistics on the chosen checkpoint
    from pathasst.tools.backends.tissue_net import TissueNet

    chosen = TissueNet.load(ckpt_path, "--out")
    _, _, tr_emb = _predict(chosen.model, train_s)
    _, _, va_emb = _predict(chosen.model, val_s)
    mean, prec, thr = fit_ood(tr_emb.astype(np.float64), va_emb.astype(np.float64), ood_quantile)
    with torch.no_grad():
        chosen.model.ood_mean.copy_(torch.from_numpy(mean).float())
        chosen.model.ood_precision.copy_(torch.from_numpy(prec).float())
    cfg = chosen.config.to_dict()
    cfg["ood_threshold"] = thr
    cfg.setdefault("training", {})["ood"] = {"quantile_of_validation": ood_quantile, "threshold": round(thr, 3)}
    save_checkpoint(ckpt_path, chosen.model, cfg)
    summary = {"params": n_params, "steps": step, "best": best, "history": history, "checkpoint": str(ckpt_path),
               "ood_threshold": thr}
    (out_dir / "train_log.json").write_text(json.dumps(summary, indent=1))
    return summary


def evaluate(ckpt: Path, data_dir: Path, split: str = "held_out") -> dict[str, Any]:
    """Score a checkpoint's heads on one split's images (whole images, as the tools run them)."""
    from pathasst.tools.backends.tissue_net import TissueNet

    net = TissueNet.load(ckpt, "--evaluate")
    samples = load_samples(data_dir, (split,))
    probs, maps, emb = _predict(net.model, samples)
    out = score(probs, maps, samples, net.config.seg_threshold)
    dist = net.ood_distance(emb)
    if net.config.ood_threshold is not None:
        out["flagged_out_of_domain"] = float(np.mean(dist > net.config.ood_threshold))
    out["n_images"] = len(samples)
    out["n_cases"] = len({s.case for s in samples})
    return out


def domain_report(data_root: Path, limit: int = 60) -> dict[str, Any]:
    """How often ``tissue_classification`` flags images as out of its domain, per source in ``shared/data``: the
    held-out EBHI-Seg cases (in domain) against breast H&E (UCSB TMA, AMi-Br crops), other H&E tiles, CoNSeP colorectal
    tiles at 40x (with and without their mpp) and Ki-67 IHC. At most ``limit`` images per source, spread evenly."""
    from PIL import Image

    from pathasst.core.imaging import ImageData
    from pathasst.core.settings import Settings
    from pathasst.tools.base import call_tool
    from pathasst.tools.datasets import ebhi_items
    from pathasst.tools.tissue_classification import TissueClassificationTool

    tool = TissueClassificationTool(Settings(_env_file=None))
    sources: dict[str, tuple[list[Path], float | None]] = {
        "ebhi_seg held-out cases (colorectal, in domain)": ([it.image for it in ebhi_items(data_root / "ebhi_seg", ("held_out",))], None),
        "bisque_breast (breast TMA H&E)": (sorted((data_root / "bisque_breast" / "images").glob("*.jpg")), None),
        "mitosis_amibr (breast H&E crops, 40x)": (sorted((data_root / "mitosis_amibr" / "normal").glob("*.jpg")), None),
        "tiles (other H&E)": (sorted((data_root / "tiles").glob("*.*")), None),
        "consep_train at 0.25 um/px (colorectal, 40x)": (sorted((data_root / "consep_train" / "images").glob("*.*")), 0.25),
        "consep_train, mpp not given": (sorted((data_root / "consep_train" / "images").glob("*.*")), None),
        "deepliif_ki67 (Ki-67 IHC)": (sorted(data_root.glob("deepliif_ki67/*_ihc.png")), None),
    }
    out: dict[str, Any] = {}
    for name, (paths, mpp) in sources.items():
        if len(paths) > limit:
            paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit)]
        flags, tops = [], {}
        for path in paths:
            with Image.open(path) as im:
                image = ImageData(np.asarray(im.convert("RGB")), name=path.name, mpp=mpp)
            rec, res = call_tool(tool, {"image": path.name}, lambda n, r, m, _i=image: _i)
            o = rec.output or {}
            flags.append(o.get("in_domain") is False or o.get("top_label") is None)
            tops[o.get("top_label")] = tops.get(o.get("top_label"), 0) + 1
        out[name] = {"n": len(paths), "flagged": float(np.mean(flags)) if flags else None, "top_labels": tops}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m pathasst.finetune.tissue_net", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="EBHI-Seg folder (labels.csv, images/, masks/)")
    p.add_argument("--out", type=Path, help="output folder (tissue_net.pt, train_log.json)")
    p.add_argument("--minutes", type=float, default=90.0)
    p.add_argument("--widths", type=int, nargs=5, default=[32, 64, 128, 192, 256])
    p.add_argument("--blocks", type=int, nargs=5, default=[1, 1, 2, 2, 2])
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--balance", type=float, default=0.75, help="sampling weight exponent: count(class) ** -balance")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-every", type=float, default=3.0, help="minutes between validations")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--limit", type=int, help="use only the first N images of each split (tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--evaluate", type=Path, help="score this checkpoint on the held-out cases and exit")
    p.add_argument("--split", default="held_out", choices=["train", "validation", "held_out"])
    p.add_argument("--domain-report", type=Path, metavar="SHARED_DATA",
                   help="print how often the shipped tool flags each shared-data source as out of domain, and exit")
    a = p.parse_args(argv)
    if a.domain_report:
        result = domain_report(a.domain_report)
    elif a.data is None:
        p.error("--data is required")
    elif a.evaluate:
        result = evaluate(a.evaluate, a.data, a.split)
    else:
        if a.out is None:
            p.error("--out is required for training")
        result = train(a.data, a.out, a.minutes, tuple(a.widths), tuple(a.blocks), a.crop, a.batch, a.lr,
                       balance=a.balance, ema=a.ema, seed=a.seed, threads=a.threads, val_every=a.val_every,
                       max_steps=a.max_steps, limit=a.limit, device=a.device)
    print(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
