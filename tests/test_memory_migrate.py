"""`pathasst library migrate`: an embedded case library copied into a real `chroma run` server, and back.

The source holds real ingested cases (hed-texture image vectors, MiniLM texts, thumbnails' paths in the metadata) and
2,500 explicit 384-d vectors, so `--batch 1000` reads three pages. Checked: same ids, embeddings, documents, metadatas,
collection metadata and space; the same top-k from a query on either side (and equal to exact search); a rerun writes
nothing; a migration interrupted by the server going away completes on rerun; a dry run writes nothing; a target
collection of another embedder is refused before anything is written; an unreachable server, a missing source and
source == target fail clearly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image
from test_memory_store import _free_port, _start_server, _stop, chroma_server  # noqa: F401 - shared `chroma run`
from typer.testing import CliRunner

from pathasst.cli.main import app
from pathasst.core.embedders import Embedder
from pathasst.memory.migrate import Endpoint, migrate
from pathasst.memory.store import CaseStore, LibraryUnavailableError, MixedEmbeddersError

N_BULK = 2500
BULK = "pathasst-img-bulk-384d"


class Bulk(Embedder):
    """384-d vectors given by the test (the store never embeds)."""

    name: ClassVar[str] = "bulk-384d"
    dimension: ClassVar[int] = 384
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})


class Bulk512(Bulk):
    dimension: ClassVar[int] = 512  # same collection name, another dimension: must be refused


def _bulk_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in an 8-d subspace of R^384: HNSW is exact on such data, so top-k is comparable across stores."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(384, 8)))[0].T  # 8 orthonormal rows
    x = rng.normal(size=(n, 8)) @ basis
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SimpleNamespace:
    """An embedded library: three real cases (images + reports) and 2,500 explicit 384-d vectors."""
    from skimage import data

    from pathasst.core.settings import Settings
    from pathasst.memory import open_library

    root = tmp_path_factory.mktemp("migrate-src")
    ihc = np.asarray(data.immunohistochemistry())
    cases = root / "cases"
    pixels = {"s1": ihc[:256, :256], "s2": ihc[256:, 256:], "s3": np.ascontiguousarray(ihc[:256, :256, ::-1])}
    for cid, px in pixels.items():
        (cases / cid).mkdir(parents=True)
        Image.fromarray(px).save(cases / cid / "x.png")
        (cases / cid / "case.yaml").write_text(f"diagnosis: dx-{cid}\norgan: colon\nstain: IHC\n")
        (cases / cid / "report.md").write_text(f"Archived report of {cid}: colonic glands, brown staining.")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PATHASST_") and k != "PATHASST_SHARED_DATA"]:
            mp.delenv(key)
        settings = Settings(_env_file=None, output_dir=root / "out", chroma_path=root / "lib")
        lib = open_library(settings)
        assert lib.add_cases(cases).count("added") == 3
        vecs = _bulk_vectors(N_BULK)
        metas = [{"case_id": f"b{i // 5}", "organ": ["colon", "breast", "skin"][i % 3], "i": i, "score": i / 7}
                 for i in range(N_BULK)]
        store = lib.store
        store.upsert("image", Bulk(), [f"b{i // 5}/{i}.png" for i in range(1200)], vecs[:1200], metas[:1200],
                     documents=[f"note {i}" for i in range(1200)])
        store.upsert("image", Bulk(), [f"b{i // 5}/{i}.png" for i in range(1200, N_BULK)], vecs[1200:], metas[1200:])
        yield SimpleNamespace(path=root / "lib", settings=settings, cases=cases, vectors=vecs)


@pytest.fixture()
def server(chroma_server):  # noqa: F811 - the imported fixture
    """The module's Chroma server with no PathAsst collection."""
    store = CaseStore.open(SimpleNamespace(chroma_host=chroma_server.host, chroma_port=chroma_server.port))
    for c in store.collections():
        store.drop_collection(c["name"])
    return SimpleNamespace(host=chroma_server.host, port=str(chroma_server.port), store=store,
                           settings=SimpleNamespace(chroma_host=chroma_server.host, chroma_port=chroma_server.port))


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["library", "migrate", *args])
    return r.exit_code, r.output + (r.stderr if r.stderr_bytes is not None else "")


def _json(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def _dump(store: CaseStore) -> dict[str, dict]:
    """Every PathAsst collection: metadata, space and records sorted by id."""
    out = {}
    for col in store.library_collections():
        r = col.get(include=["embeddings", "documents", "metadatas"])
        order = np.argsort(r["ids"])
        out[col.name] = {
            "metadata": dict(col.metadata), "space": col.configuration_json["hnsw"]["space"],
            "ids": [r["ids"][i] for i in order], "embeddings": np.asarray(r["embeddings"])[order],
            "documents": [r["documents"][i] for i in order], "metadatas": [r["metadatas"][i] for i in order],
        }
    return out


def _assert_same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert (x["metadata"], x["space"]) == (y["metadata"], y["space"]), name
        assert x["ids"] == y["ids"], name
        assert x["embeddings"].shape == y["embeddings"].shape and np.allclose(x["embeddings"], y["embeddings"]), name
        assert x["documents"] == y["documents"] and x["metadatas"] == y["metadatas"], name


def test_migrate_to_server_and_back(source, server, tmp_path):
    code, out = _run("--from", str(source.path), "--to-host", server.host, "--to-port", server.port,
                     "--batch", "1000", "--json")
    assert code == 0, out
    rep = _json(out)
    cols = {c["name"]: c for c in rep["collections"]}
    assert rep["verified"] and rep["batch"] == 1000 and rep["copied"] == N_BULK + 9
    assert sorted(cols) == [BULK, "pathasst-img-hed-texture-v1", "pathasst-txt-minilm-l6-v2"]
    assert (cols[BULK]["source_count"], cols[BULK]["copied"], cols[BULK]["target_after"]) == (N_BULK, N_BULK, N_BULK)
    assert (cols["pathasst-img-hed-texture-v1"]["copied"], cols["pathasst-txt-minilm-l6-v2"]["copied"]) == (3, 6)
    assert all(c["created"] and c["status"] == "ok" and c["space"] == "cosine" for c in cols.values())

    src = _dump(CaseStore.open(source.settings))
    dst = _dump(server.store)
    _assert_same(src, dst)
    assert src[BULK]["documents"][:2] == ["note 0", "note 1"] and None in src[BULK]["documents"]  # mixed documents
    assert dst["pathasst-img-hed-texture-v1"]["metadata"]["dimension"] == 171

    # queries: the same top-k on both sides, equal to exact search
    emb = Bulk()
    s_store = CaseStore.open(source.settings)
    rng = np.random.default_rng(1)
    for qi in rng.choice(N_BULK, 5, replace=False):
        q = source.vectors[qi] + 0.05 * rng.normal(size=384).astype(np.float32)
        exact = [f"b{i // 5}/{i}.png" for i in np.argsort(-(source.vectors @ (q / np.linalg.norm(q))))[:10]]
        here = [h.id for h in s_store.query("image", emb, q, k=10)]
        there = [h.id for h in server.store.query("image", emb, q, k=10)]
        assert here == there == exact
        filtered = [h.id for h in server.store.query("image", emb, q, k=5, where={"organ": "skin"})]
        assert filtered == [h.id for h in s_store.query("image", emb, q, k=5, where={"organ": "skin"})]
    from pathasst.core.cases import load_case
    from pathasst.memory import open_library

    on_disk = open_library(source.settings)
    on_server = open_library(source.settings.model_copy(update={"chroma_host": server.host,
                                                                "chroma_port": int(server.port)}))
    case = load_case(source.cases / "s1", source.cases, source.settings)
    a, b = on_disk.similar_to_case(case, k=2), on_server.similar_to_case(case, k=2)
    assert [h.case_id for h in a] == [h.case_id for h in b] == ["s2", "s3"]
    assert [h.distance for h in a] == pytest.approx([h.distance for h in b], abs=1e-6)
    assert [h.case_id for h in on_server.search(text="report of s3", k=3)] == [
        h.case_id for h in on_disk.search(text="report of s3", k=3)]

    # a rerun is a no-op: nothing written, counts equal; the Rich table names every collection
    code, out = _run("--from", str(source.path), "--to-host", server.host, "--to-port", server.port, "--json")
    rep = _json(out)
    assert code == 0 and rep["verified"]
    assert [(c["copied"], c["unchanged"], c["created"]) for c in rep["collections"]] == [
        (0, N_BULK, False), (0, 3, False), (0, 6, False)]
    code, out = _run("--from", str(source.path), "--to-host", server.host, "--to-port", server.port)
    assert code == 0 and "0 records copied" in out and "counts verified" in out, out
    assert BULK in out and "pathasst-img-hed-texture-v1" in out and "ok" in out

    # back again: server -> a new embedded folder, identical to the original
    back = tmp_path / "back"
    code, out = _run("--from-host", server.host, "--from-port", server.port, "--to-path", str(back), "--batch", "700")
    assert code == 0, out
    _assert_same(src, _dump(CaseStore.open(SimpleNamespace(chroma_host=None, chroma_path=back))))


def test_interrupted_migration_completes_on_rerun(source, tmp_path):
    """The server goes away after the first page of 1,000; the rerun against the restarted server completes it."""
    port = _free_port()
    proc = _start_server(tmp_path / "db", port, tmp_path / "server.log")
    state = {"proc": proc}

    def stop_server_after_first_page(name: str, done: int, total: int) -> None:
        if name == BULK and done == 1000:
            _stop(state["proc"])

    try:
        src, dst = Endpoint(path=source.path), Endpoint(host="127.0.0.1", port=port)
        with pytest.raises(LibraryUnavailableError, match="migration stopped: .*refused.*rerun the same command"):
            migrate(src, dst, batch=1000, progress=stop_server_after_first_page)
        state["proc"] = _start_server(tmp_path / "db", port, tmp_path / "server.log")
        store = CaseStore.open(SimpleNamespace(chroma_host="127.0.0.1", chroma_port=port))
        assert {c["name"]: c["count"] for c in store.collections()} == {BULK: 1000}  # sorted: bulk comes first
        # a record changed in the target is put right too
        store.client.get_collection(BULK).update(ids=["b0/0.png"], metadatas=[{"case_id": "b0", "organ": "edited"}])

        code, out = _run("--from", str(source.path), "--to-host", "127.0.0.1", "--to-port", str(port), "--json")
        rep = _json(out)
        assert code == 0 and rep["verified"], out
        cols = {c["name"]: c for c in rep["collections"]}
        assert (cols[BULK]["target_before"], cols[BULK]["copied"], cols[BULK]["unchanged"]) == (1000, 1501, 999)
        assert not cols[BULK]["created"] and cols["pathasst-img-hed-texture-v1"]["created"]
        assert store.client.get_collection(BULK).get(ids=["b0/0.png"])["metadatas"][0]["organ"] == "colon"
        assert {c["name"]: c["count"] for c in store.collections()} == {
            BULK: N_BULK, "pathasst-img-hed-texture-v1": 3, "pathasst-txt-minilm-l6-v2": 6}
    finally:
        _stop(state["proc"])


def test_dry_run_writes_nothing(source, server, tmp_path):
    code, out = _run("--from", str(source.path), "--to-host", server.host, "--to-port", server.port, "--dry-run",
                     "--json")
    rep = _json(out)
    assert code == 0 and rep["dry_run"] and not rep["verified"], out
    assert [(c["copied"], c["status"], c["target_after"]) for c in rep["collections"]] == [
        (N_BULK, "dry-run", 0), (3, "dry-run", 0), (6, "dry-run", 0)]
    assert server.store.collections() == []
    code, out = _run("--from", str(source.path), "--to-path", str(tmp_path / "new"), "--dry-run")
    assert code == 0 and "2509 records would be copied" in out, out
    assert not (tmp_path / "new").exists()


def test_target_with_another_embedder_is_refused(source, server):
    server.store.upsert("image", Bulk512(), ["x/1"], np.ones((1, 512)), [{"case_id": "x"}])
    code, out = _run("--from", str(source.path), "--to-host", server.host, "--to-port", server.port)
    assert code == 2, out
    assert f"target collection '{BULK}'" in out and "dimension: target 512, source 384" in out
    assert [c["name"] for c in server.store.collections()] == [BULK]  # refused before writing anything
    assert server.store.collections()[0]["count"] == 1
    with pytest.raises(MixedEmbeddersError, match="refusing to mix"):
        migrate(Endpoint(path=source.path), Endpoint(host=server.host, port=int(server.port)), dry_run=True)


def test_unreachable_server_missing_source_and_same_library_fail_clearly(source, tmp_path):
    port = str(_free_port())  # nothing listens there
    t0 = time.monotonic()
    code, out = _run("--from", str(source.path), "--to-host", "127.0.0.1", "--to-port", port)
    assert code == 2 and f"Chroma server at 127.0.0.1:{port} is not reachable" in out, out
    assert time.monotonic() - t0 < 10
    code, out = _run("--from", str(tmp_path / "nothing"), "--to-path", str(tmp_path / "t"))
    assert code == 2 and "no case library at" in out and not (tmp_path / "nothing").exists(), out
    code, out = _run("--from", str(source.path), "--to-path", str(source.path / ".." / "lib"))
    assert code == 2 and "source and target are the same library" in out, out
    code, out = _run("--from", str(source.path))
    assert code == 2 and "give exactly one of --to-host HOST or --to-path PATH" in out, out
