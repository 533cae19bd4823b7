"""finetune.data.captions: multi-panel caption splitting, refinement, the LLM backend against a local stand-in
server, the metrics, bad input, and ``pathasst-train data split-captions`` / ``eval-split``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_standin import ChatStandIn

from pathasst.finetune.cli import main
from pathasst.finetune.data.caption_eval import evaluate_split, token_f1
from pathasst.finetune.data.caption_files import load_caption_file, split_captions_file
from pathasst.finetune.data.caption_llm import CaptionLLM, LLMBadResponse, LLMUnavailable, split_figure
from pathasst.finetune.data.caption_refine import extract_refined, strip_refined
from pathasst.finetune.data.captions import split_caption
from pathasst.finetune.data.readers import DataError

GOLD_NAME = "captions/prostate_split_gold_dev.json"


def _panels(caption: str) -> dict[str, str]:
    return {p.label: p.caption for p in split_caption(caption).panels}


# --------------------------------------------------------------------------------------------------- the parser
def test_prefix_labels_get_title_own_text_and_trailing_boilerplate():
    got = _panels("Prostate biopsy. (A) Benign glands with basal cells. (B) Cribriform carcinoma. "
                  "Scale bar, 50 um.")
    assert got == {
        "A": "Prostate biopsy. Benign glands with basal cells. Scale bar, 50 um.",
        "B": "Prostate biopsy. Cribriform carcinoma. Scale bar, 50 um.",
    }


def test_trailing_content_sentence_stays_with_the_last_panel():
    got = _panels("Title here. (A) First panel. (B) Second panel. It shows more detail of the tumour.")
    assert got["A"] == "Title here. First panel."
    assert got["B"] == "Title here. Second panel. It shows more detail of the tumour."


@pytest.mark.parametrize("caption", [
    "Tumour. A: glands. B: stroma.",
    "Tumour. A) glands. B) stroma.",
    "Tumour. A. Glands. B. Stroma.",
    "Tumour. a Glands. b Stroma.",
    "Tumour. A, Glands. B, Stroma.",
])
def test_bare_label_styles(caption: str):
    got = split_caption(caption).panels
    assert [p.label.upper() for p in got] == ["A", "B"]
    assert [p.caption.lower() for p in got] == ["tumour. glands.", "tumour. stroma."]


def test_ranges_and_lists_expand_and_share_their_text():
    got = _panels("Kidney and prostate. (A-C) Renal lesions. (D, E) Prostate, H&E. (F) Nerve.")
    assert list(got) == ["A", "B", "C", "D", "E", "F"]
    assert got["A"] == got["B"] == got["C"] == "Kidney and prostate. Renal lesions."
    assert got["D"] == got["E"] == "Kidney and prostate. Prostate, H&E."
    assert got["F"] == "Kidney and prostate. Nerve."


def test_group_header_then_single_panels():
    got = _panels("Effect of treatment. A and B) Inflammation in treated mice. A) H&E of a prostate. "
                  "B) Percentage of inflammation.")
    assert got["A"] == "Effect of treatment. Inflammation in treated mice. H&E of a prostate."
    assert got["B"] == "Effect of treatment. Inflammation in treated mice. Percentage of inflammation."


def test_postfix_labels_take_the_text_before_them_and_share_the_sentence_tail():
    got = _panels("Sections stained with H&E (a) and with PAS (b) at low power. Bar, 100 um.")
    assert got["a"] == "Sections stained with H&E at low power. Bar, 100 um."
    assert got["b"] == "and with PAS at low power. Bar, 100 um."


def test_nested_parenthesised_list_and_respectively():
    got = _panels("Ureter. ((a), (b)) Metastatic adenocarcinoma. ((c), (d)) Staining for PSA and P504s in "
                  "slides (c) and (d), respectively.")
    assert got["a"] == got["b"] == "Ureter. Metastatic adenocarcinoma."
    assert "Staining for PSA and P504s in slides" in got["c"] and got["c"] == got["d"]


def test_reference_to_another_panel_is_not_a_boundary():
    got = _panels("ERG. (A) Whole tumour. (B) Higher power of the boxed area in (A) showing nuclei.")
    assert got["B"] == "ERG. Higher power of the boxed area in (A) showing nuclei."
    assert got["A"] == "ERG. Whole tumour."


def test_label_with_parenthetical_text_keeps_the_text_for_those_panels():
    got = _panels("IHC. (A) Normal tissue; (B) carcinoma (A, B hematoxylin counterstain; bar = 800 um); "
                  "(C) normal tissue (bar = 200 um).")
    assert "hematoxylin counterstain" in got["A"] and "hematoxylin counterstain" in got["B"]
    assert "hematoxylin counterstain" not in got["C"]


@pytest.mark.parametrize("caption", [
    "A representative section of prostate cancer with perineural invasion.",
    "Haematoxylin and eosin (H & E) stain of tumour (T) and normal (N) tissue.",
    "Vitamin (D) levels in serum.",
    "Steps: (i) fix, (i) embed.",
    "Cells stained with H&E, showing nuclear atypia.",
])
def test_no_panel_labels_gives_one_unlabelled_panel_with_the_whole_caption(caption: str):
    split = split_caption(caption)
    assert [(p.label, p.caption) for p in split.panels] == [("", caption)]
    assert split.note == "no panel labels found"


def test_positional_labels_when_there_are_no_letters():
    got = _panels("Prostate core. Left: H&E stain. Right: PSA immunostain.")
    assert got == {"left": "Prostate core. H&E stain.", "right": "Prostate core. PSA immunostain."}


def test_refined_fields_are_extracted_and_kept_in_the_panel_captions():
    cap = ("Case 3, a 64-year-old man. (A) Tumour (H&E, x200). (B) PSA immunostaining (original magnification "
           "x400). Magnification of all cores: * 60.")
    split = split_caption(cap)
    assert split.magnification == ["x200", "original magnification x400", "Magnification of all cores: * 60"]
    assert split.stain == ["H&E", "IHC"]
    assert split.identifiers == ["Case 3", "64-year-old man"]
    assert "x200" in split.panels[0].caption and "60" in split.panels[1].caption
    assert strip_refined("Tumour (H&E, x200). Hematoxylin-eosin staining.") == "Tumour (H&E)."


# --------------------------------------------------------------------------------------------------- metrics
def test_token_f1_hand_computed():
    assert token_f1("a b c", "a b d") == pytest.approx(2 / 3)
    assert token_f1("The, TUMOUR!", "the tumour") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("x", "") == 0.0 and token_f1("", "x") == 0.0
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)


def test_evaluate_split_hand_computed():
    gold = {
        "f1": {"caption": "whatever", "gt_subfigures": [
            {"label": {"text": "A"}, "caption": "a b c d"},
            {"label": {"text": "B"}, "caption": "x y"}]},
        "f2": {"caption": "whatever", "gt_subfigures": [{"label": {"text": "a"}, "caption": "p q"}]},
    }
    pred = {
        "f1": {"panels": [{"label": "a", "caption": "a b"}, {"label": "C", "caption": "x y"}]},
        "f2": {"panels": [{"label": "A", "caption": "p q"}]},
    }
    r = evaluate_split(gold, pred)
    assert (r["gold_panels"], r["pred_panels"], r["matched_labels"]) == (3, 3, 2)
    assert r["label_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["label_precision"] == pytest.approx(2 / 3, abs=1e-4)
    # f1/A: P=1, R=1/2 -> 2/3; f1/B missing -> 0; f2/a -> 1
    assert r["mean_panel_f1"] == pytest.approx((2 / 3 + 0 + 1) / 3, abs=1e-4)
    assert r["mean_figure_f1"] == pytest.approx(((2 / 3 + 0) / 2 + 1) / 2, abs=1e-4)
    assert evaluate_split(gold, {})["figures_missing_from_pred"] == 2
    with pytest.raises(DataError, match="no 'gt_subfigures'"):
        evaluate_split({"f": {"caption": "x"}}, {})


@pytest.mark.data
def test_gold_dev_file_meets_the_issue_targets(shared_data: Path, tmp_path: Path):
    path = shared_data / GOLD_NAME
    if not path.is_file():
        pytest.skip(f"{path} not present (the gold dev captions are only on developer machines)")
    gold = load_caption_file(path)
    r = evaluate_split(gold)
    assert r["figures"] == 90 and r["gold_panels"] == 407
    assert r["label_recall"] >= 0.95 and r["label_precision"] >= 0.95
    assert r["mean_panel_f1"] >= 0.90
    # the panel captions keep magnification / stain text, as the gold does: stripping it scores lower
    assert evaluate_split(gold, strip=True)["mean_panel_f1"] < r["mean_panel_f1"]
    assert evaluate_split(gold, baseline="whole-caption")["mean_panel_f1"] < r["mean_panel_f1"] - 0.3
    # the splitter reads only `caption`: without gt_subfigures in its input it gives the same scores
    (tmp_path / "in.json").write_text(json.dumps({k: {"caption": v["caption"]} for k, v in gold.items()}))
    split_captions_file(tmp_path / "in.json", tmp_path / "out.json")
    assert evaluate_split(gold, load_caption_file(tmp_path / "out.json"))["mean_panel_f1"] == r["mean_panel_f1"]


# --------------------------------------------------------------------------------------------------- bad input
def test_empty_and_non_english_captions():
    empty = split_caption("")
    assert [(p.label, p.caption) for p in empty.panels] == [("", "")] and empty.note == "empty caption"
    zh = "前列腺癌的组织学表现。肿瘤细胞排列成腺泡状。"
    assert [(p.label, p.caption) for p in split_caption(zh).panels] == [("", zh)]
    ru = split_caption("Гистология опухоли. (A) Железы. (B) Строма, окраска гематоксилином.")
    assert {p.label: p.caption for p in ru.panels} == {
        "A": "Гистология опухоли. Железы.", "B": "Гистология опухоли. Строма, окраска гематоксилином."}
    assert token_f1("Строма опухоли", "строма") == pytest.approx(2 / 3)


def test_very_long_caption_is_split_in_bounded_time():
    caption = "Title. " + " ".join(f"({chr(65 + i % 4)}) tumour cells x200 (n=3), e.g. Fig. 1A; a b: C)"
                                   for i in range(4000))
    caption = (caption + " (" * 2000 + "x" * 200_000)[:200_000]
    t0 = time.perf_counter()
    split = split_caption(caption)
    assert time.perf_counter() - t0 < 5.0
    assert [p.label for p in split.panels] == ["A", "B", "C", "D"]


def test_file_with_bad_entries_keeps_every_figure(tmp_path: Path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"ok": {"caption": "T. (A) x. (B) y."}, "nocap": {"image": "a.png"},
                               "notobj": "text", "num": {"caption": 3}, "empty": {"caption": ""}}))
    out = tmp_path / "out.json"
    summary = split_captions_file(src, out)
    data = json.loads(out.read_text())
    assert list(data) == ["ok", "nocap", "notobj", "num", "empty"]
    assert summary["errors"] == 3 and summary["processed"] == 5
    assert data["nocap"] == {"panels": [], "magnification": [], "stain": [], "identifiers": [], "backend": "none",
                             "error": "no 'caption'"}
    assert data["num"]["error"] == "'caption' is a int, not a string"
    assert data["empty"]["panels"] == [{"label": "", "caption": ""}]
    assert [p["label"] for p in data["ok"]["panels"]] == ["A", "B"] and data["ok"]["backend"] == "rules"


@pytest.mark.parametrize("content, reason", [("{bad json", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_malformed_input_file_is_a_clear_error_with_exit_code_2(tmp_path: Path, capsys, content: str, reason: str):
    src = tmp_path / "captions.json"
    src.write_text(content)
    assert main(["data", "split-captions", str(src), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and reason in err
    assert not (tmp_path / "o.json").exists()
    assert main(["data", "eval-split", str(src)]) == 2


def test_split_captions_resumes_and_writes_atomically(tmp_path: Path, capsys):
    src = tmp_path / "in.json"
    src.write_text(json.dumps({f"f{i}": {"caption": f"T{i}. (A) x. (B) y."} for i in range(4)}))
    out = tmp_path / "out.json"
    done = {"f1": {"panels": [{"label": "Z", "caption": "kept as is"}], "backend": "llm"},
            "f2": {"panels": [], "backend": "none", "error": "no 'caption'"},
            "gone": {"panels": [], "backend": "rules"}}
    out.write_text(json.dumps(done))
    assert main(["data", "split-captions", str(src), "--out", str(out), "--limit", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["already_done"], summary["processed"], summary["not_processed"]) == (1, 2, 1)
    data = json.loads(out.read_text())
    assert data["f1"] == done["f1"]  # done figures are not redone
    assert [p["label"] for p in data["f2"]["panels"]] == ["A", "B"]  # an errored one is retried
    assert "f3" not in data and "gone" in data  # over the limit: left for the next run; nothing dropped
    assert main(["data", "split-captions", str(src), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["already_done"], summary["processed"]) == (3, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "out.json"]  # no temp files left
    out.write_text("{truncated")
    with pytest.raises(DataError, match="out.json"):
        split_captions_file(src, out)


def test_eval_split_cli_prints_metrics(tmp_path: Path, capsys):
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps({"f": {"caption": "T. (A) x y. (B) z.", "gt_subfigures": [
        {"label": {"text": "a"}, "caption": "T. x y."}, {"label": {"text": "b"}, "caption": "T. z."}]}}))
    assert main(["data", "eval-split", str(gold)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["label_recall"], r["label_precision"], r["mean_panel_f1"]) == (1.0, 1.0, 1.0)
    assert main(["data", "eval-split", str(gold), "--baseline", "whole-caption"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_panel_f1"] < 1.0


# --------------------------------------------------------------------------------------------------- LLM backend
class StandIn(ChatStandIn):
    """``POST /v1/chat/completions`` answering ``mode``: "good" (a valid split), "junk" (content not JSON),
    "schema" (JSON of the wrong shape), "invented" (text not in the caption), "error" (HTTP 500), "slow"."""

    def __init__(self) -> None:
        self.mode = "good"
        super().__init__(self._answer)

    def _answer(self, body: dict) -> tuple[int, str, dict[str, str]]:
        caption = body["messages"][-1]["content"].split("\n", 1)[1]
        content = {
            "good": json.dumps({"panels": [{"label": "A", "caption": caption.split(" (B)")[0]},
                                           {"label": "B", "caption": "(B) " + caption.split(" (B) ")[1]}],
                                "magnification": ["x200"], "stain": ["H&E"], "identifiers": []}),
            "junk": "Sure! Here are the panels: A is glands, B is stroma.",
            "schema": json.dumps({"panels": "A, B"}),
            "invented": json.dumps({"panels": [{"label": "A", "caption": "entirely made up words here"}],
                                    "magnification": [], "stain": [], "identifiers": []}),
        }.get(self.mode, "")
        if self.mode == "slow":
            time.sleep(1.0)
        return 500 if self.mode == "error" else 200, content, {}


@pytest.fixture()
def standin() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


CAP = "Prostate. (A) Glands, H&E x200. (B) Stroma."


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_llm_backend_sends_a_json_schema_and_its_split_is_used(standin: StandIn):
    split = split_figure(CAP, CaptionLLM(standin.url, "qwen", timeout=5))
    assert split.backend == "llm" and split.note is None
    assert [(p.label, p.caption) for p in split.panels] == [("A", "Prostate. (A) Glands, H&E x200."),
                                                            ("B", "(B) Stroma.")]
    assert split.magnification == ["x200"] and split.stain == ["H&E"]
    body = standin.bodies[0]
    assert body["model"] == "qwen" and body["temperature"] == 0
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["panels", "magnification", "stain", "identifiers"]


@pytest.mark.parametrize("mode, error", [("junk", "not valid JSON|JSONDecodeError|ValueError"),
                                         ("schema", "ValidationError"), ("invented", "not in the figure caption")])
def test_llm_junk_is_a_typed_error_and_falls_back_to_the_parser(standin: StandIn, mode: str, error: str):
    standin.mode = mode
    llm = CaptionLLM(standin.url, "m", timeout=5)
    with pytest.raises(LLMBadResponse, match=error):
        llm.split(CAP)
    split = split_figure(CAP, llm)
    assert split.backend == "rules" and split.note.startswith("LLM fallback: LLMBadResponse")
    assert [p.label for p in split.panels] == ["A", "B"]


def test_llm_down_error_or_slow_is_unavailable_and_falls_back(standin: StandIn):
    with pytest.raises(LLMUnavailable, match="ConnectError"):
        CaptionLLM(_closed_port_url(), "m", timeout=2).split(CAP)
    standin.mode = "error"
    with pytest.raises(LLMUnavailable, match="HTTP 500"):
        CaptionLLM(standin.url, "m").split(CAP)
    standin.mode = "slow"
    with pytest.raises(LLMUnavailable, match="Timeout"):
        CaptionLLM(standin.url, "m", timeout=0.2).split(CAP)
    split = split_figure(CAP, CaptionLLM(_closed_port_url(), "m", timeout=2))
    assert split.backend == "rules" and "LLMUnavailable" in split.note


def test_split_captions_file_stops_calling_a_dead_llm_and_says_which_backend(standin: StandIn, tmp_path: Path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps({f"f{i}": {"caption": CAP} for i in range(6)}))
    standin.mode = "error"
    summary = split_captions_file(src, tmp_path / "out.json", llm=CaptionLLM(standin.url, "m"), checkpoint_every=2)
    assert len(standin.bodies) == 3  # three failures in a row, then the parser only
    assert summary["backend"] == {"rules": 6}
    data = json.loads((tmp_path / "out.json").read_text())
    assert "HTTP 500" in data["f0"]["note"] and data["f5"]["note"].startswith("LLM disabled")


def test_split_captions_cli_with_llm(standin: StandIn, tmp_path: Path, capsys):
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"f": {"caption": CAP}, "g": {"caption": ""}}))
    out = tmp_path / "out.json"
    assert main(["data", "split-captions", str(src), "--out", str(out), "--llm-url", standin.url,
                 "--llm-model", "m"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == {"llm": 1, "rules": 1}
    data = json.loads(out.read_text())
    assert data["f"]["backend"] == "llm" and data["g"]["backend"] == "rules"
    with pytest.raises(SystemExit) as exc:
        main(["data", "split-captions", str(src), "--out", str(out), "--llm-url", standin.url])
    assert exc.value.code == 2


def test_extract_refined_on_its_own():
    r = extract_refined("Patient #12 (S12-34567): Giemsa, *400; toluidine blue 10x.")
    assert r == {"magnification": ["*400", "10x"], "stain": ["Giemsa", "toluidine blue"],
                 "identifiers": ["Patient #12", "S12-34567"]}
