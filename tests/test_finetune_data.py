"""finetune.data: PathCap / LLaVA readers and validators, and the tool-invocation generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathasst.finetune.data import DataError, generate_tool_samples, overlap_report, read_conversations, read_pathcap
from pathasst.finetune.data.toolcalls import normalise_question
from pathasst.tools.registry import default_registry

DATA = Path(__file__).resolve().parents[1] / "planning" / "data"


@pytest.fixture(scope="module")
def catalogue():
    return default_registry().catalogue()


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 100, 150)).save(path)


def test_pathcap_reads_valid_and_reports_every_broken_record(tmp_path: Path):
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.png")
    records = [
        {"caption": "H&E of  colon adenocarcinoma", "figure_fn": "a.png", "pmc_id": "PMC1"},
        {"caption": "", "figure_fn": "b.png", "pmc_id": "PMC2"},
        {"caption": "lost figure", "figure_fn": "missing.png", "pmc_id": "PMC3"},
        "not an object",
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    with pytest.raises(DataError) as err:
        read_pathcap(tmp_path)
    msg = str(err.value)
    assert "3 invalid record(s)" in msg
    assert "b.png: empty caption" in msg and "missing.png: missing image images/missing.png" in msg and "#3" in msg
    pairs, problems = read_pathcap(tmp_path, skip_invalid=True)
    assert [(p.id, p.caption, p.pmc_id) for p in pairs] == [("a.png", "H&E of colon adenocarcinoma", "PMC1")]
    assert [p.record for p in problems] == ["b.png", "missing.png", "#3"]


def test_conversations_validate_image_token_roles_and_ids(tmp_path: Path):
    _png(tmp_path / "img" / "x.png")
    good = {"id": "ok", "image": "img/x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "Colon."}]}
    recs = [
        good,
        {"id": "no-token", "image": "img/x.png", "conversations": [
            {"from": "human", "value": "What?"}, {"from": "gpt", "value": "x"}]},
        {"id": "no-image", "image": "img/none.png", "conversations": good["conversations"]},
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "bad-role", "conversations": [{"from": "user", "value": "Hi"}]},
        {"id": "ok", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}]},
    ]
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    convs, problems = read_conversations(path, skip_invalid=True)
    assert [c.id for c in convs] == ["ok", "text-only"]
    reasons = {p.record: p.reason for p in problems}
    assert "0 '<image>' tokens" in reasons["no-token"]
    assert "missing image img/none.png" in reasons["no-image"]
    assert "turn 0 is not" in reasons["bad-role"]
    assert reasons["ok"] == "duplicate id"
    with pytest.raises(DataError, match="no-token"):
        read_conversations(path)


def test_generator_is_deterministic_deduplicated_and_split(catalogue):
    a = generate_tool_samples(catalogue, seed=3)
    b = generate_tool_samples(catalogue, seed=3)
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert [s.question for s in generate_tool_samples(catalogue, seed=4)] != [s.question for s in a]
    keys = [(normalise_question(s.question), s.stain, s.image_kind) for s in a]
    assert len(keys) == len(set(keys))
    splits = {}
    for s in a:
        splits.setdefault(normalise_question(s.question), set()).add(s.split)
    assert all(len(v) == 1 for v in splits.values())  # a question never lands in both splits
    n_val = sum(s.split == "validation" for s in a)
    assert 0.04 * len(a) < n_val < 0.2 * len(a)
    names = {t["name"] for t in catalogue}
    covered = {t for s in a for t in s.tools}
    assert covered == names  # every tool has samples
    assert sum(not s.tools for s in a) > 100  # negatives
    assert sum(len(s.tools) == 2 for s in a) > 50  # two-tool samples


def test_samples_have_valid_calls_results_and_grounded_answers(catalogue):
    from pathasst.planning.planner_eval import _arguments_valid  # the evaluator's own validity check

    schemas = {t["name"]: t["input_schema"] for t in catalogue}
    reg = default_registry()
    models = {n: reg.tool_class(n).input_model for n in reg.names()}
    samples = generate_tool_samples(catalogue, seed=0)
    for s in samples:
        assert [c["name"] for c in s.calls] == s.tools
        for c in s.calls:
            assert _arguments_valid(c["name"], c["arguments"], schemas, models), (s.question, c)
            for key, value in s.result[c["name"]].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    assert str(value) in s.answer or list(s.result[c["name"]]).index(key) >= 6
        assert s.conversations[0] == {"from": "human", "value": s.question}
        assert s.conversations[1]["from"] == "gpt" and "<image>" not in json.dumps(s.conversations)
    ihc = [s for s in samples if s.tools == ["ihc_quantification"] and s.stain == "Ki-67"]
    assert ihc and all(s.calls[0]["arguments"]["mode"] == "ki67" for s in ihc)
    assert all(s.result["ihc_quantification"].get("mode", "ki67") == "ki67" for s in ihc)
    region = [s for s in samples if s.tools == ["region_segmentation"]]
    assert region and all({"point", "box"} & set(s.calls[0]["arguments"]) for s in region)


def test_written_tool_data_validates_as_conversations(catalogue, tmp_path: Path):
    samples = generate_tool_samples(catalogue, seed=0)[:50]
    path = tmp_path / "tool_train.jsonl"
    path.write_text("".join(json.dumps(s.to_json()) + "\n" for s in samples))
    convs = read_conversations(path)
    assert [c.id for c in convs] == [s.id for s in samples] and all(c.image is None for c in convs)


def test_a_new_tool_in_the_catalogue_gets_data_with_no_other_edit(catalogue):
    new = {
        "name": "gland_counting",
        "description": "Counts glands in an H&E image and reports their number and mean gland area.",
        "input_schema": {"type": "object", "properties": {"image": {"type": "string"}}, "required": ["image"]},
        "output_schema": {"type": "object", "properties": {"gland_count": {"type": "integer", "minimum": 0}}},
    }
    samples = generate_tool_samples([*catalogue, new], seed=0)
    mine = [s for s in samples if "gland_counting" in s.tools]
    assert len(mine) >= 15
    assert any(s.question.startswith("Count glands in an H&E image") for s in mine)
    assert all("gland count = " in s.answer for s in mine)
    before = {s.question for s in generate_tool_samples(catalogue, seed=0)}
    assert {s.question for s in samples} != before


def test_evaluation_questions_are_excluded_and_overlap_reported(catalogue):
    evals = [json.loads(line)["question"] for f in ("planner_dev.jsonl", "planner_holdout.jsonl")
             for line in (DATA / f).read_text().splitlines() if line.strip()]
    plain = generate_tool_samples(catalogue, seed=0)
    planted = plain[0].question
    excluded = generate_tool_samples(catalogue, seed=0, exclude=[*evals, planted.upper() + "!"])
    assert planted not in {s.question for s in excluded}
    report = overlap_report(excluded, evals)
    assert report == {"questions": len(evals), "exact": 0, "near": 0, "examples": []}
    assert overlap_report(plain, [planted])["exact"] == 1
