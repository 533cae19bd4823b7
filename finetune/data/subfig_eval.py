"""Score the sub-figure backends (``pathasst-train data subfig-eval``).

On a split of a :mod:`~pathasst.finetune.data.compound` data set (default: ``test``, figures assembled from
held-out tiles and charts of unseen render seeds) and on figures laid out by matplotlib's own ``subplots`` engine
(:func:`matplotlib_figures`: an independent generator; a panel's box is its axes' tight bounding box, tick labels
and title included). For each backend: precision and recall of panels at IoU > 0.5 (unique matching, pooled over
figures), mean IoU of the matched panels, the share of figures split exactly right, per layout; 95 % intervals
from a bootstrap over figures. YOLO's confidence threshold is chosen on the ``val`` split (best F1).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.finetune.data.compound import read_boxes
from pathasst.finetune.data.image_io import load_image
from pathasst.finetune.data.subfigures import Box, match_boxes, split_panels

__all__ = ["evaluate_subfigures", "matplotlib_figures", "score_predictions"]


def score_predictions(preds: list[list[Box]], golds: list[list[Box]], groups: list[str] | None = None,
                      bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pooled precision, recall, F1, mean IoU and exact-figure rate, with 95 % bootstrap intervals over figures;
    per group when ``groups`` are given."""
    per = []
    for p, g in zip(preds, golds):
        m = match_boxes(p, g)
        per.append((len(m), len(p), len(g), sum(x[2] for x in m), len(m) == len(g) == len(p)))
    arr = np.array(per, dtype=np.float64)

    def stats(a: np.ndarray) -> dict[str, float]:
        tp, npred, ngold, iou = a[:, 0].sum(), a[:, 1].sum(), a[:, 2].sum(), a[:, 3].sum()
        prec = tp / npred if npred else 0.0
        rec = tp / ngold if ngold else 0.0
        return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                "mean_iou": iou / tp if tp else 0.0, "exact_figures": float(a[:, 4].mean())}

    out: dict[str, Any] = {"figures": len(per), "panels": int(arr[:, 2].sum()), "predicted": int(arr[:, 1].sum())}
    out.update({k: round(v, 4) for k, v in stats(arr).items()})
    rng = np.random.default_rng(seed)
    boots = [stats(arr[rng.integers(0, len(arr), len(arr))]) for _ in range(bootstrap)]
    for k in ("precision", "recall", "f1", "mean_iou", "exact_figures") if boots else ():
        v = [b[k] for b in boots]
        out[f"{k}_ci95"] = [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]
    if groups is not None:
        by: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            by[g].append(i)
        out["per_layout"] = {g: {"figures": len(ix), **{k: round(v, 4) for k, v in stats(arr[ix]).items()}}
                             for g, ix in sorted(by.items())}
    return out


def matplotlib_figures(n: int = 40, seed: int = 0) -> list[tuple[np.ndarray, list[Box], str]]:
    """Multi-panel chart figures laid out by matplotlib (``subplots`` + ``tight_layout``, 1-3 x 1-3 axes, each a
    chart of :func:`~pathasst.finetune.data.synthetic_images.render_chart`'s kinds); boxes = each axes' tight
    bounding box. Returns (rgb, boxes, "matplotlib r x c")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pathasst.finetune.data.synthetic_images import CHART_KINDS, plot_chart

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 77, i])
        r, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        if r * c == 1:
            c = 2
        fig = Figure(figsize=(2.4 * c, 2.0 * r), dpi=float(rng.uniform(70, 100)))
        FigureCanvasAgg(fig)
        axes = fig.subplots(r, c, squeeze=False)
        for k, ax in enumerate(axes.flat):  # no heatmaps: their colour bar is an axes of its own
            plot_chart(ax, str(rng.choice([k for k in CHART_KINDS if k not in ("table", "pie", "heatmap")])), rng)
            ax.set_title("ABCDEFGHI"[k], loc="left", fontweight="bold")
        fig.tight_layout()
        fig.canvas.draw()
        rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        h = rgb.shape[0]
        renderer = fig.canvas.get_renderer()
        boxes = []
        for ax in axes.flat:
            bb = ax.get_tightbbox(renderer)
            boxes.append((max(0, int(np.floor(bb.x0))), max(0, int(np.floor(h - bb.y1))),
                          min(rgb.shape[1], int(np.ceil(bb.x1))), min(h, int(np.ceil(h - bb.y0)))))
        out.append((rgb, boxes, f"matplotlib {r}x{c}"))
    return out


def _choose_conf(weights: Path, images: list[np.ndarray], golds: list[list[Box]], imgsz: int) -> float:
    from pathasst.finetune.data.subfig_yolo import predict_yolo

    best = (-1.0, 0.25)
    raw = predict_yolo(weights, images, imgsz=imgsz, conf=0.05, with_scores=True)
    for conf in np.arange(0.1, 0.8, 0.05):
        preds = [[b for b, s in boxes if s >= conf] for boxes in raw]  # type: ignore[misc]
        f1 = score_predictions(preds, golds, bootstrap=0)["f1"] if preds else 0.0
        if f1 > best[0]:
            best = (f1, float(conf))
    return round(best[1], 2)


def evaluate_subfigures(data: Path, weights: Path | None = None, split: str = "test", imgsz: int = 320,
                        matplotlib_n: int = 40, limit: int | None = None, bootstrap: int = 1000,
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score the deterministic splitter (and YOLO when ``weights`` are given) on ``split`` of ``data`` and on
    ``matplotlib_n`` matplotlib figures (module docstring)."""
    rows = read_boxes(data, split)[:limit]
    if not rows:
        raise ValueError(f"{data}: no figures in split {split!r}")
    images = [load_image(Path(data) / r["image"]) for r in rows]
    golds = [[tuple(b) for b in r["boxes"]] for r in rows]
    layouts = [r["meta"]["layout"] for r in rows]
    mpl = matplotlib_figures(matplotlib_n) if matplotlib_n else []
    backends: dict[str, Callable[[list[np.ndarray]], list[list[Box]]]] = {
        "deterministic": lambda ims: [split_panels(im) for im in ims]}
    result: dict[str, Any] = {"split": split, "data": str(data), "bootstrap": f"{bootstrap} resamples of figures",
                              "matching": "unique (Hungarian) at IoU > 0.5"}
    if weights is not None:
        from pathasst.finetune.data.subfig_yolo import predict_yolo

        val = read_boxes(data, "val")[:limit]
        conf = _choose_conf(weights, [load_image(Path(data) / r["image"]) for r in val],
                            [[tuple(b) for b in r["boxes"]] for r in val], imgsz) if val else 0.25
        result["yolo"] = {"weights": str(weights), "imgsz": imgsz, "conf_chosen_on_val": conf}
        backends["yolo"] = lambda ims: predict_yolo(weights, ims, imgsz=imgsz, conf=conf)
    scores: dict[str, Any] = {}
    for name, run in backends.items():
        t0 = time.time()
        preds = run(images)
        took = time.time() - t0
        scores[name] = {"synthetic": {**score_predictions(preds, golds, layouts, bootstrap),
                                      "seconds_per_figure": round(took / len(images), 3)}}
        if mpl:
            mp = run([m[0] for m in mpl])
            scores[name]["matplotlib"] = score_predictions(mp, [m[1] for m in mpl], [m[2] for m in mpl],
                                                           bootstrap)
        if log:
            log(f"{name}: done in {took:.0f} s")
    result["backends"] = scores
    result["real_compound_figures"] = ("none available: the repository has no real multi-panel figure with panel "
                                       "boxes, and shared/data holds no compound figures (only their captions)")
    return result
