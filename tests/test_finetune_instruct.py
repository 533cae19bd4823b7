"""``pathasst-train data instruct`` (issue 29, item 2): conversations grounded in their captions, bad input, an LLM
stand-in server, resumability, and the real ARCH captions."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_standin import ChatStandIn

from pathasst.finetune.cli import main as train_main
from pathasst.finetune.data.instruct import Entry, InstructLLM, build_sample
from pathasst.finetune.data.instruct_files import instruct_file
from pathasst.finetune.data.instruct_ground import check_answer
from pathasst.finetune.data.readers import DataError, read_conversations

CAP = ("Invasive ductal carcinoma of the breast (patient 12, case 2019-044). Tumour cells form irregular nests in a "
       "desmoplastic stroma, consistent with an infiltrating carcinoma. H&E, original magnification x200.")


def _answers(sample) -> list[str]:
    return [t["value"] for t in sample.conversations if t["from"] == "gpt"]


def test_templates_use_the_caption_only_and_leave_identifiers_out():
    s = build_sample(Entry(id="f1", caption=CAP, image="f1.png"))
    assert s.rejected is None and s.meta["backend"] == "templates"
    assert s.meta["kinds"] == ["description", "qa", "qa", "reasoning"]
    assert s.conversations[0] == {"from": "human", "value": s.conversations[0]["value"]}
    assert s.conversations[0]["value"].startswith("<image>\n") and "<image>" not in s.conversations[2]["value"]
    description, stain, magnification, reasoning = _answers(s)
    assert description.startswith("Invasive ductal carcinoma of the breast") and "patient 12" not in description
    assert "2019-044" not in " ".join(_answers(s))
    assert stain == "Stain: H&E." and magnification == "Magnification: original magnification x200."
    assert reasoning == ("Tumour cells form irregular nests in a desmoplastic stroma, consistent with an infiltrating "
                         "carcinoma.")
    for answer in _answers(s):  # every number written in an answer is written in the caption
        assert set(re.findall(r"\d+", answer)) <= set(re.findall(r"\d+", CAP))


def test_the_grounding_check_rejects_invented_numbers_and_words():
    assert check_answer("Nests of tumour cells.", CAP).ok
    invented = check_answer("The Ki-67 index is 40 %.", CAP)
    assert not invented.ok and invented.foreign_numbers == ["40", "67"] and "index" in invented.foreign_words
    assert not check_answer("Tumour cells with lymphovascular invasion.", CAP).ok
    assert check_answer("Tumour cells with lymphovascular invasion.", CAP, max_foreign=2).ok  # LLM allowance
    assert not check_answer("Tumour cells, 300 of them.", CAP, max_foreign=5).ok  # numbers: no allowance


@pytest.mark.parametrize(("caption", "reason"), [
    ("", "empty caption"),
    ("   ", "empty caption"),
    ("Adenokarzinom des Kolons mit einer Infiltration der Muskularis und mit Nekrosen, die nicht gut begrenzt ist.",
     "not English"),
    ("腺癌，苏木精-伊红染色", "not English"),
    ("Carcinoma. " * 500, "caption too long"),
    ("(A) (B) (C)", "no words"),
])
def test_bad_captions_are_rejected_with_their_reason(caption: str, reason: str):
    s = build_sample(Entry(id="x", caption=caption))
    assert s.rejected is not None and s.rejected.startswith(reason) and s.conversations == []


def test_a_file_is_processed_resumably_with_duplicates_and_bad_records_reported(tmp_path: Path):
    src = tmp_path / "captions.json"
    entries = {str(i): {"caption": f"Granuloma {i} with giant cells, consistent with sarcoidosis. H&E.",
                        "path": f"img/{i}.png"} for i in range(5)}
    entries["dup"] = {"caption": entries["0"]["caption"], "path": "img/dup.png"}
    entries["bad"] = ["not", "an", "object"]
    entries["empty"] = {"caption": ""}
    src.write_text(json.dumps(entries))
    out = tmp_path / "out" / "instruct.jsonl"
    first = instruct_file(src, out, limit=2)
    assert first["samples"] == 2 and first["processed_this_run"] == 2 and first["invalid_records"] == 1
    with open(out, "a") as fh:  # a kill mid-write leaves a cut line: that entry is redone
        fh.write('{"id": "2", "image": "img/2.png", "conv')
    second = instruct_file(src, out)
    assert second["processed_this_run"] == 5  # 2, 3, 4, dup, empty
    assert second["rejection_reasons"] == {"duplicate of an earlier conversation": 1, "empty caption": 1}
    assert second["invalid_examples"] == ["bad: entry is a list, not an object"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # the cut line is gone
    assert sorted({r["id"] for r in rows}) == ["0", "1", "2", "3", "4"]
    report = json.loads((tmp_path / "out" / "instruct.jsonl.report.json").read_text())
    assert report["samples"] == 5 and report["turns"] == {"description": 5, "qa": 5, "reasoning": 5}
    assert instruct_file(src, out)["processed_this_run"] == 0
    # every written conversation is valid LLaVA data (the project's reader) once its images exist
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        (tmp_path / r["image"]).parent.mkdir(exist_ok=True)
        (tmp_path / r["image"]).write_bytes(b"png")
    assert len(read_conversations(clean, tmp_path)) == 5


@pytest.mark.parametrize(("content", "reason"), [("{not json", "not valid JSON"), ('"a string"', "expected a JSON")])
def test_a_malformed_caption_file_is_a_clear_error(tmp_path: Path, capsys, content: str, reason: str):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DataError, match=reason):
        instruct_file(bad, tmp_path / "o.jsonl")
    assert train_main(["data", "instruct", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert reason in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- LLM backend
class StandIn(ChatStandIn):
    """``POST /v1/chat/completions``: "good" turns copied from the caption, "invented" (a number it does not write),
    "junk" (not JSON)."""

    def __init__(self) -> None:
        self.mode, self.calls = "good", 0
        super().__init__(self._answer)

    def _answer(self, body: dict) -> tuple[int, str, dict[str, str]]:
        self.calls += 1
        assert body["response_format"]["json_schema"]["schema"]["required"] == ["conversations"]
        turns = [{"kind": "description", "question": "What is shown?",
                  "answer": "Tumour cells form irregular nests in a desmoplastic stroma."},
                 {"kind": "qa", "question": "How many cells are in mitosis?",
                  "answer": "About 15 tumour cells are in mitosis." if self.mode == "invented"
                  else "The caption does not say."}]
        return 200, "no JSON here" if self.mode == "junk" else json.dumps({"conversations": turns}), {}


@pytest.fixture()
def standin() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


def test_llm_turns_are_checked_and_an_invented_number_is_dropped(standin: StandIn):
    llm = InstructLLM(standin.url, "gemma", timeout=5)
    good = build_sample(Entry(id="a", caption=CAP), llm)
    assert good.meta["backend"] == "llm" and len(_answers(good)) == 2
    standin.mode = "invented"
    s = build_sample(Entry(id="b", caption=CAP), llm)
    assert s.meta["backend"] == "llm" and _answers(s) == ["Tumour cells form irregular nests in a desmoplastic stroma."]
    assert s.meta["dropped"] == ["qa: numbers not in the caption: 15"]  # its 2 new words alone would pass


def test_llm_junk_or_down_falls_back_to_the_templates(standin: StandIn, tmp_path: Path):
    standin.mode = "junk"
    s = build_sample(Entry(id="a", caption=CAP), InstructLLM(standin.url, "gemma", timeout=5))
    assert s.meta["backend"] == "templates" and "LLMBadResponse" in s.meta["note"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    src = tmp_path / "c.json"
    src.write_text(json.dumps({str(i): {"caption": f"Granuloma {i}, consistent with sarcoidosis."} for i in range(5)}))
    report = instruct_file(src, tmp_path / "o.jsonl", llm=InstructLLM(dead, "gemma", timeout=2))
    assert report["samples"] == 5 and report["backends"] == {"templates": 5}
    notes = [json.loads(line)["meta"].get("note", "") for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert sum("LLMUnavailable" in n for n in notes) == 3  # then the dead server is no longer asked


@pytest.mark.data
def test_arch_captions_give_valid_grounded_conversations(shared_data: Path, tmp_path: Path):
    """The issue's targets on the first 200 ARCH captions: every sample schema-valid, no ungrounded number."""
    src = shared_data / "captions" / "arch_captions_all.json"
    captions = json.loads(src.read_text())
    out = tmp_path / "arch.jsonl"
    report = instruct_file(src, out, limit=200)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report["processed_this_run"] == 200 and len(rows) == report["samples"] >= 190
    for r in rows:
        written = set(re.findall(r"\d+", captions[r["id"]]["caption"]))
        for t in r["conversations"]:
            if t["from"] == "gpt":
                assert set(re.findall(r"\d+", t["value"])) <= written, (r["id"], t["value"])
        (tmp_path / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r["image"]).write_bytes(b"png")
    assert len(read_conversations(out, tmp_path)) == len(rows)
