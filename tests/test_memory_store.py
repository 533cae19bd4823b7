"""The Chroma case store in both client modes: embedded (PersistentClient) and a real `chroma run` server.

Covers idempotent upsert by id, metadata and `where` filters, deletion, refusal to mix embedders, per-case grouping in
the library, and persistence across restarts (a new process for the embedded store, a restarted server).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from pathasst.core.embedders import Embedder
from pathasst.memory.store import CaseStore, MixedEmbeddersError, StoreError, normalise_where

CHROMA = Path(sys.executable).parent / "chroma"


class Fixed(Embedder):
    """A 4-d test embedder: vectors are given, not computed (the store never embeds anything itself)."""

    name: ClassVar[str] = "fixed-4d"
    dimension: ClassVar[int] = 4
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})


class Other(Fixed):
    name: ClassVar[str] = "fixed-4d"  # same name, different space: must be refused

    def fingerprint(self) -> str:
        return "fixed-4d:other-weights"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(path: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    proc = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
    )
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chroma server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("chroma server did not become healthy in 60 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    if not CHROMA.is_file():
        pytest.skip(f"the chroma command is not installed next to {sys.executable}")
    root = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    proc = _start_server(root / "db", port, root / "server.log")
    yield SimpleNamespace(host="127.0.0.1", port=port, path=root / "db")
    _stop(proc)


@pytest.fixture(params=["embedded", "server"])
def store_settings(request, settings, tmp_path):
    """Settings for each client mode; the server's PathAsst collections are dropped before each test."""
    if request.param == "embedded":
        yield settings.model_copy(update={"chroma_path": tmp_path / "lib"})
        return
    srv = request.getfixturevalue("chroma_server")
    s = settings.model_copy(update={"chroma_host": srv.host, "chroma_port": srv.port})
    store = CaseStore.open(s)
    for c in store.collections():
        store.drop_collection(c["name"])
    yield s


def _vecs(*rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _fill(store: CaseStore, emb: Embedder) -> None:
    store.upsert(
        "image", emb,
        ["a/1.png", "a/2.png", "b/1.png", "c/1.png"],
        _vecs([1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]),
        [
            {"case_id": "a", "organ": "colon", "stain": "H&E", "diagnosis": "adenocarcinoma", "date": None},
            {"case_id": "a", "organ": "colon", "stain": "H&E", "diagnosis": "adenocarcinoma"},
            {"case_id": "b", "organ": "colon", "stain": "Ki-67", "diagnosis": "adenoma"},
            {"case_id": "c", "organ": "breast", "stain": "H&E", "diagnosis": "lobular carcinoma"},
        ],
    )


def test_upsert_query_filter_delete(store_settings):
    store, emb = CaseStore.open(store_settings), Fixed()
    assert store.mode == ("server" if store_settings.chroma_host else "embedded")
    _fill(store, emb)
    _fill(store, emb)  # idempotent: same ids replace, never duplicate
    col = store.collection("image", emb, create=False)
    assert col.count() == 4
    assert col.metadata["embedder"] == "fixed-4d" and col.metadata["dimension"] == 4
    hits = store.query("image", emb, np.array([1, 0.05, 0, 0]), k=3)
    assert [h.id for h in hits] == ["a/1.png", "a/2.png", "b/1.png"]
    assert hits[0].distance < hits[1].distance < hits[2].distance
    # cosine distance, computed by hand: 1 - cos
    q = np.array([1, 0.05, 0, 0]) / np.linalg.norm([1, 0.05, 0, 0])
    assert hits[2].distance == pytest.approx(1 - q[1], abs=1e-5)
    assert "date" not in hits[0].metadata  # None values are not stored
    # where filters: plain pairs are ANDed; operators pass through; a case can be excluded
    only = store.query("image", emb, np.array([1, 0, 0, 0]), k=5, where={"organ": "colon", "stain": "Ki-67"})
    assert [h.id for h in only] == ["b/1.png"]
    he = store.query("image", emb, np.array([1, 0, 0, 0]), k=5, where={"stain": {"$in": ["H&E"]}}, exclude_case="a")
    assert [h.id for h in he] == ["c/1.png"]
    # an existing record is updated in place
    store.upsert("image", emb, ["c/1.png"], _vecs([1, 0, 0, 0.01]), [{"case_id": "c", "organ": "breast"}])
    assert store.query("image", emb, np.array([1, 0, 0, 0]), k=1, exclude_case="a")[0].id == "c/1.png"
    # deletion by case
    assert store.delete_case("a") == 2
    assert col.count() == 2 and store.query("image", emb, np.array([1, 0, 0, 0]), k=5, where={"case_id": "a"}) == []
    with pytest.raises(StoreError, match="refusing to empty"):
        store.delete()


def test_mixing_embedders_is_refused(store_settings):
    store = CaseStore.open(store_settings)
    _fill(store, Fixed())
    with pytest.raises(MixedEmbeddersError, match="refusing to mix"):
        CaseStore.open(store_settings).collection("image", Other())
    with pytest.raises(MixedEmbeddersError, match="dimension 3"):
        store.upsert("image", Fixed(), ["x/1"], np.ones((1, 3)), [{"case_id": "x"}])
    with pytest.raises(MixedEmbeddersError):
        store.query("image", Fixed(), np.ones(5), k=1)


def test_missing_or_empty_collection_gives_no_hits(store_settings):
    store = CaseStore.open(store_settings)
    assert store.query("image", Fixed(), np.ones(4), k=3) == []
    store.collection("text", Fixed())  # created, empty
    assert store.query("text", Fixed(), np.ones(4), k=3) == []


def test_library_groups_images_by_case(store_settings):
    from pathasst.memory.library import CaseLibrary

    store = CaseStore.open(store_settings)
    _fill(store, Fixed())
    lib = CaseLibrary(store_settings, Fixed(), Fixed(), store=store)
    hits = lib.search_vector(np.array([1, 0, 0, 0]), k=2)
    assert [h.case_id for h in hits] == ["a", "b"]  # case a once (its nearest image), then b
    assert hits[0].distance == pytest.approx(0, abs=1e-6) and hits[0].diagnosis == "adenocarcinoma"


def test_normalise_where():
    assert normalise_where(None) is None
    assert normalise_where({"organ": "colon"}) == {"organ": "colon"}
    assert normalise_where({"organ": "colon", "stain": "H&E"}) == {"$and": [{"organ": "colon"}, {"stain": "H&E"}]}
    assert normalise_where({"$or": [{"a": 1}, {"b": 2}]}) == {"$or": [{"a": 1}, {"b": 2}]}


_WRITE = """
import numpy as np, sys
from types import SimpleNamespace
from pathasst.memory.store import CaseStore
sys.path.insert(0, {tests!r})
from test_memory_store import Fixed
s = SimpleNamespace(chroma_host=None, chroma_path={path!r}, chroma_port=8000)
CaseStore.open(s).upsert("image", Fixed(), ["p/1"], np.array([[0, 0, 0, 1.0]]), [{{"case_id": "p", "diagnosis": "kept"}}])
"""


def test_embedded_store_persists_across_processes(tmp_path):
    path = tmp_path / "lib"
    subprocess.run([sys.executable, "-c", _WRITE.format(tests=str(Path(__file__).parent), path=str(path))],
                   check=True, timeout=120)
    assert CaseStore.exists(SimpleNamespace(chroma_host=None, chroma_path=path))
    store = CaseStore.open(SimpleNamespace(chroma_host=None, chroma_path=path))
    hits = store.query("image", Fixed(), np.array([0, 0, 0, 1.0]), k=1)
    assert [(h.id, h.metadata["diagnosis"]) for h in hits] == [("p/1", "kept")]


def test_server_store_persists_across_server_restart(tmp_path):
    if not CHROMA.is_file():
        pytest.skip("the chroma command is not installed")
    port = _free_port()
    s = SimpleNamespace(chroma_host="127.0.0.1", chroma_port=port, chroma_path=tmp_path / "unused")
    proc = _start_server(tmp_path / "db", port, tmp_path / "server.log")
    try:
        CaseStore.open(s).upsert("image", Fixed(), ["p/1"], np.array([[0, 0, 1.0, 0]]), [{"case_id": "p"}])
    finally:
        _stop(proc)
    from pathasst.memory.store import LibraryUnavailableError

    with pytest.raises(LibraryUnavailableError, match="not reachable"):
        CaseStore.open(s)
    proc = _start_server(tmp_path / "db", port, tmp_path / "server.log")
    try:
        hits = CaseStore.open(s).query("image", Fixed(), np.array([0, 0, 1.0, 0]), k=1)
        assert [h.id for h in hits] == ["p/1"] and hits[0].distance == pytest.approx(0, abs=1e-6)
    finally:
        _stop(proc)


def test_library_ingests_and_retrieves_through_the_server(chroma_server, settings, tmp_path):
    """The same ingestion and retrieval as embedded, against the server (thumbnails stay on this machine)."""
    from PIL import Image
    from skimage import data

    from pathasst.core.cases import load_case
    from pathasst.memory import open_library

    ihc = np.asarray(data.immunohistochemistry())
    root = tmp_path / "cases"
    for cid, px in {"s1": ihc[:256, :256], "s2": ihc[256:, 256:], "s3": np.ascontiguousarray(ihc[:256, :256, ::-1])}.items():
        (root / cid).mkdir(parents=True)
        Image.fromarray(px).save(root / cid / "x.png")
        (root / cid / "case.yaml").write_text(f"diagnosis: dx-{cid}\norgan: colon\n")
    s = settings.model_copy(update={"chroma_host": chroma_server.host, "chroma_port": chroma_server.port})
    store = CaseStore.open(s)
    for c in store.collections():
        store.drop_collection(c["name"])
    lib = open_library(s)
    assert lib.add_cases(root, texts=False).count("added") == 3
    hits = lib.similar_to_case(load_case(root / "s1", root, s), k=2)
    assert [h.case_id for h in hits] == ["s2", "s3"] and hits[0].diagnosis == "dx-s2"
    assert Path(hits[0].thumbnail).is_file() and Path(s.cache_dir) in Path(hits[0].thumbnail).parents
    st = lib.stats()
    assert (st["mode"], st["cases"], st["images"]) == ("server", 3, 3) and "disk_mb" not in st


def test_excluding_a_case_with_many_images_still_fills_k(settings, tmp_path):
    store, emb = CaseStore.open(settings.model_copy(update={"chroma_path": tmp_path / "lib"})), Fixed()
    near = _vecs(*([[1, 0.01 * i, 0, 0] for i in range(40)]))  # 40 images of case a, all nearest to the query
    far = _vecs([0.5, 1, 0, 0], [0.5, 0, 1, 0], [0.4, 0, 0, 1])
    store.upsert("image", emb, [f"a/{i}" for i in range(40)] + ["b/1", "c/1", "d/1"], np.vstack([near, far]),
                 [{"case_id": "a"}] * 40 + [{"case_id": c} for c in "bcd"])
    hits = store.query("image", emb, np.array([1, 0, 0, 0]), k=3, exclude_case="a")
    assert sorted(h.case_id for h in hits) == ["b", "c", "d"]
