"""PathCLIP training: contrastive fine-tuning of an open_clip model on image-caption pairs (PathCap layout), with
evaluation (image-text retrieval R@1 / R@5 both ways, zero-shot accuracy on a labelled folder).

``pathasst-train clip --data PATHCAP_DIR --out DIR [--model ViT-B-16 | --model-config tiny.json]
[--checkpoint pathclip-base.pt] [--zero-shot-dir LABELLED_DIR]`` (or ``python -m pathasst.finetune.clip``).

The checkpoint written (``DIR/pathclip.pt``, a plain open_clip state dict) is the format ``memory``'s PathCLIP loader
reads (:func:`pathasst.core.pathclip.load_pathclip_state_dict`); at full scale (ViT-B-16, QuickGELU) it is a
drop-in ``PATHASST_PATHCLIP_WEIGHTS``. Multi-GPU runs at full scale use open_clip's own trainer
(``open_clip_train``, see ``finetune/README.md``) on the same data converted to CSV; this module is the reference loop.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

__all__ = ["ZERO_SHOT_TEMPLATE", "build_clip", "evaluate_retrieval", "main", "train_clip", "zero_shot_accuracy"]

ZERO_SHOT_TEMPLATE = "An image of {}"  # the template the tissue_classification tool uses
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def build_clip(model: str = "ViT-B-16", *, model_config: Path | None = None, checkpoint: Path | None = None,
               quick_gelu: bool = True) -> tuple[Any, Any, Any, Any]:
    """(model, train transform, eval transform, tokenizer). ``model_config`` registers a custom open_clip config
    (its file stem becomes the model name); ``checkpoint`` is read with memory's PathCLIP loader."""
    import open_clip

    from pathasst.core.pathclip import load_pathclip_state_dict

    if model_config is not None:
        open_clip.add_model_config(str(model_config))
        model = Path(model_config).stem
    net, train_tf, eval_tf = open_clip.create_model_and_transforms(model, pretrained=None, force_quick_gelu=quick_gelu)
    if checkpoint is not None:
        net.load_state_dict(load_pathclip_state_dict(Path(checkpoint)), strict=True)
    return net, train_tf, eval_tf, open_clip.get_tokenizer(model)


def _load_images(paths: list[Path], transform: Any) -> Any:
    import torch
    from PIL import Image

    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def _encode(model: Any, images: Any, tokens: Any, batch: int = 64) -> tuple[Any, Any]:
    import torch

    with torch.inference_mode():
        im = torch.cat([model.encode_image(images[i : i + batch], normalize=True) for i in range(0, len(images), batch)])
        tx = torch.cat([model.encode_text(tokens[i : i + batch], normalize=True) for i in range(0, len(tokens), batch)])
    return im, tx


def evaluate_retrieval(model: Any, pairs: list[Any], transform: Any, tokenizer: Any) -> dict[str, float]:
    """Image->text and text->image recall@1/@5 over ``pairs`` (a caption counts as correct for its own image; equal
    captions are treated as the same text, so duplicates do not count as misses)."""
    import torch

    model.eval()
    images = _load_images([p.image for p in pairs], transform)
    captions = [p.caption for p in pairs]
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    target = torch.tensor([index[c] for c in captions])
    im, tx = _encode(model, images, tokenizer(unique))
    sim = im @ tx.T  # images x unique captions
    out: dict[str, float] = {}
    for k in (1, 5):
        top = sim.topk(min(k, sim.shape[1]), dim=1).indices
        out[f"i2t_R@{k}"] = round(float((top == target[:, None]).any(1).float().mean()), 4)
        # text -> image: for each caption, is one of its images in the top k?
        topi = sim.T.topk(min(k, sim.shape[0]), dim=1).indices
        hits = [bool((target[topi[j]] == j).any()) for j in range(len(unique))]
        out[f"t2i_R@{k}"] = round(sum(hits) / len(hits), 4)
    return out


def zero_shot_accuracy(model: Any, folder: Path, transform: Any, tokenizer: Any,
                       template: str = ZERO_SHOT_TEMPLATE) -> dict[str, Any]:
    """Accuracy of zero-shot classification on ``folder/<label>/<image>`` with prompts ``template.format(label)``."""
    import torch

    folder = Path(folder)
    labels = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(labels) < 2:
        raise ValueError(f"{folder}: a labelled folder needs at least two class sub-folders")
    paths, truth = [], []
    for i, label in enumerate(labels):
        files = sorted(p for p in (folder / label).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        paths += files
        truth += [i] * len(files)
    model.eval()
    im, tx = _encode(model, _load_images(paths, transform), tokenizer([template.format(lb.replace("_", " ")) for lb in labels]))
    pred = (im @ tx.T).argmax(1)
    acc = float((pred == torch.tensor(truth)).float().mean())
    majority = max(truth.count(i) for i in range(len(labels))) / len(truth)
    return {"accuracy": round(acc, 4), "n": len(truth), "labels": labels, "majority_baseline": round(majority, 4)}


def train_clip(model: Any, pairs: list[Any], transform: Any, tokenizer: Any, *, epochs: int = 1, batch_size: int = 32,
               lr: float = 5e-4, weight_decay: float = 0.1, seed: int = 0, max_steps: int | None = None,
               log_every: int = 10) -> list[dict[str, float]]:
    """Contrastive training (open_clip ``ClipLoss``, AdamW, linear warm-up then cosine). Returns the loss log: one entry per
    ``log_every`` steps, and one ``{"epoch", "mean_loss"}`` entry at the end of each epoch."""
    import math

    import torch
    from open_clip import ClipLoss

    torch.manual_seed(seed)
    rng = random.Random(seed)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(pairs) // batch_size)
    total = min(max_steps or 10**9, steps_per_epoch * epochs)
    warmup = max(1, total // 10)  # linear warm-up: without it small models often collapse to uniform similarities
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    log: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()
    model.train()
    epoch = 0
    while step < total:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        losses: list[float] = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if step >= total:
                break
            batch = [pairs[i] for i in order[start : start + batch_size]]
            images = _load_images([p.image for p in batch], transform)
            texts = tokenizer([p.caption for p in batch])
            image_features, text_features, logit_scale = model(images, texts)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            losses.append(loss.item())
            if step == 1 or step % log_every == 0 or step == total:
                log.append({"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(time.perf_counter() - t0, 1)})
        epoch += 1
        log.append({"epoch": epoch, "mean_loss": round(sum(losses) / max(1, len(losses)), 4)})
    return log


def _split(pairs: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(order) * val_fraction)) if val_fraction > 0 else 0
    return order[n_val:], order[:n_val]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pathasst.finetune.data.readers import read_pathcap

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the initialisation too (from scratch), not only the batches
    pairs = read_pathcap(args.data)
    if args.limit:
        pairs = pairs[: args.limit]
    train, val = _split(pairs, args.val_fraction, args.seed)
    model, train_tf, eval_tf, tok = build_clip(args.model, model_config=args.model_config, checkpoint=args.checkpoint)
    eval_on = val or train
    result: dict[str, Any] = {"train_pairs": len(train), "val_pairs": len(val)}
    result["retrieval_before"] = evaluate_retrieval(model, eval_on, eval_tf, tok)
    if args.zero_shot_dir:
        result["zero_shot_before"] = zero_shot_accuracy(model, args.zero_shot_dir, eval_tf, tok)
    log = train_clip(model, train, train_tf if args.augment else eval_tf, tok, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, seed=args.seed, max_steps=args.max_steps)
    result["log"] = log
    epochs = [e["mean_loss"] for e in log if "epoch" in e]
    result["epoch_mean_loss"] = epochs
    result["loss_first"], result["loss_last"] = epochs[0], epochs[-1]
    result["retrieval_after"] = evaluate_retrieval(model, eval_on, eval_tf, tok)
    if args.zero_shot_dir:
        result["zero_shot_after"] = zero_shot_accuracy(model, args.zero_shot_dir, eval_tf, tok)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "pathclip.pt")
    result["checkpoint"] = str(out / "pathclip.pt")
    result["model"] = Path(args.model_config).stem if args.model_config else args.model
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(description="Contrastive PathCLIP training on PathCap-layout pairs.")
    ap.add_argument("--data", type=Path, required=True, help="PathCap folder (data.json + images/)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model name (PathCLIP: ViT-B-16)")
    ap.add_argument("--model-config", type=Path, default=None, help="custom open_clip config JSON (e.g. configs/pathclip-tiny.json)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="start from this open_clip state dict (else from scratch)")
    ap.add_argument("--zero-shot-dir", type=Path, default=None, help="labelled folder LABEL/IMAGE for zero-shot accuracy")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--augment", action="store_true", help="use open_clip's training augmentation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    return ap


def main(argv: list[str] | None = None) -> None:
    res = run(parser().parse_args(argv))
    print(json.dumps({k: v for k, v in res.items() if k != "log"}, indent=2))


if __name__ == "__main__":
    main()
