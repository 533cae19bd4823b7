"""``pathasst-train vlm --stage 1|2``: the two-stage PathAsst training (LLaVA recipe) on PathCLIP + a Llama-family LM.

* Stage 1 (feature alignment): PathCap image-caption pairs as ``<image>\\nDescribe this image.`` -> caption; the
  vision tower and the language model are frozen, only the projector (``mlp2x_gelu``) trains.
* Stage 2 (instruction tuning): LLaVA-style conversations (PathInstruct) plus the tool-invocation samples generated
  from the tool catalogue (each paired with a real image from the run's data); the projector and the language model
  train, fully or with LoRA (``--lora``, peft). The vision tower stays frozen.

The loop runs through ``accelerate``: on one CPU it is a plain loop; launched with
``accelerate launch --config_file finetune/configs/accelerate_zero3_8gpu.yaml`` it runs under DeepSpeed ZeRO-3 on 8
GPUs (see ``finetune/README.md`` for the memory arithmetic). ``--tiny`` builds a tiny Llama and a byte-level BPE
tokenizer trained on the run's own text (CPU tests); at full scale ``--lm`` names the Vicuna folder.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

__all__ = ["build_tiny_tokenizer", "load_vlm", "main", "parser", "run", "tiny_llama_config"]

_DESCRIBE = "<image>\nDescribe this image."


def build_tiny_tokenizer(texts: list[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE (GPT-2 style) trained on ``texts``, with <s> </s> <pad> <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_llama_config(tokenizer: Any, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


# ---- data -------------------------------------------------------------------------------------------------------
def stage1_examples(pathcap: Path) -> list[tuple[list[dict[str, str]], Path]]:
    from pathasst.finetune.data.readers import read_pathcap

    return [([{"from": "human", "value": _DESCRIBE}, {"from": "gpt", "value": p.caption}], p.image) for p in read_pathcap(pathcap)]


def stage2_examples(conversations: Path | None, image_root: Path | None, tool_images: list[Path], *,
                    tool_samples: int, seed: int) -> list[tuple[list[dict[str, str]], Path | None]]:
    from pathasst.finetune.data.readers import read_conversations
    from pathasst.finetune.data.toolcalls import generate_tool_samples
    from pathasst.tools.registry import default_registry

    out: list[tuple[list[dict[str, str]], Path | None]] = []
    if conversations is not None:
        out += [(c.turns, c.image) for c in read_conversations(conversations, image_root)]
    if tool_samples:
        if not tool_images:
            raise ValueError("tool-invocation samples need images to pair with (--data or --conversations)")
        rng = random.Random(seed)
        samples = [s for s in generate_tool_samples(default_registry().catalogue(), seed=seed) if s.split == "train"]
        rng.shuffle(samples)
        for i, s in enumerate(samples[:tool_samples]):
            turns = [{"from": "human", "value": "<image>\n" + s.conversations[0]["value"]}, *s.conversations[1:]]
            out.append((turns, tool_images[i % len(tool_images)]))
    return out


def pretrain_text(lm: Any, tokenizer: Any, texts: list[str], *, steps: int, seed: int, batch_size: int = 16,
                  lr: float = 3e-3, max_length: int = 96) -> list[float]:
    """A short causal-LM warm-up of the tiny LM on the run's text: it stands in for the language pretraining a real
    LM (Vicuna) brings, so that stage 1 has a language model to align images to. Returns the loss per step."""
    import torch

    rng = random.Random(seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=lr)
    losses: list[float] = []
    lm.train()
    for _ in range(steps):
        batch = tokenizer(rng.sample(texts, min(batch_size, len(texts))), return_tensors="pt", padding=True,
                          truncation=True, max_length=max_length)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = lm(**batch, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 4))
    return losses


# ---- save / load ---------------------------------------------------------------------------------------------------
def _save(out: Path, vlm: Any, tokenizer: Any, meta: dict[str, Any], *, save_lm: bool) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.save(vlm.projector.state_dict(), out / "projector.pt")
    tokenizer.save_pretrained(out / "tokenizer")
    lm = vlm.lm
    if meta.get("lora"):
        lm.save_pretrained(out / "lora")  # the adapter only; the base stays where meta["lm"] says
    elif save_lm:
        lm.save_pretrained(out / "lm")
        meta["lm"] = str(out / "lm")
    (out / "pathasst_vlm.json").write_text(json.dumps(meta, indent=2, default=str))


def load_vlm(folder: Path, *, merge_lora: bool = False) -> tuple[Any, Any, Any, Any]:
    """(vlm, tokenizer, template, image transform) from a folder written by this module."""
    import torch
    from transformers import AutoTokenizer

    from pathasst.finetune.vlm.conversation import Template
    from pathasst.finetune.vlm.model import PathAsstVLM, build_projector, load_language_model, load_vision_tower

    folder = Path(folder)
    meta = json.loads((folder / "pathasst_vlm.json").read_text())
    vis = meta["vision"]
    vision, transform = load_vision_tower(vis["model"], model_config=vis.get("model_config"), checkpoint=vis.get("checkpoint"))
    lm = load_language_model(meta["lm"], dtype=torch.bfloat16 if meta.get("bf16") else None)
    if meta.get("lora"):
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(folder / "lora"))
        if merge_lora:
            lm = lm.merge_and_unload()
    proj = build_projector(meta["projector"], meta["vision_width"], meta["lm_width"])
    proj.load_state_dict(torch.load(folder / "projector.pt", weights_only=True))
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    return PathAsstVLM(vision, proj, lm), tokenizer, Template(**meta["template"]), transform


# ---- training -------------------------------------------------------------------------------------------------------
def train_loop(vlm: Any, tokenizer: Any, template: Any, examples: list[tuple[list[dict[str, str]], Path | None]],
               transform: Any, *, epochs: int, batch_size: int, lr: float, max_steps: int | None, seed: int,
               max_length: int, grad_accum: int = 1) -> list[dict[str, Any]]:
    import torch
    from accelerate import Accelerator
    from PIL import Image

    from pathasst.finetune.vlm.conversation import tokenize_conversation

    torch.manual_seed(seed)
    rng = random.Random(seed)
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum)
    encoded = [(tokenize_conversation(turns, tokenizer, template, max_length=max_length), img) for turns, img in examples]
    params = [p for p in vlm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vlm, opt = accelerator.prepare(vlm, opt)
    model = accelerator.unwrap_model(vlm)
    cache: dict[Path, Any] = {}

    def image(p: Path | None) -> Any:
        if p is None:
            return None
        if p not in cache:
            cache[p] = transform(Image.open(p).convert("RGB"))
        return cache[p]

    total = min(max_steps or 10**9, max(1, len(encoded) // batch_size) * epochs)
    log: list[dict[str, Any]] = []
    step, t0 = 0, time.perf_counter()
    vlm.train()
    model.vision.eval()  # frozen tower: no dropout / batch statistics
    while step < total:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if step >= total:
                break
            batch = [encoded[i] for i in order[start : start + batch_size]]
            ims = [image(img) for _, img in batch]
            if any(i is None for i in ims) and not all(i is None for i in ims):
                raise ValueError("a batch mixes text-only and image conversations; use --batch-size 1 or split the data")
            images = torch.stack(ims) if ims[0] is not None else None
            with accelerator.accumulate(vlm):
                loss = vlm([ids for (ids, _), _ in batch], images, [lab for (_, lab), _ in batch])
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            log.append({"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(time.perf_counter() - t0, 2)})
    return log


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pathasst.finetune.vlm.conversation import VICUNA_V1
    from pathasst.finetune.vlm.model import PathAsstVLM, build_projector, load_language_model, load_vision_tower

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    template = VICUNA_V1
    if args.stage == 1:
        if args.data is None:
            raise SystemExit("stage 1 needs --data PATHCAP_DIR")
        examples = stage1_examples(args.data)
        vision, transform = load_vision_tower(args.vision_model, model_config=args.vision_config, checkpoint=args.vision_checkpoint)
        if args.tiny:
            from pathasst.finetune.data.toolcalls import generate_tool_samples
            from pathasst.tools.registry import default_registry

            texts = [t["value"] for turns, _ in examples for t in turns] + [template.system]
            texts += [t["value"] for s in generate_tool_samples(default_registry().catalogue(), seed=args.seed) for t in s.conversations]
            tokenizer = build_tiny_tokenizer(texts, vocab_size=args.tiny_vocab)
            lm = load_language_model(tiny_llama_config(tokenizer, hidden=args.tiny_hidden))
            pretrain_log = pretrain_text(lm, tokenizer, texts, steps=args.tiny_pretrain_steps, seed=args.seed)
        else:
            from transformers import AutoTokenizer

            if args.lm is None:
                raise SystemExit("stage 1 needs --lm LM_FOLDER (e.g. vicuna-13b-v1.5) or --tiny")
            tokenizer = AutoTokenizer.from_pretrained(str(args.lm))
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
            lm = load_language_model(args.lm, dtype=torch.bfloat16 if args.bf16 else torch.float32)
        with torch.no_grad():
            vision_width = vision(transform(__import__("PIL.Image").Image.new("RGB", (8, 8)))[None])[1].shape[-1]
        lm_width = lm.get_input_embeddings().weight.shape[1]
        proj = build_projector(args.projector, vision_width, lm_width)
        vlm = PathAsstVLM(vision, proj, lm)
        for p in [*vision.parameters(), *lm.parameters()]:
            p.requires_grad_(False)
        meta = {
            "stage": 1,
            "vision": {"model": args.vision_model, "model_config": args.vision_config, "checkpoint": args.vision_checkpoint},
            "projector": args.projector, "vision_width": int(vision_width), "lm_width": int(lm_width),
            "lm": str(args.lm) if args.lm else None, "lora": False, "template": template.__dict__,
            "bf16": bool(args.bf16),
        }
        save_lm = bool(args.tiny)
    else:
        if args.init is None:
            raise SystemExit("stage 2 needs --from STAGE1_DIR")
        vlm, tokenizer, template, transform = load_vlm(args.init)
        meta = json.loads((Path(args.init) / "pathasst_vlm.json").read_text())
        images: list[Path] = []
        if args.data is not None:
            images = [p.image for p in __import__("pathasst.finetune.data.readers", fromlist=["x"]).read_pathcap(args.data)]
        examples = stage2_examples(args.conversations, args.image_root, images, tool_samples=args.tool_samples, seed=args.seed)
        if args.only_tools:
            examples = [e for e in examples if e[0][1]["value"].startswith('{"tool_calls"')]
        for p in vlm.vision.parameters():
            p.requires_grad_(False)
        if args.lora:
            from peft import LoraConfig, get_peft_model

            vlm.lm = get_peft_model(vlm.lm, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05,
                                                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        else:
            for p in vlm.lm.parameters():
                p.requires_grad_(True)
        for p in vlm.projector.parameters():
            p.requires_grad_(True)
        meta.update({"stage": 2, "lora": bool(args.lora)})
        save_lm = not args.lora
    pretrain_log = locals().get("pretrain_log")
    log = train_loop(vlm, tokenizer, template, examples, transform, epochs=args.epochs, batch_size=args.batch_size,
                     lr=args.lr, max_steps=args.max_steps, seed=args.seed, max_length=args.max_length,
                     grad_accum=args.grad_accum)
    _save(out, vlm, tokenizer, meta, save_lm=save_lm)
    k = max(1, len(log) // 10)
    result = {
        "stage": args.stage, "examples": len(examples), "steps": len(log),
        "loss_first": round(sum(e["loss"] for e in log[:k]) / k, 4),
        "loss_last": round(sum(e["loss"] for e in log[-k:]) / k, 4),
        "trainable_params": sum(p.numel() for p in vlm.parameters() if p.requires_grad),
        "out": str(out), "log": log,
    }
    if pretrain_log:
        result["tiny_pretrain_loss"] = [pretrain_log[0], pretrain_log[-1]]
    (out / "train_log.json").write_text(json.dumps(result, indent=2))
    return result


def parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(description="PathAsst two-stage training (LLaVA recipe).")
    ap.add_argument("--stage", type=int, choices=(1, 2), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="PathCap folder (stage 1 captions; stage 2 images for tool samples)")
    ap.add_argument("--conversations", type=Path, default=None, help="stage 2: LLaVA-style conversations (PathInstruct)")
    ap.add_argument("--image-root", type=Path, default=None, help="folder the conversations' images are relative to")
    ap.add_argument("--tool-samples", type=int, default=2000, help="stage 2: tool-invocation samples from the catalogue")
    ap.add_argument("--only-tools", action="store_true", help="stage 2: train on the tool-invocation samples only")
    ap.add_argument("--from", dest="init", type=Path, default=None, help="stage 2: the stage-1 output folder")
    ap.add_argument("--lm", type=Path, default=None, help="language model folder (Vicuna-13b at full scale)")
    ap.add_argument("--tiny", action="store_true", help="tiny Llama + BPE tokenizer trained on the data (CPU tests)")
    ap.add_argument("--tiny-hidden", type=int, default=64)
    ap.add_argument("--tiny-vocab", type=int, default=512)
    ap.add_argument("--tiny-pretrain-steps", type=int, default=150, help="text warm-up of the tiny LM before stage 1")
    ap.add_argument("--vision-model", default="ViT-B-16")
    ap.add_argument("--vision-config", type=Path, default=None, help="open_clip config JSON (e.g. configs/pathclip-tiny.json)")
    ap.add_argument("--vision-checkpoint", type=Path, default=None, help="PathCLIP checkpoint (pathclip.pt)")
    ap.add_argument("--projector", default="mlp2x_gelu", choices=("linear", "mlp2x_gelu"))
    ap.add_argument("--lora", action="store_true", help="stage 2: LoRA (peft) instead of full fine-tuning")
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8, help="per-device micro-batch")
    ap.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (match ds_zero3.json)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    return ap


def main(argv: list[str] | None = None) -> None:
    res = run(parser().parse_args(argv))
    print(json.dumps({k: v for k, v in res.items() if k != "log"}, indent=2))


if __name__ == "__main__":
    main()
