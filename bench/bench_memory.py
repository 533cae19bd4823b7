"""Case memory benchmarks: embedding/ingestion rates, the ViT-B/16 compute bound, Chroma at scale (embedded vs server).

Prints figures; asserts nothing. Sections (all by default):

- ``embed``: images/s of each image embedder (hed-texture; PathCLIP ViT-B/16 with randomly initialised weights: same
  compute as the real checkpoint) and texts/s of MiniLM, on 256 px H&E tiles (CoNSeP from ../shared/data when present,
  else crops of the packaged IHC image); end-to-end ``library add`` cases/s with hed-texture + MiniLM.
- ``bound``: measured fp32 matrix-multiply GFLOP/s of this CPU and the ViT-B/16 bound it implies
  (17.6 GFLOPs per 224 px image), next to the measured PathCLIP rate.
- ``consep`` (only when asked): retrieval Acc@1 / Acc@5 / mMV@5 on CoNSeP tiles labelled by dominant nucleus type,
  k-fold split by source image (see :func:`consep_split`), for hed-texture and a randomly initialised ViT-B/16.
- ``scale``: synthetic unit vectors (512-d, as PathCLIP) stored in Chroma, embedded and on a ``chroma run`` server:
  insert rate, query latency p50/p95 (top-5; top-5 excluding one case, as the graph's retrieve node asks; top-5 with a
  metadata filter), disk per vector.

Usage: ``python bench/bench_memory.py [--sections embed bound scale consep] [--sizes 10000 100000]
[--modes embedded server]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

VIT_B16_GFLOPS = 17.6  # per 224x224 image, forward pass (ViT-B/16 image tower)


def _tiles(n: int) -> tuple[list[np.ndarray], str]:
    from PIL import Image

    folder = SHARED / "consep_train" / "images"
    if folder.is_dir():
        files = sorted(folder.glob("*.jpg"))[:n]
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], f"{len(files)} CoNSeP 256 px tiles"
    from skimage import data

    ihc = np.asarray(data.immunohistochemistry())
    crops = [ihc[y : y + 256, x : x + 256] for y in range(0, 257, 32) for x in range(0, 257, 32)][:n]
    return crops, f"{len(crops)} 256 px crops of the packaged IHC image"


def _rate(fn: Any, n: int, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_embed(threads: int | None) -> dict[str, float]:
    import torch

    from pathasst.core.descriptor import HEDTextureEmbedder
    from pathasst.core.minilm import MiniLMEmbedder
    from pathasst.core.pathclip import PathCLIPEmbedder

    out: dict[str, float] = {}
    tiles, what = _tiles(64)
    print(f"-- embedding rates on {what}; torch threads {threads or torch.get_num_threads()}")
    hed = HEDTextureEmbedder()
    hed.embed_images(tiles[:2])
    out["hed_img_s"] = _rate(lambda: hed.embed_images(tiles), len(tiles))
    print(f"hed-texture-v1           {out['hed_img_s']:8.1f} images/s")

    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "vitb16-random.pt"
        torch.save(open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).state_dict(), ckpt)
        clip = PathCLIPEmbedder(ckpt, threads=threads, batch_size=16)
        clip.embed_images(tiles[:2])
        n = 16
        out["pathclip_img_s"] = _rate(lambda: clip.embed_images(tiles[:n]), n)
        out["pathclip_img_s_batch1"] = _rate(lambda: [clip.embed_images([t]) for t in tiles[:4]], 4)
        texts = [f"An image of {w}" for w in ("adenocarcinoma", "stroma", "lymphocytes", "mucus")] * 4
        out["pathclip_txt_s"] = _rate(lambda: clip.embed_texts(texts), len(texts))
    print(f"pathclip ViT-B/16 batch 16 {out['pathclip_img_s']:6.2f} images/s (batch 1: {out['pathclip_img_s_batch1']:.2f}); "
          f"text tower {out['pathclip_txt_s']:.1f} texts/s")
    mini = MiniLMEmbedder(threads=threads)
    reports = [
        "Colorectal adenocarcinoma, moderately differentiated, with tumour budding and desmoplastic stroma. " * 3
    ] * 64
    mini.embed_texts(reports[:2])
    out["minilm_txt_s"] = _rate(lambda: mini.embed_texts(reports), len(reports))
    print(f"minilm-l6-v2             {out['minilm_txt_s']:8.1f} texts/s (~60-word reports)")
    out.update(_bench_ingest(tiles[:32]))
    return out


def _bench_ingest(tiles: list[np.ndarray]) -> dict[str, float]:
    from PIL import Image

    from pathasst.core.settings import Settings
    from pathasst.memory import open_library

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cases"
        for i, t in enumerate(tiles):
            d = root / f"case_{i:03d}"
            d.mkdir(parents=True)
            Image.fromarray(t).save(d / "tile.png")
            (d / "case.yaml").write_text(f"diagnosis: dx {i % 4}\norgan: colon\nstain: H&E\n")
            (d / "report.md").write_text(f"Archived report {i}: colorectal adenocarcinoma, grade {i % 3 + 1}.")
        settings = Settings(_env_file=None, chroma_path=Path(tmp) / "lib", cache_dir=Path(tmp) / "cache")
        lib = open_library(settings)
        lib.text_embedder.load()
        t0 = time.perf_counter()
        rep = lib.add_cases(root)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        lib.add_cases(root)
        dt2 = time.perf_counter() - t0
    rate = rep.count("added") / dt
    print(f"library add (hed-texture + MiniLM, thumbnails, Chroma): {rate:.1f} cases/s "
          f"({rep.count('added')} one-image cases in {dt:.1f} s); resume pass over unchanged cases {dt2:.2f} s")
    return {"ingest_cases_s": rate, "resume_s": dt2}


def bench_bound(threads: int | None, measured: float | None) -> dict[str, float]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    gflops = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9
    bound = gflops / VIT_B16_GFLOPS
    print(f"-- compute bound: fp32 matmul {gflops:.1f} GFLOP/s on {torch.get_num_threads()} threads -> ViT-B/16 "
          f"bound {bound:.2f} images/s at {VIT_B16_GFLOPS} GFLOPs/image"
          + (f"; measured {measured:.2f} images/s = {measured / bound:.0%} of the bound" if measured else ""))
    return {"matmul_gflops": gflops, "vit_bound_img_s": bound}


class Synthetic:
    """Stands for a 512-d embedder in the store (vectors are synthetic)."""

    name: ClassVar[str] = "synthetic-512"
    dimension: ClassVar[int] = 512

    def fingerprint(self) -> str:
        return self.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(path: Path) -> tuple[subprocess.Popen, int]:
    import httpx

    port = _free_port()
    exe = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen([str(exe), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("chroma server did not start")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_scale(sizes: list[int], modes: list[str], n_queries: int, budget_s: float) -> list[dict[str, Any]]:
    from pathasst.memory.store import CaseStore

    rng = np.random.default_rng(0)
    emb = Synthetic()
    rows = []
    print(f"-- Chroma at scale: 512-d synthetic unit vectors, top-5 queries with a metadata filter, {n_queries} queries")
    for mode in modes:
        tmp = Path(tempfile.mkdtemp(prefix=f"pathasst-bench-{mode}-"))
        proc = None
        try:
            if mode == "server":
                proc, port = _server(tmp / "db")
                settings = SimpleNamespace(chroma_host="127.0.0.1", chroma_port=port, chroma_path=tmp / "unused")
            else:
                settings = SimpleNamespace(chroma_host=None, chroma_path=tmp / "db")
            store = CaseStore.open(settings)
            stored, insert_s = 0, 0.0
            for size in sorted(sizes):
                chunk = 5000
                t0 = time.perf_counter()
                while stored < size:
                    m = min(chunk, size - stored)
                    x = rng.normal(size=(m, 512)).astype(np.float32)
                    x /= np.linalg.norm(x, axis=1, keepdims=True)
                    ids = [f"c{stored + i}/img.png" for i in range(m)]
                    meta = [{"case_id": f"c{stored + i}", "organ": ("colon", "breast", "lung")[(stored + i) % 3],
                             "diagnosis": f"dx{(stored + i) % 7}"} for i in range(m)]
                    store.upsert("image", emb, ids, x, meta)  # type: ignore[arg-type]
                    stored += m
                    if time.perf_counter() - t0 + insert_s > budget_s:
                        break
                insert_s += time.perf_counter() - t0
                stopped = stored < size
                if stopped:
                    print(f"{mode:8s} {size:>7d}: insert budget of {budget_s:.0f} s reached at {stored} vectors "
                          f"({insert_s:.0f} s); measuring there")
                lat, excl = [], []
                for i in range(n_queries):
                    q = rng.normal(size=512).astype(np.float32)
                    t1 = time.perf_counter()
                    store.query("image", emb, q, 5)  # type: ignore[arg-type]
                    lat.append(time.perf_counter() - t1)
                    t1 = time.perf_counter()
                    store.query("image", emb, q, 5, exclude_case=f"c{i}")  # type: ignore[arg-type]
                    excl.append(time.perf_counter() - t1)
                filt = []
                for _ in range(max(20, n_queries // 5)):
                    q = rng.normal(size=512).astype(np.float32)
                    t1 = time.perf_counter()
                    store.query("image", emb, q, 5, where={"organ": "colon", "diagnosis": "dx3"})  # type: ignore[arg-type]
                    filt.append(time.perf_counter() - t1)
                disk = _du(tmp / "db")
                row = {
                    "mode": mode, "vectors": stored, "insert_vec_s": stored / insert_s,
                    "p50_ms": np.percentile(lat, 50) * 1e3, "p95_ms": np.percentile(lat, 95) * 1e3,
                    "exclude_p50_ms": np.percentile(excl, 50) * 1e3, "exclude_p95_ms": np.percentile(excl, 95) * 1e3,
                    "filtered_p50_ms": np.percentile(filt, 50) * 1e3, "disk_bytes_per_vector": disk / stored,
                }
                rows.append(row)
                print(f"{mode:8s} {stored:>7d} vectors: insert {row['insert_vec_s']:7.0f} vec/s | top-5 p50 "
                      f"{row['p50_ms']:6.2f} ms p95 {row['p95_ms']:6.2f} ms | excluding a case p50 "
                      f"{row['exclude_p50_ms']:6.2f} p95 {row['exclude_p95_ms']:6.2f} ms | filtered (organ AND diagnosis) p50 "
                      f"{row['filtered_p50_ms']:6.2f} ms | disk {row['disk_bytes_per_vector']:.0f} B/vector "
                      f"(512 x 4 B = 2048 B raw)")
                if stopped:
                    break
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


CONSEP_TYPES = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle"}


def consep_split(out: Path, fold: int = 0, n_folds: int = 3) -> tuple[Path, Path, Path]:
    """CoNSeP tiles split by *source image* (tile names ``train_<source>_<index>``): sources with
    ``source % n_folds == fold`` are queries, the others the library, so overlapping tiles of one source image never
    sit on both sides. Label = the dominant nucleus type of the tile (``types/NAME.json``); tiles without nuclei are
    left out. Writes ``out/library``, ``out/queries`` (symbolic links) and ``out/labels.csv``."""
    import json
    from collections import Counter

    src = SHARED / "consep_train"
    lib, qry = out / "library", out / "queries"
    for d in (lib, qry):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    rows = ["id,label"]
    for f in sorted((src / "types").glob("*.json")):
        types = json.loads(f.read_text())["inst_type"]
        if not types:
            continue
        label = CONSEP_TYPES[Counter(types).most_common(1)[0][0]]
        source = int(f.stem.split("_")[1])
        dest = qry if source % n_folds == fold else lib
        (dest / f"{f.stem}.jpg").symlink_to((src / "images" / f"{f.stem}.jpg").resolve())
        rows.append(f"{f.stem},{label}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return lib, qry, out / "labels.csv"


def _tissue_net_vectors(ids: list[str], images: list[np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    """Unit-normalised 256-d embeddings of the shipped tissue network (images as they are, 0.25 um/px), and a
    stand-in Embedder carrying its name and dimension for the scoring."""
    from pathasst.core.embedders import Embedder
    from pathasst.tools.backends.tissue_tiles import shipped_tissue_net

    class TissueNetVectors(Embedder):
        name, dimension, modalities = "tissue-net", 256, frozenset({"image"})

        def _embed_image_batch(self, batch: Any) -> Any:
            raise NotImplementedError

    v = shipped_tissue_net().embed(images)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return TissueNetVectors(), dict(zip(ids, v, strict=True))


def bench_consep(out: Path, folds: int, embedders: list[str], threads: int | None) -> None:
    from pathasst.core.embedders import image_embedder
    from pathasst.core.settings import Settings

    if not (SHARED / "consep_train").is_dir():
        print("-- CoNSeP evaluation skipped: ../shared/data/consep_train not found")
        return
    settings = Settings(_env_file=None, torch_threads=threads)
    tmp = Path(tempfile.mkdtemp(prefix="pathasst-consep-"))
    if "pathclip-random" in embedders:
        import open_clip
        import torch

        torch.manual_seed(0)
        ckpt = tmp / "vitb16-random.pt"
        torch.save(open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).state_dict(), ckpt)
    from PIL import Image

    from pathasst.memory.evaluation import evaluate_vectors, read_labels
    from pathasst.memory.ingest import image_vectors

    print(f"-- CoNSeP retrieval, {folds}-fold split by source image (labels: dominant nucleus type); each tile is "
          "embedded once and searched through a real Chroma store per fold")
    splits = [consep_split(out / f"fold{fold}", fold, folds) for fold in range(folds)]
    labels = read_labels(splits[0][2])
    ids = sorted(labels)
    images = [np.asarray(Image.open(SHARED / "consep_train" / "images" / f"{i}.jpg").convert("RGB")) for i in ids]
    for name in embedders:
        t0 = time.perf_counter()
        if name == "tissue-net":  # the tissue network's pooled embedding (issue 30: offered only if it beats hed-texture)
            emb, vecs = _tissue_net_vectors(ids, images)
        else:
            s = settings.model_copy(update={"pathclip_weights": tmp / "vitb16-random.pt"}) if name == "pathclip-random" else settings
            emb = image_embedder(s, "pathclip" if name == "pathclip-random" else name)
            vecs = {i: v for i, v in zip(ids, image_vectors(emb, images)[0], strict=True)}
        per_image = (time.perf_counter() - t0) / len(ids)
        scores = []
        for fold, (lib, qry, _) in enumerate(splits):
            lib_ids = sorted(p.stem for p in lib.iterdir())
            q_ids = sorted(p.stem for p in qry.iterdir())
            m, base = evaluate_vectors(emb, lib_ids, np.stack([vecs[i] for i in lib_ids]), q_ids,
                                       np.stack([vecs[i] for i in q_ids]), labels)
            scores.append([m["acc@1"], m["acc@5"], m["mmv@5"], m["macro_mmv@5"], base["majority_class"], base["chance_acc@1"]])
            print(f"{name:16s} fold {fold}: {len(q_ids):3d} queries / {len(lib_ids):3d} library | Acc@1 {m['acc@1']:.3f} "
                  f"Acc@5 {m['acc@5']:.3f} mMV@5 {m['mmv@5']:.3f} macro mMV@5 {m['macro_mmv@5']:.3f} | majority-class "
                  f"{base['majority_class']:.3f} chance Acc@1 {base['chance_acc@1']:.3f}")
        mean = np.mean(scores, axis=0)
        print(f"{name:16s} mean of {folds} folds: Acc@1 {mean[0]:.3f} Acc@5 {mean[1]:.3f} mMV@5 {mean[2]:.3f} "
              f"macro mMV@5 {mean[3]:.3f} (majority-class {mean[4]:.3f}, chance Acc@1 {mean[5]:.3f}); "
              f"{per_image * 1000:.0f} ms/image to embed")
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["embed", "bound", "scale"], choices=["embed", "bound", "scale", "consep"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    ap.add_argument("--modes", nargs="+", default=["embedded", "server"], choices=["embedded", "server"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--budget-s", type=float, default=180.0, help="Stop inserting in one mode after this long.")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    ap.add_argument("--consep-out", type=Path, default=Path(tempfile.gettempdir()) / "pathasst-consep-split",
                    help="Where the consep section writes its split folders and labels.csv.")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--embedders", nargs="+", default=["hed-texture", "pathclip-random"],
                    help="consep section: hed-texture, pathclip-random (ViT-B/16 with random weights), tissue-net.")
    args = ap.parse_args()
    measured = None
    if "embed" in args.sections:
        measured = bench_embed(args.threads).get("pathclip_img_s")
    if "bound" in args.sections:
        bench_bound(args.threads, measured)
    if "scale" in args.sections:
        bench_scale(args.sizes, args.modes, args.queries, args.budget_s)
    if "consep" in args.sections:
        bench_consep(args.consep_out, args.folds, args.embedders, args.threads)


if __name__ == "__main__":
    main()
