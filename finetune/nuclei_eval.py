"""Scoring and tuning of the nuclei network: object F1, AJI, PQ and type F1 on tiles, the post-processing grid search
on the validation tiles, and the held-out figures of the model card (source images 16-26)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.nuclei_data import DEFAULT_VAL_SOURCES, Sample, load_samples

#: the resolution of the CoNSeP tiles (40x)
TILE_MPP = 0.25

__all__ = ["TILE_MPP", "TUNE_GRID", "evaluate_held_out", "scaled_grid", "scaled_post", "score_maps", "tune_checkpoint",
           "tune_post", "tuning_tiles", "type_f1",
           "type_pairs",
           "validation_maps"]


# ---- evaluation ----------------------------------------------------------------------------------------------------
def type_pairs(true: np.ndarray, pred: np.ndarray, true_types: dict[int, int], pred_types: dict[int, int]) -> list:
    """(true type, predicted type) of the nuclei matched at IoU > 0.5."""
    from pathasst.tools.metrics import pairwise_overlap

    inter, ta, pa = pairwise_overlap(true, pred)
    if inter.size == 0:
        return []
    union = ta[:, None] + pa[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    tid, pid = np.unique(true[true > 0]), np.unique(pred[pred > 0])
    ti, pj = np.nonzero(iou > 0.5)
    return [(true_types.get(int(tid[i]), 0), pred_types.get(int(pid[j]), 0)) for i, j in zip(ti, pj)]


def type_f1(pairs: list, classes: list[str]) -> dict[str, float | None]:
    """Per-class F1 of the type among matched nuclei, and the accuracy."""
    out: dict[str, float | None] = {}
    a = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    for k, name in enumerate(classes, 1):
        tp = int(((a[:, 0] == k) & (a[:, 1] == k)).sum())
        fp = int(((a[:, 0] != k) & (a[:, 1] == k)).sum())
        fn = int(((a[:, 0] == k) & (a[:, 1] != k)).sum())
        out[name] = round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None
    out["accuracy"] = round(float((a[:, 0] == a[:, 1]).mean()), 4) if len(a) else None
    return out


def score_maps(maps: list[np.ndarray], samples: list[Sample], post: Any, classes: list[str]) -> dict[str, Any]:
    """Mean-over-tiles F1, AJI, PQ, Dice, and type F1 of stitched maps ``(3 + 1 + T [+ 3 per member], H, W)``
    against the samples (:func:`~pathasst.tools.backends.nuclei_post.instances_from_maps`)."""
    from pathasst.tools.backends.nuclei_post import instance_types, instances_from_maps
    from pathasst.tools.metrics import aji_counts, dice, object_f1, panoptic_quality

    rows, pairs = [], []
    n_tp = 1 + len(classes)
    for mp, s in zip(maps, samples, strict=True):
        pred = instances_from_maps(mp, post, n_tp)
        inter, union = aji_counts(s.labels, pred)
        rows.append((object_f1(s.labels, pred)["f1"], inter / union if union else 1.0,
                     panoptic_quality(s.labels, pred)["pq"], dice(s.labels, pred)))
        tt = s.true_types()
        pairs += type_pairs(s.labels, pred, tt, instance_types(pred, mp[3 : 3 + n_tp]))
    r = np.array(rows)
    return {"f1": float(r[:, 0].mean()), "aji": float(r[:, 1].mean()), "pq": float(r[:, 2].mean()),
            "dice": float(r[:, 3].mean()), "type_f1": type_f1(pairs, classes)}


#: per edge mode: the coordinate-wise grid of :func:`tune_post` (the gradient threshold's scale differs by mode)
TUNE_GRID: dict[str, dict[str, tuple]] = {
    "minmax": {"grad_threshold": (0.6, 0.3, 0.4, 0.5), "hv_sigma": (3.0, 1.0, 2.0), "np_threshold": (0.4, 0.5, 0.6),
               "min_area_px": (20, 10, 40), "unmarked_min_px": (0, 20, 40, 60)},
    "absolute": {"grad_threshold": (0.25, 0.0, 0.1, 0.4, 0.6), "hv_sigma": (1.0, 2.0, 3.0),
                 "np_threshold": (0.4, 0.5, 0.6), "min_area_px": (20, 10, 40), "min_marker_px": (10, 5, 15),
                 "unmarked_min_px": (0, 20, 40, 60)},
}


#: the post-processing parameters measured in pixels (areas) and in pixel lengths; :func:`scaled_post` and
#: :func:`scaled_grid` carry them to a network working at another resolution
_AREA_KEYS, _LENGTH_KEYS = ("min_area_px", "min_marker_px", "unmarked_min_px"), ("hv_sigma",)


def _scaled(key: str, value: Any, scale: float) -> Any:
    if key in _AREA_KEYS:
        return int(round(value * scale * scale)) if value else 0
    if key in _LENGTH_KEYS:
        return round(value * scale, 3)
    return value


def scaled_post(post: Any, scale: float) -> Any:
    """``post`` (parameters in 40x pixels) for a network at ``0.25 / scale`` um/px: areas times scale^2, lengths
    times scale."""
    from dataclasses import asdict, replace

    return replace(post, **{k: _scaled(k, v, scale) for k, v in asdict(post).items()})


def scaled_grid(scale: float) -> dict[str, dict[str, tuple]]:
    """:data:`TUNE_GRID` for a network at ``0.25 / scale`` um/px (duplicates after rounding dropped)."""
    return {mode: {k: tuple(dict.fromkeys(_scaled(k, v, scale) for v in vals)) for k, vals in grid.items()}
            for mode, grid in TUNE_GRID.items()}


def tune_post(maps: list[np.ndarray], samples: list[Sample], base: Any, classes: list[str], log: Any = None,
              scale: float = 1.0) -> tuple:
    """Search the post-processing on tuning maps; returns (best PostParams, its scores). For each edge mode, a
    coordinate-wise search (one parameter at a time, the others at their best so far, starting from the first value
    of each grid entry) maximising mean F1 + mean AJI; the base parameters compete too. Maps with an ensemble's
    member maps (:meth:`NucleiNet.keep_member_maps`) also try the members' vote, last in each search and on the base
    parameters: ``member_vote`` 0 (off) to n + 1 for n members. ``scale``: the maps' resolution relative to 40x
    (:func:`scaled_grid`)."""
    from dataclasses import replace

    n_members = (maps[0].shape[0] - 3 - 1 - len(classes)) // 3 if maps else 0
    vote = {"member_vote": tuple(range(n_members + 2))} if n_members else {}
    best, best_s = base, score_maps(maps, samples, base, classes)
    for k in vote.get("member_vote", ()):
        if k != base.member_vote:
            s = score_maps(maps, samples, replace(base, member_vote=k), classes)
            if s["f1"] + s["aji"] > best_s["f1"] + best_s["aji"]:
                best, best_s = replace(base, member_vote=k), s
    if log is not None and vote:
        print(f"tune base + vote: {best} -> f1 {best_s['f1']:.4f} aji {best_s['aji']:.4f}", file=log, flush=True)
    for mode, grid in scaled_grid(scale).items():
        grid = grid | vote
        cur = replace(base, edge_mode=mode, **{k: v[0] for k, v in grid.items()})
        cur_s = score_maps(maps, samples, cur, classes)
        for key, values in grid.items():
            for v in values:
                p = replace(cur, **{key: v})
                if p == cur:
                    continue
                s = score_maps(maps, samples, p, classes)
                if s["f1"] + s["aji"] > cur_s["f1"] + cur_s["aji"]:
                    cur, cur_s = p, s
        if log is not None:
            print(f"tune {mode}: {cur} -> f1 {cur_s['f1']:.4f} aji {cur_s['aji']:.4f}", file=log, flush=True)
        if cur_s["f1"] + cur_s["aji"] > best_s["f1"] + best_s["aji"]:
            best, best_s = cur, cur_s
    return best, best_s


def validation_maps(net: Any, samples: list[Sample]) -> list[np.ndarray]:
    return [net.maps(s.rgb) for s in samples]


def tuning_tiles(data_dir: Path, val_sources: tuple[int, ...] = DEFAULT_VAL_SOURCES, val_limit: int | None = None,
                 train_every: int = 8) -> list[str]:
    """The tiles the post-processing is tuned on: the validation tiles, plus every ``train_every``-th training tile
    (0 = none). The two default validation images are sparse (hardly any touching epithelial nuclei), so thresholds
    tuned on them alone under-split dense tissue; the training tiles bring dense tissue in. Held-out tiles never."""
    from pathasst.finetune.nuclei_pixel import source_image, train_tiles

    names = train_tiles(data_dir)
    va = [n for n in names if source_image(n) in val_sources][:val_limit]
    tr = [n for n in names if source_image(n) not in val_sources][::train_every] if train_every > 0 else []
    return va + tr


def tune_checkpoint(path: Path, data_dir: Path, val_sources: tuple[int, ...] = DEFAULT_VAL_SOURCES,
                    val_limit: int | None = None, log: Any = sys.stderr, train_every: int = 8) -> dict[str, Any]:
    """Tune the post-processing of checkpoint ``path`` on :func:`tuning_tiles` and write it into its config."""
    from dataclasses import asdict

    import torch

    from pathasst.tools.backends.nuclei_net import NucleiNet

    names = tuning_tiles(data_dir, val_sources, val_limit, train_every)
    net = NucleiNet.load(path, "nuclei_weights")
    scale = TILE_MPP / net.config.mpp
    samples = load_samples(data_dir, names, scale)
    if net.config.members:
        net.keep_member_maps()  # so that the search can try the members' vote
    maps = validation_maps(net, samples)
    post, scores = tune_post(maps, samples, net.config.post, net.config.type_classes, log, scale)
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    raw["config"]["post"] = asdict(post)
    raw["config"]["val_tuned"] = scores
    raw["config"]["tuned_on"] = {"tiles": len(names), "validation_sources": sorted(val_sources),
                                 "training_tiles_every": train_every}
    torch.save(raw, str(path))
    return {"post": asdict(post), "tuned_on_tiles": len(names), "scores": scores}


def evaluate_held_out(ckpt: Path, data_dir: Path, every: int = 2, scale: float = 1.0) -> dict[str, Any]:
    """Held-out scores (source images 16-26, every ``every``-th tile) of the tool's ``auto`` method with checkpoint
    ``ckpt`` as its shipped default (domain guard included) next to the classical ``auto`` method, and the type F1 of
    the network among matched nuclei. ``scale`` 0.5 scores the tiles scanned down to 20x (labels alike)."""
    from unittest import mock

    import pathasst.tools.nuclei_segmentation as ns
    from pathasst.core.imaging import ImageData
    from pathasst.core.settings import Settings
    from pathasst.finetune.nuclei_pixel import held_out_tiles
    from pathasst.tools.backends.nuclei_net import NucleiNet
    from pathasst.tools.evaluate import evaluate_nuclei

    names = held_out_tiles(data_dir, every)
    settings = Settings(_env_file=None, nuclei_weights=None)

    def summary(scores: dict[str, Any]) -> dict[str, Any]:
        out = {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}
        if "by_image" in scores:  # pooled per source image, then the mean over the images
            b = scores["by_image"]
            out["by_image"] = {"images": b["n_images"], "f1": round(b["f1"], 4), "aji": round(b["aji"], 4)}
        ci = scores["ci95"]  # bootstrap over source images: how far the 48-tile means can move by sampling alone
        out["ci95"] = {"resampled": ci["resampled"], **{k: [round(v, 4) for v in ci[k]] for k in ("f1", "aji")}}
        return out

    out: dict[str, Any] = {"held_out_tiles": len(names), "checkpoint": str(ckpt), "precision": settings.nuclei_precision,
                           "tile_mpp": TILE_MPP / scale}
    with mock.patch.object(ns, "SHIPPED_NET_WEIGHTS", Path(ckpt)), mock.patch.object(ns, "SHIPPED_NET_IS_DEFAULT", True):
        out["nuclei_net"] = summary(evaluate_nuclei(ns.NucleiSegmentationTool(settings), data_dir, names=names,
                                                           scale=scale))
    with mock.patch.object(ns, "SHIPPED_NET_IS_DEFAULT", False):
        out["classical"] = summary(evaluate_nuclei(ns.NucleiSegmentationTool(settings), data_dir, names=names,
                                                           scale=scale))
    net = NucleiNet.load(Path(ckpt), "nuclei_weights", settings)
    out["runtime"] = net.runtime
    pairs: list = []
    for s in load_samples(data_dir, names, scale):
        pred = net.segment(ImageData(pixels=s.rgb, name=s.name, mpp=TILE_MPP / scale))
        tt = s.true_types()
        pairs += type_pairs(s.labels, pred.labels, tt, pred.types)
    out["type_f1"] = type_f1(pairs, net.config.type_classes)
    out["type_support"] = {c: sum(1 for a, _ in pairs if a == k) for k, c in enumerate(net.config.type_classes, 1)}
    return out
