"""Retrieval metrics (Acc@1, Acc@5, mMV@5) against hand-computed values, and `pathasst library eval` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pathasst.cli.main import app
from pathasst.memory.evaluation import majority_vote, read_labels, retrieval_metrics


def test_majority_vote_breaks_ties_by_rank():
    assert majority_vote(["a", "b", "b", "c", "c"]) == "b"  # b and c tie at 2: b ranks first
    assert majority_vote(["c", "b", "b", "c", "a"]) == "c"
    assert majority_vote(["a", "b", "c", "d", "e"]) == "a"  # all tie: the nearest wins
    assert majority_vote(["b", "a", "a", "a", "b"]) == "a"


def test_metrics_by_hand():
    queries = ["A", "B", "C", "C"]
    ranked = [
        ["A", "B", "B", "C", "C"],  # @1 yes; @5 yes; vote B/C tie -> B: no
        ["A", "A", "B", "C", "C"],  # @1 no;  @5 yes; vote A/C tie -> A: no
        ["C", "B", "B", "C", "A"],  # @1 yes; @5 yes; vote B/C tie -> C: yes
        ["A", "A", "A", "B", "B"],  # @1 no;  @5 no;  vote A: no
    ]
    m = retrieval_metrics(queries, ranked, k=5)
    assert m["n_queries"] == 4
    assert m["acc@1"] == pytest.approx(2 / 4)
    assert m["acc@5"] == pytest.approx(3 / 4)
    assert m["mmv@5"] == pytest.approx(1 / 4)
    assert m["mv@5_per_class"] == {"A": 0.0, "B": 0.0, "C": 0.5}
    assert m["macro_mmv@5"] == pytest.approx((0 + 0 + 0.5) / 3)
    k3 = retrieval_metrics(queries, ranked, k=3)  # only the first 3 neighbours count
    assert k3["acc@3"] == pytest.approx(3 / 4) and k3["mmv@3"] == 0.0  # votes: B, A, B, A
    with pytest.raises(ValueError):
        retrieval_metrics(["A"], [])


def test_read_labels(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("image,label\ntile_1.png,epithelial\ntile_2,spindle\n,x\ntile_3,\n")
    assert read_labels(f) == {"tile_1": "epithelial", "tile_2": "spindle"}
    f.write_text("file,class\na,b\n")
    with pytest.raises(ValueError, match="needs a header"):
        read_labels(f)


@pytest.fixture()
def eval_dirs(tmp_path):
    """Two visibly different 'stains' (the packaged IHC image and a colour-swapped copy), 4 tiles each per split."""
    from skimage import data

    ihc = np.asarray(data.immunohistochemistry())
    kinds = {"brown": ihc, "blue": np.ascontiguousarray(ihc[..., ::-1])}
    rows = ["id,label"]
    for split, ys in (("library", (0, 128)), ("queries", (256, 384))):
        d = tmp_path / split
        d.mkdir()
        for label, img in kinds.items():
            for y in ys:
                for x in (0, 256):
                    name = f"{split}_{label}_{y}_{x}"
                    Image.fromarray(img[y : y + 128, x : x + 128]).save(d / f"{name}.png")
                    rows.append(f"{name}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_eval_command(eval_dirs, settings):
    r = CliRunner().invoke(app, ["library", "eval", "--library", str(eval_dirs / "library"), "--queries",
                                 str(eval_dirs / "queries"), "--labels", str(eval_dirs / "labels.csv"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert (res["n_library"], res["n_queries"], res["embedder"]) == (8, 8, "hed-texture-v1")
    m = res["metrics"]
    assert m["acc@1"] == 1.0 and m["acc@5"] == 1.0 and m["mmv@5"] == 1.0  # colour alone separates these
    assert res["baselines"] == {"majority_class": 0.5, "chance_acc@1": 0.5}
    r = CliRunner().invoke(app, ["library", "eval", "--library", str(eval_dirs / "library"), "--queries",
                                 str(eval_dirs / "queries"), "--labels", str(eval_dirs / "labels.csv")])
    assert r.exit_code == 0 and "Acc@1" in r.stdout and "mMV@5" in r.stdout and "baseline: majority class" in r.stdout


def test_eval_refuses_leakage(eval_dirs, settings):
    from pathasst.core.descriptor import HEDTextureEmbedder
    from pathasst.memory.evaluation import evaluate_folders

    with pytest.raises(ValueError, match="leakage"):
        evaluate_folders(HEDTextureEmbedder(), eval_dirs / "library", eval_dirs / "library", eval_dirs / "labels.csv", settings)
    r = CliRunner().invoke(app, ["library", "eval", "--library", str(eval_dirs / "nope"), "--queries",
                                 str(eval_dirs / "queries"), "--labels", str(eval_dirs / "labels.csv")])
    assert r.exit_code == 2 and "folder not found" in r.output
