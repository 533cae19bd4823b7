"""Score a caption split against gold per-panel captions (``gt_subfigures``; issue 29, item 1).

Panel-label recall / precision (labels matched case-insensitively per figure) and mean token F1 of the panel captions
(:func:`token_f1`, over lower-cased letter/digit runs; a missing panel scores 0). Measured on
``../shared/data/captions/prostate_split_gold_dev.json`` (90 figures, 407 gold panels)::

    pathasst-train data eval-split prostate_split_gold_dev.json
        deterministic parser:           label recall 1.000, precision 0.995, mean panel token F1 0.945
    ... --strip-refined                 (magnification, identifiers and stain-only sentences removed)   F1 0.927
    ... --baseline whole-caption        (same labels, every panel = the whole caption)                   F1 0.541
    one unlabelled panel = whole caption: label recall 0, so every gold panel scores 0

The two extra labels are H and I of a figure whose caption names nine panels and whose gold has seven.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pathasst.finetune.data.caption_refine import _tokens, strip_refined
from pathasst.finetune.data.captions import split_caption
from pathasst.finetune.data.readers import DataError, RecordProblem

__all__ = ["evaluate_split", "token_f1"]


# --------------------------------------------------------------------------------------------------- token F1
def token_f1(pred: str, gold: str) -> float:
    """Bag-of-tokens F1 (lower-cased letters/digits runs, SQuAD style); 1.0 when both are empty."""
    p, g = Counter(_tokens(pred)), Counter(_tokens(gold))
    if not p and not g:
        return 1.0
    common = sum((p & g).values())
    if not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(g.values())
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------------- evaluation
def _gold_panels(fid: str, entry: Any, problems: list[RecordProblem]) -> list[tuple[str, str]] | None:
    subs = entry.get("gt_subfigures") if isinstance(entry, dict) else None
    if not isinstance(subs, list):
        problems.append(RecordProblem(fid, "no 'gt_subfigures' list"))
        return None
    panels = []
    for i, sub in enumerate(subs):
        try:
            panels.append((str(sub["label"]["text"]), str(sub["caption"])))
        except (KeyError, TypeError):
            problems.append(RecordProblem(fid, f"gt_subfigures[{i}] lacks label.text or caption"))
    return panels


def evaluate_split(gold: dict[str, Any], pred: dict[str, Any] | None = None, *, strip: bool = False,
                   baseline: Literal["whole-caption"] | None = None, per_figure: bool = False,
                   source: str = "gold") -> dict[str, Any]:
    """Panel-label recall / precision (case-insensitive, per figure) and mean token F1 of panel captions against
    ``gt_subfigures`` (matched by label; a gold panel with no predicted panel scores 0). Without ``pred`` the
    deterministic splitter runs on the gold ``caption`` fields only. ``strip`` scores :func:`strip_refined`
    captions; ``baseline="whole-caption"`` gives each predicted panel the whole caption."""
    problems: list[RecordProblem] = []
    n_gold = n_pred = n_match = 0
    f1s: list[float] = []
    fig_f1s: list[float] = []
    rows = []
    missing = 0
    for fid, entry in gold.items():
        gpanels = _gold_panels(fid, entry, problems)
        if gpanels is None:
            continue
        if pred is None:
            caption = entry.get("caption") if isinstance(entry.get("caption"), str) else ""
            ppanels = [(p.label, p.caption) for p in split_caption(caption).panels]
        else:
            rec = pred.get(fid)
            if not isinstance(rec, dict):
                missing += 1
                rec = {"panels": []}
            ppanels = [(str(p.get("label", "")), str(p.get("caption", ""))) for p in rec.get("panels", [])
                       if isinstance(p, dict)]
        if baseline == "whole-caption":
            whole = entry.get("caption", "") if isinstance(entry, dict) else ""
            ppanels = [(lab, whole) for lab, _ in ppanels]
        if strip:
            ppanels = [(lab, strip_refined(cap)) for lab, cap in ppanels]
        by_label: dict[str, str] = {}
        for lab, cap in ppanels:
            by_label.setdefault(lab.strip().lower(), cap)
        glabels = {lab.strip().lower() for lab, _ in gpanels}
        n_gold += len(glabels)
        n_pred += len(by_label)
        n_match += len(glabels & set(by_label))
        scores = [token_f1(by_label[lab.strip().lower()], cap) if lab.strip().lower() in by_label else 0.0
                  for lab, cap in gpanels]
        f1s.extend(scores)
        fig_f1s.append(sum(scores) / len(scores) if scores else 0.0)
        if per_figure:
            rows.append({"figure": fid, "gold_labels": sorted(glabels), "pred_labels": sorted(by_label),
                         "mean_f1": round(fig_f1s[-1], 4)})
    if problems:
        raise DataError(source, problems)
    report: dict[str, Any] = {
        "figures": len(fig_f1s),
        "gold_panels": n_gold,
        "pred_panels": n_pred,
        "matched_labels": n_match,
        "label_recall": round(n_match / n_gold, 4) if n_gold else 0.0,
        "label_precision": round(n_match / n_pred, 4) if n_pred else 0.0,
        "mean_panel_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0,
        "mean_figure_f1": round(sum(fig_f1s) / len(fig_f1s), 4) if fig_f1s else 0.0,
        "figures_missing_from_pred": missing,
        "backend": "rules" if pred is None else "pred",
    }
    if baseline:
        report["baseline"] = baseline
    if strip:
        report["strip_refined"] = True
    if per_figure:
        report["per_figure"] = rows
    return report
