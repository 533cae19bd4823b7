"""GGUF export of a Llama with a SentencePiece vocabulary (the Vicuna path) and of a LoRA adapter's tensor names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def _spm(tmp: Path) -> Path:
    import sentencepiece as spm

    words = "count the nuclei in this H&E tile of colorectal adenocarcinoma rich in epithelial inflammatory cells"
    text = "\n".join(f"{words} {i} USER: ASSISTANT: tool_calls mitosis detection slide" for i in range(200))
    (tmp / "corpus.txt").write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "spm"), vocab_size=400, byte_fallback=True,
        model_type="bpe", character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )
    return tmp / "spm.model"


def test_llama_with_sentencepiece_vocab_exports_and_matches_in_llama_cpp(tmp_path: Path):
    import llama_cpp
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pathasst.finetune.export import write_llama_gguf

    model_file = _spm(tmp_path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    tok = SimpleNamespace(vocab_file=str(model_file), bos_token_id=1, eos_token_id=2)
    info = write_llama_gguf(model, tok, tmp_path / "vicuna-like.gguf")
    assert info["tensors"] == 3 + 9 * 2
    llm = llama_cpp.Llama(model_path=info["path"], n_ctx=128, logits_all=True, verbose=False, n_threads=1)
    text = "count the nuclei in this slide"
    ids = [1, *spm.SentencePieceProcessor(model_file=str(model_file)).encode(text)]
    assert llm.tokenize(text.encode()) == ids
    llm.eval(ids)
    got = np.array(llm.scores[len(ids) - 1])
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_gguf_tensor_names_cover_llama_family_projections():
    from pathasst.finetune.export import gguf_tensor_name

    assert gguf_tensor_name("base_model.model.model.layers.12.self_attn.q_proj") == "blk.12.attn_q"
    assert gguf_tensor_name("model.layers.0.mlp.down_proj") == "blk.0.ffn_down"
    with pytest.raises(ValueError, match="no llama.cpp tensor name"):
        gguf_tensor_name("model.layers.0.self_attn.rotary_emb")
