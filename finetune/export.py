"""Export for serving: merge a LoRA adapter, write a LoRA adapter as GGUF (llama.cpp ``lora_path``), and write a
Llama-family language model (plus its byte-level BPE tokenizer) as a GGUF that llama-cpp-python loads.

Everything is written with the PyPI ``gguf`` package (the self-contained route; llama.cpp's own conversion scripts
need its bundled gguf-py). Tensor names follow llama.cpp's naming (``blk.N.attn_q`` ...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HF_TO_GGUF", "gguf_tensor_name", "merge_lora", "write_llama_gguf", "write_lora_gguf"]

# HF module suffix -> llama.cpp tensor stem (Llama, Gemma 3 and other Llama-family decoders)
HF_TO_GGUF: dict[str, str] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)$")


def gguf_tensor_name(module: str) -> str:
    """``...layers.3.self_attn.q_proj`` -> ``blk.3.attn_q``. Raises ValueError for modules llama.cpp has no name for."""
    m = _LAYER.search(module)
    if not m or m.group(2) not in HF_TO_GGUF:
        raise ValueError(f"no llama.cpp tensor name for module {module!r}")
    return f"blk.{m.group(1)}.{HF_TO_GGUF[m.group(2)]}"


def write_lora_gguf(peft_model: Any, path: Path, arch: str, *, dtype: str = "f16") -> dict[str, Any]:
    """Write the LoRA weights of a peft model as a llama.cpp adapter GGUF (``Llama(lora_path=...)``).

    ``lora_a`` is stored as (r, in) and ``lora_b`` as (out, r) in torch order (GGUF reverses the dimensions, which is
    what llama.cpp checks against the base tensor). ``adapter.lora.alpha`` carries the scale alpha / r. For the
    ``llama`` architecture the rows of q/k ``lora_b`` get the same rotary permutation as the base weights; Gemma 3
    weights are stored unpermuted.
    """
    import gguf
    import torch

    cfg = next(iter(peft_model.peft_config.values()))
    model_cfg = peft_model.get_base_model().config
    heads = {"attn_q": model_cfg.num_attention_heads, "attn_k": getattr(model_cfg, "num_key_value_heads", None)}
    np_dtype = np.float16 if dtype == "f16" else np.float32
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, param in peft_model.named_parameters():
        m = re.match(r"(.+)\.lora_(A|B)\.[^.]+\.weight$", name)
        if not m:
            continue
        stem = gguf_tensor_name(m.group(1))
        value = param.detach().to(torch.float32).cpu().numpy()
        kind = stem.rsplit(".", 1)[1]
        if arch == "llama" and m.group(2) == "B" and kind in heads:  # llama.cpp stores Llama q/k permuted
            value = _permute_qk(value, heads[kind] or heads["attn_q"])
        pairs.setdefault(stem, {})[m.group(2)] = value.astype(np_dtype)
    if not pairs:
        raise ValueError("the model has no LoRA weights")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(cfg.lora_alpha))
    for stem in sorted(pairs):
        writer.add_tensor(f"{stem}.weight.lora_a", pairs[stem]["A"])
        writer.add_tensor(f"{stem}.weight.lora_b", pairs[stem]["B"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return {"path": str(path), "tensors": 2 * len(pairs), "rank": int(cfg.r), "alpha": float(cfg.lora_alpha), "bytes": path.stat().st_size}


def merge_lora(peft_model: Any) -> Any:
    """The base model with the LoRA weights merged in (``merge_and_unload``), ready for ``save_pretrained``. A model
    loaded from GGUF is made serialisable (its gguf quantizer marker removed), as measured in ENVIRONMENT.md."""
    merged = peft_model.merge_and_unload()
    if getattr(merged, "hf_quantizer", None) is not None:
        merged.hf_quantizer = None
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    return merged


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout -> llama.cpp (GGML interleaved) layout, as llama.cpp's converter does for Llama."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model: Any, tokenizer: Any, path: Path, *, name: str = "pathasst-lm") -> dict[str, Any]:
    """Write a HF ``LlamaForCausalLM`` (f32) and its byte-level BPE tokenizer (``PreTrainedTokenizerFast``) as GGUF.

    Covers the Llama architecture (Vicuna is one): q/k are permuted to llama.cpp's rotary layout; the vocabulary is
    written as a GPT-2 style BPE (tokens, types, merges, bos/eos/pad ids)."""
    import gguf

    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"write_llama_gguf handles model_type 'llama', got {cfg.model_type!r}")
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(cfg.hidden_size // n_head)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    spm_file = getattr(tokenizer, "vocab_file", None)
    if spm_file and str(spm_file).endswith(".model"):
        _add_spm_vocab(w, spm_file, cfg.vocab_size, tokenizer)  # Llama / Vicuna SentencePiece
    else:
        _add_bpe_vocab(w, tokenizer, cfg.vocab_size)  # byte-level BPE (the tiny test models)
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd.get("lm_head.weight", sd["model.embed_tokens.weight"]))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute_qk(sd[p + "self_attn.q_proj.weight"], n_head))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute_qk(sd[p + "self_attn.k_proj.weight"], n_kv))
        for hf, stem in HF_TO_GGUF.items():
            if stem not in ("attn_q", "attn_k"):
                w.add_tensor(f"blk.{i}.{stem}.weight", sd[p + hf + ".weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"path": str(path), "bytes": path.stat().st_size, "tensors": 3 + 9 * cfg.num_hidden_layers}


def export_vlm_language_model(folder: Path, gguf_path: Path, *, merged_dir: Path | None = None) -> dict[str, Any]:
    """Load a PathAsst folder (``pathasst-train vlm`` output), merge its LoRA if any, optionally save the merged HF
    language model to ``merged_dir``, and write the language model as GGUF for the ``llamacpp`` planner.
    (The vision tower + projector are not part of the GGUF; a multimodal llama.cpp deployment adds an mmproj file.)"""
    from pathasst.finetune.vlm.train import load_vlm

    vlm, tokenizer, _, _ = load_vlm(Path(folder), merge_lora=True)
    lm = vlm.lm
    if merged_dir is not None:
        lm.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
    return write_llama_gguf(lm, tokenizer, Path(gguf_path))


def _add_bpe_vocab(w: Any, tokenizer: Any, vocab_size: int) -> None:
    """GPT-2 style byte-level BPE vocabulary (tokens, types, merges, special ids)."""
    import json

    import gguf

    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if len(tokens) != vocab_size:
        tokens += [f"[PAD{i}]" for i in range(vocab_size - len(tokens))]
    special = set(tokenizer.all_special_tokens)
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def _add_spm_vocab(w: Any, spm_file: str, vocab_size: int, tokenizer: Any) -> None:
    """SentencePiece vocabulary (Llama / Vicuna): pieces, scores and types, as llama.cpp's converter writes them."""
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    for i in range(len(tokens), vocab_size):  # added tokens (e.g. a pad token)
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.USER_DEFINED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else sp.bos_id())
    w.add_eos_token_id(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else sp.eos_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
