"""Ingestion and the `pathasst library` commands on small real case folders (embedded Chroma on disk).

Covers: metadata from case.yaml, patches and a whole slide (tissue tiles aggregated), report texts, thumbnails,
resumability (unchanged cases skipped, a changed case replaced), bad files skipped and listed, search by image / text /
both with `--where`, stats, deletion, and the `open_library` API the review app uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pathasst.cli.main import app


def _ihc() -> np.ndarray:
    from skimage import data

    return np.asarray(data.immunohistochemistry())


def _case(root: Path, cid: str, images: dict[str, np.ndarray], yaml: str, report: str | None = None) -> Path:
    d = root / cid
    d.mkdir(parents=True)
    for name, px in images.items():
        Image.fromarray(px).save(d / name)
    (d / "case.yaml").write_text(yaml, encoding="utf-8")
    if report:
        (d / "report.md").write_text(report, encoding="utf-8")
    return d


@pytest.fixture()
def cases(tmp_path) -> Path:
    from pathasst.agent.demo import write_pyramidal_tiff

    ihc = _ihc()
    swapped = np.ascontiguousarray(ihc[..., ::-1])  # a differently coloured 'stain'
    root = tmp_path / "cases"
    _case(root, "ihc_a", {"a.png": ihc[:256, :256]},
          "diagnosis: FHL2-positive colonic glands\norgan: colon\nstain: IHC\ndate: 2024-05-01\n",
          report="Archived report: colonic glands with strong brown cytoplasmic staining.")
    d = _case(root, "ihc_b", {"b.png": ihc[256:, 256:]}, "diagnosis: colonic glands\norgan: colon\nstain: IHC\n")
    (d / "broken.png").write_bytes((d / "b.png").read_bytes()[:200])  # truncated: skipped and listed
    _case(root, "blue_c", {"c.png": swapped[:256, :256]}, "diagnosis: other stain\norgan: skin\nstain: other\n",
          report="Archived report: blue stained skin section.")
    d = root / "slide_d"
    d.mkdir()
    mosaic = np.concatenate([np.concatenate([ihc, ihc[:, ::-1]], 1)] * 2, 0)  # 1024 x 1024
    write_pyramidal_tiff(d / "slide.tif", np.ascontiguousarray(mosaic), mpp=0.5, levels=2)
    (d / "case.yaml").write_text("diagnosis: colonic glands (slide)\norgan: colon\nstain: IHC\n", encoding="utf-8")
    (root / "empty_e").mkdir()
    return root


@pytest.fixture()
def lib_env(settings, tmp_path, monkeypatch):
    path = tmp_path / "library"
    monkeypatch.setenv("PATHASST_CHROMA_PATH", str(path))
    monkeypatch.setenv("PATHASST_CACHE_DIR", str(tmp_path / "cache"))
    return settings.model_copy(update={"chroma_path": path})


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output + (r.stderr if r.stderr_bytes is not None else "")


def test_add_search_stats_delete(cases, lib_env):
    code, out = _run("library", "add", str(cases))
    assert code == 0, out
    assert "4 added, 0 unchanged, 1 failed" in out
    assert "skipped file ihc_b/broken.png" in out and "failed case empty_e" in out
    code, out = _run("library", "add", str(cases))  # resumable: nothing changed, nothing redone
    assert code == 0 and "0 added, 4 unchanged, 1 failed" in out, out
    (cases / "blue_c" / "case.yaml").write_text("diagnosis: changed diagnosis\norgan: skin\nstain: other\n")
    code, out = _run("library", "add", str(cases))
    assert "1 added, 3 unchanged" in out, out

    code, out = _run("library", "stats", "--json")
    stats = json.loads(out[out.index("{"):])
    assert (stats["cases"], stats["images"], stats["mode"]) == (4, 4, "embedded")
    assert stats["texts"] == 6  # 4 case.yaml summaries + 2 reports
    assert {c["name"] for c in stats["collections"]} == {"pathasst-img-hed-texture-v1", "pathasst-txt-minilm-l6-v2"}

    code, out = _run("library", "search", str(cases / "ihc_a" / "a.png"), "-k", "3", "--json")
    hits = json.loads(out[out.index("["):])
    assert hits[0]["case_id"] == "ihc_a" and hits[0]["distance"] == pytest.approx(0, abs=1e-5)
    assert hits[0]["diagnosis"] == "FHL2-positive colonic glands" and Path(hits[0]["thumbnail"]).is_file()
    assert hits[-1]["case_id"] != "blue_c"  # the other stain is the farthest of the four
    code, out = _run("library", "search", str(cases / "ihc_a" / "a.png"), "-k", "5", "--where", "organ=skin", "--json")
    assert [h["case_id"] for h in json.loads(out[out.index("["):])] == ["blue_c"]
    code, out = _run("library", "search", "blue stained skin", "-k", "2", "--json")
    text_hits = json.loads(out[out.index("["):])
    assert text_hits[0]["case_id"] == "blue_c" and text_hits[0]["diagnosis"] == "changed diagnosis"
    code, out = _run("library", "search", str(cases / "ihc_a" / "a.png"), "--text", "brown cytoplasmic staining", "-k", "2")
    assert code == 0 and "ihc_a" in out and "image" in out and "text" in out
    code, out = _run("library", "search", str(cases / "slide_d" / "slide.tif"), "-k", "1", "--where", '{"stain": "IHC"}')
    assert code == 0 and "slide_d" in out and "colonic glands (slide)" in out

    code, out = _run("library", "delete", "--case", "ihc_a")
    assert code == 0 and "ihc_a: 3 records deleted" in out  # one image, two texts
    code, out = _run("library", "stats", "--json")
    assert json.loads(out[out.index("{"):])["cases"] == 3


def test_library_api_metadata_slides_and_similar_to_case(cases, lib_env):
    from pathasst.core.cases import load_case
    from pathasst.memory import open_library

    lib = open_library(lib_env)
    assert not lib.exists() and lib.stats()["cases"] == 0 and not lib_env.chroma_path.exists()  # nothing created
    report = lib.add_cases(cases, texts=False)
    assert report.count("added") == 4 and report.images == 4
    rec = {h.case_id: h for h in lib.store.get("image", lib.image_embedder)}
    a, d = rec["ihc_a"].metadata, rec["slide_d"].metadata
    assert (a["organ"], a["stain"], a["date"], a["kind"], a["n_tiles"]) == ("colon", "IHC", "2024-05-01", "patch", 1)
    assert a["source_path"].endswith("ihc_a/a.png") and a["embedder"] == "hed-texture-v1" and a["added_at"]
    assert d["kind"] == "wsi" and d["n_tiles"] > 1  # tissue tiles aggregated into one slide vector
    case = load_case(cases / "ihc_a", cases, lib_env)
    hits = lib.similar_to_case(case, k=3)
    assert len(hits) == 3 and "ihc_a" not in [h.case_id for h in hits]  # the case itself is excluded
    assert hits == sorted(hits, key=lambda h: h.distance)
    assert hits[0].citation()["source"] == "retrieval" and "text" not in hits[0].citation()
    assert lib.similar_to_case(case, k=3, where={"organ": "skin"})[0].case_id == "blue_c"
    # the protocol the review app checks
    from pathasst.ui.facade import CaseLibrary as AppProtocol

    assert isinstance(lib, AppProtocol)
    assert lib.add_case(case, texts=False).status == "unchanged"
    assert lib.add_case(case).status == "added"  # with texts the fingerprint differs: re-embedded


def test_search_without_library_fails_clearly(lib_env, tmp_path):
    code, out = _run("library", "search", "anything")
    assert code == 2 and "no case library" in out
    code, out = _run("library", "search", str(tmp_path / "missing.png"))
    assert code == 2 and "image file not found" in out
    code, out = _run("library", "search", "x", "--where", "organ")
    assert code != 0 and "KEY=VALUE" in out


def test_add_case_raises_when_nothing_can_be_embedded(cases, lib_env):
    from pathasst.core.cases import EmptyCaseError, load_case
    from pathasst.memory import open_library

    case = load_case(cases / "ihc_a", cases, lib_env)
    (cases / "ihc_a" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken after loading")
    with pytest.raises(EmptyCaseError, match="no image could be embedded"):
        open_library(lib_env).add_case(case, texts=False)
