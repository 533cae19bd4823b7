"""PathAsst two-stage training at tiny scale (tiny PathCLIP tower + tiny Llama), LoRA, and GGUF export to llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA  # one place knows where ../shared/data is (PATHASST_SHARED_DATA overrides)

CONSEP = SHARED_DATA / "consep_train"
TINY = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "pathclip-tiny.json"

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(not CONSEP.is_dir(), reason="needs ../shared/data/consep_train (real H&E tiles)"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pathasst.finetune import clip
    from pathasst.finetune.data.consep import consep_to_pathcap
    from pathasst.finetune.vlm import train

    root = tmp_path_factory.mktemp("vlm")
    consep_to_pathcap(CONSEP, root / "pc", limit=64)
    clip.run(clip.parser().parse_args(["--data", str(root / "pc"), "--out", str(root / "clip"), "--model-config",
                                       str(TINY), "--max-steps", "2", "--batch-size", "16", "--threads", "1"]))
    common = ["--threads", "1", "--data", str(root / "pc")]
    s1 = train.run(train.parser().parse_args([
        "--stage", "1", "--tiny", "--out", str(root / "s1"), "--vision-config", str(TINY), "--vision-checkpoint",
        str(root / "clip" / "pathclip.pt"), "--max-steps", "20", "--batch-size", "8", "--tiny-pretrain-steps", "100",
        *common]))
    s2 = train.run(train.parser().parse_args([
        "--stage", "2", "--from", str(root / "s1"), "--out", str(root / "s2"), "--tool-samples", "20", "--only-tools",
        "--epochs", "40", "--batch-size", "8", "--lr", "3e-3", *common]))
    lora = train.run(train.parser().parse_args([
        "--stage", "2", "--from", str(root / "s1"), "--out", str(root / "s2lora"), "--tool-samples", "40",
        "--only-tools", "--lora", "--lora-r", "8", "--max-steps", "15", "--batch-size", "8", "--lr", "3e-3", *common]))
    return root, s1, s2, lora


def test_stage1_trains_only_the_projector_and_loss_falls(runs):
    root, s1, _, _ = runs
    assert s1["loss_last"] < s1["loss_first"]
    assert s1["tiny_pretrain_loss"][1] < s1["tiny_pretrain_loss"][0] / 2
    assert s1["trainable_params"] == 64 * 64 * 2 + 64 * 2  # mlp2x_gelu: two 64x64 linears
    meta = json.loads((root / "s1" / "pathasst_vlm.json").read_text())
    assert meta["projector"] == "mlp2x_gelu" and meta["vision"]["checkpoint"].endswith("pathclip.pt")


def test_stage2_reloads_and_answers_a_tool_question_with_a_valid_call(runs):
    import torch
    from PIL import Image

    from pathasst.finetune.vlm.conversation import tokenize_conversation
    from pathasst.finetune.vlm.train import load_vlm, stage2_examples
    from pathasst.planning.base import PlannerContext
    from pathasst.planning.parsing import parse_plan
    from pathasst.tools.registry import default_registry

    root, _, s2, _ = runs
    assert s2["loss_last"] < s2["loss_first"] / 3
    vlm, tok, template, transform = load_vlm(root / "s2")
    image = sorted((root / "pc" / "images").iterdir())[0]
    turns, _ = next(e for e in stage2_examples(None, None, [image], tool_samples=20, seed=0)  # one call: 80 tokens
                    if e[0][1]["value"].startswith('{"tool_calls"')
                    and len(json.loads(e[0][1]["value"])["tool_calls"]) == 1)
    ids, _ = tokenize_conversation(turns[:1], tok, template, generation=True)
    with torch.no_grad():
        reply = tok.decode(vlm.generate(ids, transform(Image.open(image).convert("RGB")), max_new_tokens=80,
                                        eos_token_id=tok.eos_token_id))
    want = json.loads(turns[1]["value"])["tool_calls"][0]["name"]
    ctx = PlannerContext(question=turns[0]["value"], images=["slide.svs", "image.png"],
                         catalogue=default_registry().catalogue())
    decision = parse_plan(reply, ctx)
    assert [c.tool for c in decision.calls] == [want], reply


def test_lora_stage2_and_gguf_export_load_in_llama_cpp(runs):
    import llama_cpp
    import torch

    from pathasst.finetune.export import export_vlm_language_model
    from pathasst.finetune.vlm.train import load_vlm

    root, _, _, lora = runs
    assert lora["loss_last"] < lora["loss_first"]
    assert (root / "s2lora" / "lora" / "adapter_config.json").is_file()
    assert lora["trainable_params"] < 64 * 64 * 2 + 64 * 2 + 30000  # projector + LoRA only, not the whole LM
    info = export_vlm_language_model(root / "s2lora", root / "lm.gguf", merged_dir=root / "merged")
    assert info["bytes"] > 100_000 and (root / "merged" / "config.json").is_file()
    vlm, tok, _, _ = load_vlm(root / "s2lora", merge_lora=True)
    llm = llama_cpp.Llama(model_path=str(root / "lm.gguf"), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    text = "USER: count the nuclei on this slide ASSISTANT:"
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    assert llm.tokenize(text.encode()) == ids  # same tokenizer on both sides
    llm.eval(ids)
    got = np.array(llm.scores[len(ids) - 1])
    with torch.no_grad():
        want = vlm.lm(torch.tensor([ids])).logits[0, -1].numpy()
    assert got.argmax() == want.argmax()
    np.testing.assert_allclose(got, want, atol=2e-2)
