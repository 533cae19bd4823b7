"""Train the project's nuclei network (:mod:`pathasst.tools.backends.nuclei_net`) on CoNSeP tiles, on the CPU or a GPU.

    python -m pathasst.finetune.nuclei_net --data ../shared/data/consep_train --out runs/nuclei_net --minutes 75

Data: the tiles of the training source images of :mod:`pathasst.finetune.nuclei_pixel` (1-14 and odd ones; source
images 16, 18, ... 26 are the held-out test set and are refused here). Of those, the tiles of ``--val-sources``
(default 2 and 11) are this trainer's own validation set (checkpoint selection and post-processing tuning); the
rest are trained on. Targets are computed once: nucleus mask (NP), HoVer-Net horizontal/vertical maps (per nucleus,
the x / y offset from its centroid scaled to [-1, 1]; HV) and the type map (TP: 0 background, 1..4 CoNSeP's other,
inflammatory, epithelial, spindle).

Augmentation (every sample): random scale 0.875-1.25 and crop of ``--crop`` px, the 8 flips/rotations (HV signs and
channels transformed with them), HED stain jitter, brightness / contrast / saturation / hue jitter, sometimes blur
and noise. Losses: NP cross-entropy + soft Dice; HV MSE + MSGE (Sobel-gradient MSE inside nuclei); TP
cross-entropy + soft Dice. AdamW with a time-based cosine schedule over ``--minutes``. Every ``--val-every``
minutes the model is scored (object F1, AJI, PQ after HoVer post-processing) on the validation tiles; the best
(mean of F1 and AJI) is written as ``OUT/nuclei_net.pt`` (fp16 state dict + config); ``OUT/last.pt`` is the latest.
At the end the post-processing parameters (edge mode, thresholds) are tuned on the validation tiles plus every
``--tune-train-every``-th training tile (dense tissue; the validation images are sparse) and stored in the best
checkpoint's config.
``--init CKPT`` continues training from a checkpoint (fresh optimiser and schedule; the shipped weights were trained in
two stages, see the model card); ``--lowres P`` adds a low-resolution-scan augmentation (20x-like detail) with
probability P; ``--bf16`` trains in bfloat16 autocast with channels-last tensors (about 2.2x faster on CPUs with
AVX512-BF16 or AMX). ``--device auto|cpu|cuda`` picks where to train (auto: a CUDA GPU when torch sees one) and
``--workers N`` augments batches in N DataLoader processes (a GPU needs them; ``scripts/device_train_nuclei.sh``
runs a whole GPU training on a bare machine). ``--ensemble A.pt B.pt ... --out E.pt`` combines trained checkpoints into one ensemble
checkpoint (the shipped file: two networks of different widths). ``--tune-only CKPT`` re-runs only the tuning step on
an existing checkpoint (for an ensemble it also tries the members' vote, ``post.member_vote``); ``--evaluate CKPT``
scores a checkpoint on the held-out tiles (source images 16-26) next to the classical method (the model card's
figures).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from pathasst.finetune.nuclei_data import DEFAULT_VAL_SOURCES, HV_TARGETS, Sample, augment, load_samples
from pathasst.finetune.nuclei_eval import (
    TILE_MPP,
    evaluate_held_out,
    scaled_post,
    score_maps,
    tune_checkpoint,
    validation_maps,
)

__all__ = ["CropStream", "losses", "main", "save_checkpoint", "train", "training_device"]


# ---- losses --------------------------------------------------------------------------------------------------------
def _sobel_kernels(size: int = 5) -> tuple[Any, Any]:
    import torch

    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32)
    h, v = torch.meshgrid(r, r, indexing="ij")
    kh = h / (h * h + v * v + 1e-15)  # d/dx kernel (HoVer-Net's get_sobel_kernel)
    kv = v / (h * h + v * v + 1e-15)
    return kv, kh  # (kernel for x-gradient, kernel for y-gradient)


def losses(out: Any, fg: Any, hv: Any, tp: Any, n_types: int) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    np_logit, hv_pred, tp_logit = out[:, :2], out[:, 2:4], out[:, 4:]
    p = torch.softmax(np_logit, 1)[:, 1]
    fgf = fg.float()
    np_ce = F.cross_entropy(np_logit, fg)
    np_dice = 1 - (2 * (p * fgf).sum() + 1) / (p.sum() + fgf.sum() + 1)
    mse = F.mse_loss(hv_pred, hv)
    kx, ky = _sobel_kernels(5)
    kx, ky = kx.view(1, 1, 5, 5).to(out), ky.view(1, 1, 5, 5).to(out)

    def grad(m: Any, k: Any) -> Any:
        return F.conv2d(m[:, None], k, padding=2)[:, 0]

    gp = torch.stack([grad(hv_pred[:, 0], kx), grad(hv_pred[:, 1], ky)], 1)
    gt = torch.stack([grad(hv[:, 0], kx), grad(hv[:, 1], ky)], 1)
    focus = fgf[:, None].expand_as(gp)
    msge = ((gp - gt) ** 2 * focus).sum() / (focus.sum() + 1e-8)
    tp_ce = F.cross_entropy(tp_logit, tp)
    q = torch.softmax(tp_logit, 1)
    oh = F.one_hot(tp, n_types).permute(0, 3, 1, 2).float()
    inter = (q * oh).sum((0, 2, 3))
    tp_dice = (1 - (2 * inter + 1) / (q.sum((0, 2, 3)) + oh.sum((0, 2, 3)) + 1)).mean()
    parts = {"np_ce": np_ce, "np_dice": np_dice, "hv_mse": mse, "hv_msge": msge, "tp_ce": tp_ce, "tp_dice": tp_dice}
    parts["total"] = np_ce + np_dice + 2 * mse + msge + tp_ce + tp_dice
    return parts


# ---- checkpoints ---------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model: Any, config: Any, extra: dict[str, Any] | None = None) -> Path:
    """``{"state_dict": fp16 tensors, "config": config.to_dict() | extra}`` (the backend's format)."""
    import torch

    sd = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
          for k, v in model.state_dict().items()}
    cfg = config.to_dict() | (extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": sd, "config": cfg}, str(tmp))
    tmp.replace(path)
    return path


def combine_checkpoints(paths: list[Path], out: Path) -> dict[str, Any]:
    """One ensemble checkpoint of several single-network checkpoints (same mpp, type classes and normalisation):
    state dict keys ``members.I.*``, config ``members`` = their widths; tile size, overlap and post-processing of the
    first (re-tune with ``--tune-only``)."""
    import torch

    from pathasst.tools.backends.nuclei_net import NucleiNet

    if len(paths) < 2:
        raise ValueError("--ensemble needs at least two checkpoints")
    nets = [NucleiNet.load(Path(p), "--ensemble") for p in paths]
    first = nets[0].config
    for p, n in zip(paths, nets):
        c = n.config
        if c.members:
            raise ValueError(f"--ensemble {p}: already an ensemble; list its members' checkpoints instead")
        if (c.mpp, c.type_classes, c.mean, c.std) != (first.mpp, first.type_classes, first.mean, first.std):
            raise ValueError(f"--ensemble {p}: mpp, type classes or normalisation differ from {paths[0]}")
    cfg = replace(first, members=[list(n.config.widths) for n in nets])
    model = cfg.build()
    for member, n in zip(model.members, nets):
        member.load_state_dict(n.model.state_dict())
    meta = {"ensemble_of": [str(p) for p in paths]}
    first_cfg = torch.load(str(paths[0]), map_location="cpu", weights_only=True).get("config", {})
    meta |= {k: first_cfg[k] for k in ("trained_on", "validation_sources") if k in first_cfg}
    save_checkpoint(out, model, cfg, meta)
    return {"out": str(out), "members": cfg.members, "params": sum(p.numel() for p in model.parameters())}


# ---- training ------------------------------------------------------------------------------------------------------
def training_device(name: str = "auto") -> Any:
    """The torch device to train on: ``auto`` = the first CUDA GPU when torch sees one, else the CPU; ``cuda``,
    ``cuda:N`` or ``cpu`` explicitly (a CUDA device torch cannot see is an error, never a silent CPU run)."""
    import torch

    from pathasst.tools.backends.runtime import torch_device

    if name == "auto":
        return torch_device()
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r}: not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: torch sees no CUDA GPU (torch {torch.__version__}, "
                             f"built for CUDA {torch.version.cuda}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


class CropStream(IterableDataset):
    """An endless stream of augmented training batches ``(rgb, fg, hv, tp)`` as numpy arrays, for a
    ``torch.utils.data.DataLoader`` with ``num_workers`` > 0 (``batch_size=None``): each worker draws its own tiles
    and augmentations from ``seed`` and its worker id, so no two workers repeat each other's batches."""

    def __init__(self, samples: list[Sample], crop: int, batch: int, seed: int, lowres: float = 0.0,
                 hv_targets: str = "crop") -> None:
        self.samples, self.crop, self.batch, self.seed, self.lowres = samples, crop, batch, seed, lowres
        self.hv_targets = hv_targets

    def __iter__(self) -> Any:
        import torch

        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id + 1])
        while True:
            items = [augment(self.samples[i], self.crop, rng, self.lowres, self.hv_targets)
                     for i in rng.integers(0, len(self.samples), self.batch)]
            yield tuple(np.stack([it[k] for it in items]) for k in range(4))


def _batch_loader(samples: list[Sample], crop: int, batch: int, seed: int, lowres: float, workers: int,
                  pin: bool, hv_targets: str = "crop") -> Any:
    import torch

    stream = CropStream(samples, crop, batch, seed, lowres, hv_targets)
    return iter(torch.utils.data.DataLoader(stream, batch_size=None,
                                            num_workers=workers, pin_memory=pin, prefetch_factor=4,
                                            persistent_workers=False))


def train(
    data_dir: Path,
    out_dir: Path,
    minutes: float,
    val_sources: tuple[int, ...] = DEFAULT_VAL_SOURCES,
    widths: tuple[int, ...] = (24, 48, 96, 192, 256),
    crop: int = 224,
    batch: int = 4,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int = 2,
    val_every: float = 6.0,
    max_steps: int | None = None,
    limit: int | None = None,
    val_limit: int | None = None,
    tune: bool = True,
    log: Any = sys.stderr,
    init: Path | None = None,
    tune_train_every: int = 8,
    lowres: float = 0.0,
    ema: float = 0.0,
    bf16: bool = False,
    device: str = "auto",
    workers: int = 0,
    hv_targets: str = "crop",
    mpp: float = TILE_MPP,
) -> dict[str, Any]:
    """Train; returns a summary (losses, validation history, best scores, paths). ``init``: start from the weights
    (and widths) of an existing checkpoint instead of from scratch (a fresh optimiser and schedule). ``ema`` > 0:
    validate and save an exponential moving average of the weights and BatchNorm statistics (decay ``ema`` per
    step, ``torch.optim.swa_utils``) instead of the raw weights, which wander with batches of four. ``bf16``: forward
    and backward passes in bfloat16 autocast with channels-last tensors (weights, optimiser and losses stay float32;
    about 2x faster on CPUs with AVX512-BF16 or AMX). ``device``: see :func:`training_device` (on a GPU, bf16
    autocast runs on the GPU; the checkpoint is saved as CPU tensors either way). ``workers`` > 0: augment
    batches in that many DataLoader worker processes (:class:`CropStream`), which a GPU needs to be kept busy;
    0 = in the training loop (the original single-process order, reproducible from ``seed``). ``mpp``: the
    resolution the network works at; other than the tiles' 0.25 um/px, every tile is resampled to it first
    (:func:`~pathasst.finetune.nuclei_data.rescale_tile`) and the post-processing's pixel sizes are scaled alike
    (0.5: a network for 20x slides, trained and validated on CoNSeP scanned down to 20x)."""
    import torch

    from pathasst.finetune.nuclei_pixel import source_image, train_tiles
    from pathasst.tools.backends.nuclei_net import NucleiNet, NucleiNetConfig, build_nuclei_net

    if log is None:
        import io

        log = io.StringIO()  # quiet
    start_from = NucleiNet.load(Path(init), "--init") if init is not None else None
    if start_from is not None and start_from.config.members:
        raise ValueError(f"--init {init} is an ensemble; train its members separately and combine them with --ensemble")
    dev = training_device(device)
    if hv_targets not in HV_TARGETS:
        raise ValueError(f"hv_targets must be one of {HV_TARGETS}, not {hv_targets!r}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(seed)
    names = train_tiles(data_dir)
    tr_names = [n for n in names if source_image(n) not in val_sources][:limit]
    va_names = [n for n in names if source_image(n) in val_sources][:val_limit]
    t0 = time.perf_counter()
    scale = TILE_MPP / mpp
    train_s, val_s = load_samples(data_dir, tr_names, scale), load_samples(data_dir, va_names, scale)
    print(f"{len(train_s)} training / {len(val_s)} validation tiles; targets in {time.perf_counter() - t0:.0f} s",
          file=log, flush=True)
    cfg = NucleiNetConfig(widths=list(widths), mpp=mpp)
    if scale != 1.0:  # 0.4.0's minmax default splits a downscaled network's nuclei badly (20x val F1 0.25 vs 0.59)
        cfg.post = scaled_post(replace(cfg.post, edge_mode="absolute", grad_threshold=0.25, unmarked_min_px=20), scale)
    cfg.overlap = max(16, int(round(cfg.overlap * scale)))
    if start_from is not None:
        cfg.widths = list(start_from.config.widths)
        if start_from.config.mpp != mpp:
            raise ValueError(f"--init {init} works at {start_from.config.mpp} um/px, not --mpp {mpp}")
    n_types = 1 + len(cfg.type_classes)
    model = build_nuclei_net(cfg.widths, n_types)
    if start_from is not None:
        model.load_state_dict(start_from.model.state_dict())
        print(f"initialised from {init} (widths {cfg.widths})", file=log, flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    layout = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(dev, memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60.0
    start = time.perf_counter()
    last_val = start
    history: list[dict[str, Any]] = []
    first_losses: list[float] = []
    recent: list[float] = []
    step_losses: list[float] = []
    best_score, step = -1.0, 0
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1).to(dev)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1).to(dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out_dir / "nuclei_net.pt", out_dir / "last.pt"
    meta = {"trained_on": [f"consep_train sources {sorted({source_image(n) for n in tr_names})}"],
            "validation_sources": sorted(val_sources), "params": n_params}
    if init is not None:
        meta["initialised_from"] = str(init)
    if lowres:
        meta["lowres_augmentation"] = lowres
    if bf16:
        meta["precision"] = "bfloat16 autocast, channels-last"
    meta["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    meta["hv_targets"] = hv_targets
    if workers:
        meta["loader_workers"] = workers
    averaged = None
    if ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0 < ema < 1:
            raise ValueError(f"ema must be in (0, 1), got {ema}")
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
        meta["ema_decay"] = ema
    kept = model if averaged is None else averaged.module  # what is validated and saved

    def validate() -> dict[str, Any]:
        kept.eval()
        s = score_maps(validation_maps(NucleiNet.from_module(kept, cfg, dev), val_s), val_s, cfg.post, cfg.type_classes)
        model.train()
        return s

    batches = (_batch_loader(train_s, crop, batch, seed, lowres, workers, dev.type == "cuda", hv_targets)
               if workers else None)
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget or (max_steps is not None and step >= max_steps):
            break
        frac = elapsed / budget
        warm = min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        if batches is None:
            items = [augment(train_s[i], crop, rng, lowres, hv_targets) for i in rng.integers(0, len(train_s), batch)]
            arrays = [torch.from_numpy(np.stack([it[k] for it in items])) for k in range(4)]
        else:
            arrays = [torch.as_tensor(a) for a in next(batches)]
        x, fg, hv, tp = (a.to(dev, non_blocking=True) for a in arrays)
        x = (x - mean) / std
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x.contiguous(memory_format=layout))
        parts = losses(out.float(), fg, hv, tp, n_types)
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        opt.step()
        if averaged is not None:
            averaged.update_parameters(model)
        step += 1
        loss = float(parts["total"].detach())
        step_losses.append(loss)
        if len(first_losses) < 20:
            first_losses.append(loss)
        recent = (recent + [loss])[-50:]
        if step % 50 == 0:
            detail = " ".join(f"{k} {float(v.detach()):.3f}" for k, v in parts.items())
            print(f"step {step} {elapsed / 60:.1f} min lr {opt.param_groups[0]['lr']:.2e} mean50 {np.mean(recent):.4f} "
                  f"| {detail}", file=log, flush=True)
        if time.perf_counter() - last_val >= val_every * 60 and val_s:
            s = validate()
            last_val = time.perf_counter()
            s.update(step=step, minutes=round((last_val - start) / 60, 1))
            history.append(s)
            save_checkpoint(last_path, kept, cfg, meta | {"minutes": s["minutes"], "steps": step})
            if s["f1"] + s["aji"] > best_score:
                best_score = s["f1"] + s["aji"]
                save_checkpoint(best_path, kept, cfg, meta | {"minutes": s["minutes"], "steps": step, "val": s})
            print(f"VAL step {step}: {json.dumps(s)}", file=log, flush=True)
    del batches  # stops the loader's worker processes
    minutes_trained = round((time.perf_counter() - start) / 60, 1)
    final = validate() if val_s else {}
    final.update(step=step, minutes=minutes_trained)
    history.append(final)
    save_checkpoint(last_path, kept, cfg, meta | {"minutes": minutes_trained, "steps": step})
    if not val_s or final["f1"] + final["aji"] > best_score:
        save_checkpoint(best_path, kept, cfg, meta | {"minutes": minutes_trained, "steps": step, "val": final})
    print(f"VAL final step {step}: {json.dumps(final)}", file=log, flush=True)
    summary: dict[str, Any] = {"out": str(best_path), "params": n_params, "steps": step, "minutes": minutes_trained,
                               "loss_first20": float(np.mean(first_losses)) if first_losses else None,
                               "loss_last50": float(np.mean(recent)) if recent else None, "history": history,
                               "step_losses": step_losses}
    if tune and val_s:
        summary["tuned"] = tune_checkpoint(best_path, data_dir, val_sources, val_limit, log, tune_train_every)
    torch.set_num_threads(old_threads)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m pathasst.finetune.nuclei_net", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="consep_train-layout folder (images/, instances/, types/)")
    parser.add_argument("--out", type=Path, help="output folder (nuclei_net.pt = best, last.pt = latest)")
    parser.add_argument("--minutes", type=float, default=60.0, help="training time budget (the cosine schedule spans it)")
    parser.add_argument("--val-every", type=float, default=6.0, help="minutes between validations/checkpoints")
    parser.add_argument("--val-sources", type=int, nargs="+", default=list(DEFAULT_VAL_SOURCES))
    parser.add_argument("--widths", type=int, nargs="+", default=[24, 48, 96, 192, 256])
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=TILE_MPP,
                        help="resolution the network works at (0.5: a 20x network, tiles scanned down to it)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N training tiles only (smoke runs)")
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--no-tune", action="store_true")
    parser.add_argument("--lowres", type=float, default=0.0,
                        help="probability of the low-resolution-scan augmentation (down 1.5-2.2x and back up)")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="validate and save an exponential moving average of the weights (e.g. 0.998; 0 = off)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast + channels-last for training (about 2x faster on AVX512-BF16/AMX CPUs)")
    parser.add_argument("--device", default="auto",
                        help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader worker processes that augment batches (0 = in the training loop); a GPU "
                             "needs several to be kept busy")
    parser.add_argument("--hv-targets", choices=HV_TARGETS, default="crop",
                        help="HV targets of a training crop: computed on the crop (a cut nucleus points at the centre "
                             "of its visible part, as at inference) or cut out of the whole tile's (0.6.0 and before)")
    parser.add_argument("--ensemble", type=Path, nargs="+", default=None, metavar="CKPT",
                        help="combine these checkpoints into one ensemble checkpoint written to --out (a file)")
    parser.add_argument("--init", type=Path, default=None, metavar="CKPT",
                        help="continue from this checkpoint's weights (fresh optimiser and cosine schedule)")
    parser.add_argument("--tune-only", type=Path, default=None, metavar="CKPT")
    parser.add_argument("--tune-train-every", type=int, default=8,
                        help="post-processing is tuned on the validation tiles plus every Nth training tile (0 = none)")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="CKPT",
                        help="only score CKPT on the held-out tiles (sources 16-26) next to the classical method")
    parser.add_argument("--eval-every", type=int, default=2, help="with --evaluate: every Nth held-out tile (2 = 48)")
    parser.add_argument("--eval-mpp", type=float, default=TILE_MPP,
                        help="with --evaluate: score the tiles scanned at this resolution (0.5 = as 20x; labels alike)")
    args = parser.parse_args(argv)
    if args.evaluate is not None:
        res = evaluate_held_out(args.evaluate, args.data, args.eval_every, TILE_MPP / args.eval_mpp)
    elif args.ensemble is not None:
        if args.out is None:
            parser.error("--ensemble needs --out FILE")
        res = combine_checkpoints(args.ensemble, args.out)
    elif args.tune_only is not None:
        res = tune_checkpoint(args.tune_only, args.data, tuple(args.val_sources), args.val_limit,
                              train_every=args.tune_train_every)
    else:
        if args.out is None:
            parser.error("--out is required for training")
        bad = [s for s in args.val_sources if s in (16, 18, 20, 22, 24, 26)]
        if bad:
            parser.error(f"validation sources {bad} are held-out test sources")
        try:
            training_device(args.device)
        except ValueError as exc:
            parser.error(str(exc))
        res = train(args.data, args.out, args.minutes, tuple(args.val_sources), tuple(args.widths), args.crop,
                    args.batch, args.lr, args.seed, args.threads, args.val_every, args.max_steps, args.limit,
                    args.val_limit, not args.no_tune, init=args.init, tune_train_every=args.tune_train_every, lowres=args.lowres,
                    ema=args.ema, bf16=args.bf16, device=args.device, workers=args.workers, hv_targets=args.hv_targets, mpp=args.mpp)
    print(json.dumps({k: v for k, v in res.items() if k != "step_losses"}, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
