"""Train the project's mitosis detector (:mod:`pathasst.tools.backends.mitosis_net`) on AMi-Br, on the CPU or a GPU.

    python -m pathasst.finetune.mitosis_net --data ../shared/data/mitosis_amibr --out runs/mitosis --minutes 60

Data: the AMi-Br crops of the training slides of the fixed slide split
(:func:`pathasst.tools.datasets.amibr_split`; held-out slides are never read here); the validation slides choose the
checkpoint and the detection threshold. Each 128 px crop (40x, 0.25 um/px) is centred on one mitotic figure; the
other figures of the same slide that fall inside the crop (from ``AMI-BR.csv``) are positives too, and every other
pixel is a negative, so the ordinary nuclei, lymphocytes and apoptotic bodies around each figure are the hard
negatives, from the same slide and scanner.

Targets at 1/4 resolution: a Gaussian (sigma ``--sigma`` um) around each figure's centre, trained with CenterNet's
penalty-reduced focal loss; the atypical channel is trained with class-weighted binary cross-entropy where the
target Gaussian exceeds 0.5 (the majority vote of three experts). Augmentation: a random crop of ``--crop`` px at a
random scale (0.85-1.2) placed so that the centred figure lands anywhere in it, the 8 flips / rotations, HED stain
jitter, colour jitter, blur, noise and JPEG re-encoding. AdamW, time-based cosine schedule, an exponential moving
average of the weights (BatchNorm statistics re-estimated on the training crops; validated and saved).

Validation (every ``--val-every`` minutes): on every validation crop, the peaks of P(mitosis); the threshold is the
lowest whose false detections (peaks farther than 8 um from any known figure) stay at or under ``--max-fp`` per
crop; the score is the recall of the centred figure at that threshold plus the atypical balanced accuracy of the
found figures. The best checkpoint is written with its threshold as ``OUT/mitosis_net.pt``. ``--evaluate CKPT``
scores a checkpoint on the held-out slides (the model card's figures).
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

from pathasst.finetune.augment import colour_jitter, jpeg_round_trip
from pathasst.finetune.batchnorm import recalibrate_bn
from pathasst.tools.evaluate_mitosis import MATCH_UM, score_figures

__all__ = ["MitosisSample", "augment", "load_negatives", "load_samples", "main", "score_crops", "train"]

MPP = 0.25
#: CoNSeP training source images whose tiles validate the mitosis-free constraint (the nuclei trainer's validation
#: sources too); the held-out sources 16-26 are never read by this trainer
NEGATIVE_VALIDATION_SOURCES = frozenset({2, 11})


@dataclass
class MitosisSample:
    name: str
    slide: str
    rgb: np.ndarray  # (128, 128, 3) uint8, figure at the centre
    figures: np.ndarray  # (K, 2) x, y in crop pixels; row 0 = the centred figure
    atypical: np.ndarray  # (K,) bool


def load_samples(data_dir: Path, splits: tuple[str, ...], limit: int | None = None) -> list[MitosisSample]:
    from PIL import Image

    from pathasst.tools.datasets import amibr_items

    out = []
    for it in amibr_items(data_dir, splits)[:limit]:  # type: ignore[arg-type]
        with Image.open(it.image) as im:
            rgb = np.asarray(im.convert("RGB"))
        h, w = rgb.shape[:2]
        c = np.array([[w / 2.0, h / 2.0]])
        others = np.array([[w / 2.0 + dx, h / 2.0 + dy] for dx, dy, _ in it.others]).reshape(-1, 2)
        figs = np.concatenate([c, others])
        aty = np.array([it.atypical, *(a for _, _, a in it.others)], bool)
        out.append(MitosisSample(it.name, it.slide, rgb, figs, aty))
    return out


def load_negatives(consep_dir: Path, sources: frozenset[int] | set[int],
                   limit: int | None = None) -> list[MitosisSample]:
    """Mitosis-free crops: whole CoNSeP tiles (40x, 0.25 um/px, colorectal) of the given source images.

    CoNSeP labels no mitoses, and a colorectal tile holds one only rarely, so every tile is taken as a field without
    figures: the ordinary nuclei of another organ, laboratory and scanner that AMi-Br's crops (each centred on a
    figure, two breast cohorts) never show the network."""
    from PIL import Image

    from pathasst.finetune.nuclei_pixel import source_image
    from pathasst.tools.evaluate import nuclei_tiles

    out = []
    for name in [n for n in nuclei_tiles(consep_dir) if source_image(n) in sources][:limit]:
        path = next(p for p in (consep_dir / "images" / f"{name}{ext}" for ext in (".png", ".jpg")) if p.exists())
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        out.append(MitosisSample(name, f"consep_{source_image(name)}", rgb, np.zeros((0, 2)), np.zeros(0, bool)))
    return out


def _targets(figs: np.ndarray, aty: np.ndarray, size: int, sigma_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap (s, s), atypical target (s, s) and atypical weight mask (s, s) on the 1/4 grid of a ``size`` crop."""
    from pathasst.tools.backends.mitosis_net import OUT_STRIDE

    s = size // OUT_STRIDE
    heat = np.zeros((s, s), np.float32)
    aty_t = np.zeros((s, s), np.float32)
    aty_w = np.zeros((s, s), np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    sig = sigma_px / OUT_STRIDE
    for (x, y), a in zip(figs, aty):
        cx, cy = (x - OUT_STRIDE / 2) / OUT_STRIDE, (y - OUT_STRIDE / 2) / OUT_STRIDE  # centre in grid-cell units
        if not (-3 * sig <= cx <= s + 3 * sig and -3 * sig <= cy <= s + 3 * sig):
            continue
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig * sig))
        ix, iy = int(round(cx)), int(round(cy))
        if 0 <= ix < s and 0 <= iy < s:
            g[iy, ix] = 1.0
        heat = np.maximum(heat, g)
        near = g > 0.5
        aty_t[near] = float(a)
        aty_w[near] = 1.0
    return heat, aty_t, aty_w


def augment(s: MitosisSample, crop: int, rng: np.random.Generator, sigma_px: float,
            low_res: float = 0.0) -> tuple[np.ndarray, ...]:
    """(rgb float (3, c, c), heatmap, atypical target, atypical weight) of a random augmented crop; with probability
    ``low_res`` the image is first halved and enlarged again (a 20x scan). A sample without figures is cropped
    anywhere."""
    from PIL import Image

    from pathasst.finetune.augment import dihedral

    scale = rng.uniform(0.85, 1.2)
    h, w = s.rgb.shape[:2]
    src = s.rgb
    if rng.random() < low_res:  # a 20x scan resampled to 40x, as the tool does with 0.5 um/px images
        half = Image.fromarray(src).resize((w // 2, h // 2), Image.BILINEAR)
        src = np.asarray(half.resize((w, h), Image.BILINEAR))
    big = np.asarray(Image.fromarray(src).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    figs = s.figures * scale
    bh, bw = big.shape[:2]
    if bh < crop or bw < crop:  # pad by reflection up to the crop size
        py, px = max(0, crop - bh), max(0, crop - bw)
        big = np.pad(big, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode="reflect")
        figs = figs + [px // 2, py // 2]
        bh, bw = big.shape[:2]
    if len(figs):
        cx, cy = figs[0]
        margin = 6
        x0 = int(rng.integers(max(0, int(cx) - crop + margin), min(bw - crop, int(cx) - margin) + 1))
        y0 = int(rng.integers(max(0, int(cy) - crop + margin), min(bh - crop, int(cy) - margin) + 1))
    else:
        x0, y0 = int(rng.integers(0, bw - crop + 1)), int(rng.integers(0, bh - crop + 1))
    rgb = big[y0 : y0 + crop, x0 : x0 + crop]
    figs = figs - [x0, y0]
    heat, aty_t, aty_w = _targets(figs, s.atypical, crop, sigma_px)
    rgb, heat, aty_t, aty_w = dihedral([rgb, heat, aty_t, aty_w], rng)
    x = colour_jitter(rgb, rng)
    if rng.random() < 0.3:
        x = jpeg_round_trip(x, rng)
    return np.ascontiguousarray(x.transpose(2, 0, 1)), heat, aty_t, aty_w


def focal_loss(logit: Any, heat: Any) -> Any:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of peaks."""
    import torch
    from torch.nn import functional as F

    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    pos_loss = -F.logsigmoid(logit) * (1 - p) ** 2 * pos
    neg_loss = -F.logsigmoid(-logit) * p**2 * (1 - heat) ** 4 * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1.0)


def score_crops(detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]], samples: list[MitosisSample],
                mpp: float = MPP) -> dict[str, Any]:
    """Recall of the centred figures, false detections per crop, atypical balanced accuracy of the found ones, scored
    as ``pathasst tools eval mitosis_detection`` scores them. ``detections[i]`` = (xy, score, atypical probability)."""
    sc = score_figures([(xy, aty) for xy, _, aty in detections], [s.figures for s in samples],
                       [bool(s.atypical[0]) for s in samples], MATCH_UM / mpp)
    rows = sc.pop("rows")
    sc["n_found"] = sum(r["found"] for r in rows)
    return sc


def _maps(model: Any, samples: list[MitosisSample], batch: int = 64) -> np.ndarray:
    """(N, 2, 128, 128) P(mitosis), P(atypical) of whole validation crops (eval mode, upsampled as the tool does)."""
    import torch
    from torch.nn import functional as F

    from pathasst.tools.backends.mitosis_net import OUT_STRIDE

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch):
            arr = np.stack([s.rgb for s in samples[i : i + batch]])
            x = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
            p = torch.sigmoid(model(x))
            out.append(F.interpolate(p, scale_factor=OUT_STRIDE, mode="bilinear", align_corners=False).numpy())
    return np.concatenate(out)


def detections_at(maps: np.ndarray, threshold: float, min_distance_px: float) -> list[tuple[np.ndarray, ...]]:
    from pathasst.tools.backends.mitosis_net import find_peaks

    dets = []
    for m in maps:
        rc = find_peaks(m[0], threshold, min_distance_px)
        dets.append((rc[:, ::-1].astype(float), m[0][rc[:, 0], rc[:, 1]], m[1][rc[:, 0], rc[:, 1]]))
    return dets


def negative_density(maps: np.ndarray, threshold: float, min_distance_px: float, mpp: float = MPP) -> float:
    """Detections per mm^2 over mitosis-free fields (``maps`` of :func:`_maps`)."""
    n = sum(len(xy) for xy, _, _ in detections_at(maps, threshold, min_distance_px))
    area = maps.shape[0] * maps.shape[2] * maps.shape[3] * (mpp / 1000.0) ** 2
    return n / area


def choose_threshold(maps: np.ndarray, samples: list[MitosisSample], max_fp: float, min_distance_px: float,
                     neg_maps: np.ndarray | None = None, max_neg_density: float = math.inf,
                     ) -> tuple[float, dict[str, Any]]:
    """The lowest threshold (grid 0.05..0.95) whose false detections per crop are <= ``max_fp`` and, given
    mitosis-free fields ``neg_maps``, whose detections there stay <= ``max_neg_density`` per mm^2; and its scores."""
    def scores(thr: float) -> dict[str, Any]:
        sc = score_crops(detections_at(maps, thr, min_distance_px), samples)
        if neg_maps is not None and len(neg_maps):
            sc["negative_per_mm2"] = negative_density(neg_maps, thr, min_distance_px)
        return sc

    best = (0.95, scores(0.95))
    for thr in np.round(np.arange(0.95, 0.04, -0.05), 2):
        sc = scores(float(thr))
        if sc["fp_per_crop"] > max_fp or sc.get("negative_per_mm2", 0.0) > max_neg_density:
            break
        best = (float(thr), sc)
    return best


def save_checkpoint(path: Path, model: Any, config: dict[str, Any]) -> Path:
    import torch

    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "config": config}, tmp)
    tmp.replace(path)
    return path


def train(
    data_dir: Path,
    out_dir: Path,
    minutes: float,
    widths: tuple[int, ...] = (24, 48, 96, 160, 256),
    crop: int = 96,
    batch: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    sigma_um: float = 2.0,
    atypical_weight: float = 1.0,
    max_fp: float = 0.3,
    ema: float = 0.998,
    seed: int = 0,
    threads: int = 2,
    val_every: float = 4.0,
    max_steps: int | None = None,
    limit: int | None = None,
    device: str = "auto",
    log: Any = sys.stderr,
    negatives: Path | None = None,
    negative_fraction: float = 0.25,
    max_neg_density: float = 30.0,
    low_res: float = 0.2,
) -> dict[str, Any]:
    """Train; returns a summary (validation history, the chosen threshold, the checkpoint path).

    ``negatives``: a CoNSeP folder whose tiles (training sources other than :data:`NEGATIVE_VALIDATION_SOURCES`)
    fill ``negative_fraction`` of every batch as mitosis-free fields; the tiles of those validation sources bound the
    threshold (at most ``max_neg_density`` detections per mm^2) and enter the checkpoint score."""
    import torch
    from torch.nn import functional as F
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from pathasst.finetune.nuclei_net import training_device
    from pathasst.tools.backends.mitosis_net import MitosisNetConfig, build_mitosis_net

    dev = training_device(device)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_s = load_samples(data_dir, ("train",), limit)
    val_s = load_samples(data_dir, ("validation",), limit)
    if not train_s or not val_s:
        raise ValueError(f"no training or validation crops in {data_dir}")
    neg_train: list[MitosisSample] = []
    neg_val: list[MitosisSample] = []
    if negatives is not None:
        from pathasst.finetune.nuclei_pixel import source_image, split_tiles
        from pathasst.tools.evaluate import nuclei_tiles

        train_sources = {source_image(n) for n in split_tiles(nuclei_tiles(negatives))[0]}  # held-out ones never
        neg_train = load_negatives(negatives, train_sources - NEGATIVE_VALIDATION_SOURCES, limit)
        neg_val = load_negatives(negatives, NEGATIVE_VALIDATION_SOURCES, limit)
        print(f"{len(neg_train)} mitosis-free training fields / {len(neg_val)} validation fields from {negatives}",
              file=log, flush=True)
    n_neg = round(batch * negative_fraction) if neg_train else 0
    # BatchNorm statistics of the averaged weights: the training crops and two 128 px corners of each free field
    bn_images = [s.rgb for s in train_s] + [t.rgb[o : o + 128, o : o + 128] for t in neg_train for o in (0, 128)]
    n_aty = sum(int(s.atypical[0]) for s in train_s)
    pos_weight = torch.tensor((len(train_s) - n_aty) / max(n_aty, 1), device=dev)
    print(f"{len(train_s)} training / {len(val_s)} validation crops; {n_aty} atypical centred figures in training",
          file=log, flush=True)
    model = build_mitosis_net(widths).to(dev)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema)) if ema > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    sigma_px, min_dist = sigma_um / MPP, MATCH_UM / MPP
    budget, start = minutes * 60.0, time.perf_counter()
    last_val, best, step, history, recent = start, -1.0, 0, [], []
    ckpt_path = out_dir / "mitosis_net.pt"

    def validate() -> None:
        nonlocal best, last_val
        net = averaged.module if averaged is not None else model
        if averaged is not None:
            recalibrate_bn(net, bn_images)
        maps = _maps(net, val_s)
        neg_maps = _maps(net, neg_val) if neg_val else None
        thr, sc = choose_threshold(maps, val_s, max_fp, min_dist, neg_maps, max_neg_density)
        combined = sc["recall"] + (sc["atypical_balanced_accuracy"] or 0.0)
        if neg_maps is not None and sc["negative_per_mm2"] > max_neg_density:
            combined -= 1.0  # no threshold keeps mitosis-free fields clean: never preferred over one that does
        row = {"minutes": round((time.perf_counter() - start) / 60, 1), "step": step,
               "loss": round(float(np.mean(recent)), 4) if recent else None, "threshold": thr,
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in sc.items()}, "score": round(combined, 4)}
        history.append(row)
        if combined > best:
            best = combined
            cfg = MitosisNetConfig(mpp=MPP, widths=list(widths), threshold=thr, min_distance=MATCH_UM, extra={
                "training": {"data": "AMi-Br training slides (tools/data/amibr_split.json)"
                             + (f"; mitosis-free CoNSeP tiles of {negatives.name}" if neg_train else ""), "steps": step,
                             "params": n_params, "validation": row, "max_fp_per_crop": max_fp}})
            save_checkpoint(ckpt_path, net, cfg.to_dict())
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
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        picks = [train_s[i] for i in rng.integers(0, len(train_s), batch - n_neg)]
        picks += [neg_train[i] for i in rng.integers(0, len(neg_train), n_neg)] if n_neg else []
        items = [augment(s, crop, rng, sigma_px, low_res) for s in picks]
        x = torch.from_numpy(np.stack([it[0] for it in items])).to(dev)
        x = (x - 0.5) / 0.5
        heat, aty_t, aty_w = (torch.from_numpy(np.stack([it[k] for it in items])).to(dev) for k in (1, 2, 3))
        out = model(x)
        l_det = focal_loss(out[:, 0], heat)
        l_aty = (F.binary_cross_entropy_with_logits(out[:, 1], aty_t, pos_weight=pos_weight, reduction="none") * aty_w
                 ).sum() / aty_w.sum().clamp_min(1.0)
        loss = l_det + atypical_weight * l_aty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if averaged is not None:
            averaged.update_parameters(model)
        recent.append(float(loss.detach()))
        step += 1
        if time.perf_counter() - last_val >= val_every * 60:
            validate()
            model.train()
    validate()
    summary = {"params": n_params, "steps": step, "best": best, "history": history, "checkpoint": str(ckpt_path)}
    (out_dir / "train_log.json").write_text(json.dumps(summary, indent=1))
    return summary


def evaluate(ckpt: Path, data_dir: Path, split: str = "held_out") -> dict[str, Any]:
    """Scores of a checkpoint on one split's crops at its stored threshold (whole 128 px crops)."""
    from pathasst.tools.backends.mitosis_net import MitosisNet

    net = MitosisNet.load(ckpt, "--evaluate")
    samples = load_samples(data_dir, (split,))
    maps = _maps(net.model, samples)
    out = score_crops(detections_at(maps, net.config.threshold, net.config.min_distance / MPP), samples)
    out["threshold"] = net.config.threshold
    out["n_slides"] = len({s.slide for s in samples})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m pathasst.finetune.mitosis_net", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="AMi-Br folder (AMI-BR.csv, atypical/, normal/)")
    p.add_argument("--out", type=Path, help="output folder (mitosis_net.pt, train_log.json)")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--widths", type=int, nargs=5, default=[24, 48, 96, 160, 256])
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sigma", type=float, default=2.0, help="target Gaussian sigma, um")
    p.add_argument("--atypical-weight", type=float, default=1.0)
    p.add_argument("--max-fp", type=float, default=0.3, help="false detections per crop the threshold may allow")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-every", type=float, default=4.0, help="minutes between validations")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--limit", type=int, help="use only the first N crops of each split (tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--negatives", type=Path, help="CoNSeP folder (consep_train layout): mitosis-free fields")
    p.add_argument("--negative-fraction", type=float, default=0.25, help="share of each batch from --negatives")
    p.add_argument("--max-neg-density", type=float, default=30.0,
                   help="detections per mm^2 the threshold may allow on the mitosis-free validation fields")
    p.add_argument("--low-res", type=float, default=0.2, help="probability of the 20x-scan augmentation")
    p.add_argument("--evaluate", type=Path, help="score this checkpoint on the held-out slides and exit")
    p.add_argument("--split", default="held_out", choices=["train", "validation", "held_out"])
    a = p.parse_args(argv)
    if a.evaluate:
        result = evaluate(a.evaluate, a.data, a.split)
    else:
        if a.out is None:
            p.error("--out is required for training")
        result = train(a.data, a.out, a.minutes, tuple(a.widths), a.crop, a.batch, a.lr, sigma_um=a.sigma,
                       atypical_weight=a.atypical_weight, max_fp=a.max_fp, ema=a.ema, seed=a.seed, threads=a.threads,
                       val_every=a.val_every, max_steps=a.max_steps, limit=a.limit, device=a.device,
                       negatives=a.negatives, negative_fraction=a.negative_fraction,
                       max_neg_density=a.max_neg_density, low_res=a.low_res)
    print(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
