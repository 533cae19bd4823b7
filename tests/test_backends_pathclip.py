"""PathCLIP backends: tissue_classification (zero-shot, linear probe) and slide_classification (ABMIL).

The PathCLIP checkpoint is a randomly initialised open_clip ViT-B-16 (QuickGELU) state dict saved once per module
(~600 MB in tmp), the real format of ``pathclip-base.pt``. Random towers make zero-shot answers meaningless, so
zero-shot is checked against open_clip computed independently; learned behaviour is checked with heads trained here
for a second on embeddings of synthetic tissue: a linear probe (pink vs purple patches) and an ABMIL head (a slide is
"tumour" when any tile is purple; attention must find those tiles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tool_helpers import make_resolver

from pathasst.core.imaging import ImageData
from pathasst.tools.base import call_tool
from pathasst.tools.slide_classification import SlideClassificationTool
from pathasst.tools.tissue_classification import CRC100K_LABELS, TissueClassificationTool

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

COLOURS = {"pink": (225, 150, 185), "purple": (110, 60, 150), "white": (242, 242, 240)}


def _tile(kind: str, seed: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[kind], float)
    if kind == "white":  # blank glass: faint sensor noise, no texture
        return np.clip(base + rng.normal(0, 2, (size, size, 3)), 0, 255).astype(np.uint8)
    img = base + rng.normal(0, 10, (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(6):  # a few darker blobs: nuclei-like texture
        cy, cx = rng.uniform(0, size, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(20, 90)] *= 0.7
    return np.clip(img, 0, 255).astype(np.uint8)


def _mosaic(layout: list[list[str]], seed: int) -> np.ndarray:
    return np.concatenate(
        [np.concatenate([_tile(k, seed + 10 * j + i) for i, k in enumerate(row)], 1) for j, row in enumerate(layout)], 0
    )


@pytest.fixture(scope="module")
def pathclip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    torch.set_num_threads(1)  # shared cores: one thread is much faster than two here
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    path = tmp_path_factory.mktemp("pathclip") / "pathclip-base.pt"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture()
def clip_settings(settings: Any, pathclip: tuple[Path, Any]) -> Any:
    return settings.model_copy(update={"pathclip_weights": pathclip[0], "torch_threads": 1})


def _classify(settings: Any, image: ImageData, **args: Any):
    tool = TissueClassificationTool(settings)
    return call_tool(tool, {"image": image.name, **args}, make_resolver({image.name: image}))


def _open_clip_probs(model: Any, tiles: list[np.ndarray], labels: list[str]) -> np.ndarray:
    from PIL import Image

    pre = open_clip.image_transform(224, is_train=False)
    tok = open_clip.get_tokenizer("ViT-B-16")
    with torch.inference_mode():
        im = model.encode_image(torch.stack([pre(Image.fromarray(t)) for t in tiles]), normalize=True)
        tx = model.encode_text(tok([f"An image of {lab}" for lab in labels]), normalize=True)
        return torch.softmax(100.0 * im @ tx.T, dim=-1).double().numpy()


def test_zero_shot_matches_open_clip_and_tiles_large_images(clip_settings: Any, pathclip: tuple[Path, Any]) -> None:
    _, model = pathclip
    labels = ["tumour", "stroma", "necrosis"]
    patch = ImageData(_tile("purple", 1), name="p.png", mpp=0.5)
    record, result = _classify(clip_settings, patch, labels=labels)
    assert record.status == "ok", record.error
    out = result.output
    want = _open_clip_probs(model, [patch.pixels], labels)[0]
    assert out.labels == labels and out.head == "zero_shot" and out.n_tiles == 1 and out.backend == "pathclip"
    assert np.allclose([out.probabilities[lab] for lab in labels], want, atol=1e-4)
    assert sum(out.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert out.top_label == labels[int(np.argmax(want))] and out.top_probability == pytest.approx(want.max(), abs=1e-4)
    assert result.overlay.shape == (224, 224, 3) and len(result.features) == 1
    assert result.features[0]["properties"]["classification"]["name"] == out.top_label
    assert record.model["model"].startswith("PathCLIP") and len(record.model["weights_sha256"]) == 64
    # a 2 x 2-tile image with one white (background) tile: 3 tissue tiles, probabilities averaged over them
    big = ImageData(_mosaic([["pink", "purple"], ["white", "pink"]], 5), name="big.png", mpp=0.5)
    record, result = _classify(clip_settings, big)  # default: the CRC-100K preset
    out = result.output
    assert out.labels == list(CRC100K_LABELS) and out.n_tiles == 3 and len(result.features) == 3
    tiles = [big.pixels[y : y + 224, x : x + 224] for x, y in ((0, 0), (224, 0), (224, 224))]
    want = _open_clip_probs(model, tiles, list(CRC100K_LABELS)).mean(0)
    assert np.allclose([out.probabilities[lab] for lab in CRC100K_LABELS], want, atol=1e-4)
    origins = sorted(tuple(f["geometry"]["coordinates"][0][0]) for f in result.features)
    assert origins == [(0.0, 0.0), (224.0, 0.0), (224.0, 224.0)]  # level-0 tile corners


@pytest.fixture(scope="module")
def tile_embeddings(pathclip: tuple[Path, Any]) -> dict[str, np.ndarray]:
    """PathCLIP embeddings of a few synthetic pink and purple tiles (4 each)."""
    from PIL import Image

    _, model = pathclip
    pre = open_clip.image_transform(224, is_train=False)
    out = {}
    for kind in ("pink", "purple"):
        with torch.inference_mode():
            x = torch.stack([pre(Image.fromarray(_tile(kind, 100 + s))) for s in range(4)])
            out[kind] = model.encode_image(x, normalize=True).numpy()
    return out


def test_linear_probe_learns_and_is_chosen_by_the_rules(
    clip_settings: Any, tile_embeddings: dict[str, np.ndarray], tmp_path: Path
) -> None:
    x = torch.from_numpy(np.concatenate([tile_embeddings["pink"], tile_embeddings["purple"]]))
    y = torch.tensor([0] * 4 + [1] * 4)
    x = x + 0.0  # unit vectors, as the tool feeds them
    probe = torch.nn.Linear(512, 2)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(probe(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path / "probe.pt"
    torch.save({"state_dict": probe.state_dict(), "config": {"labels": ["normal stroma", "tumour"]}}, path)
    s = clip_settings.model_copy(update={"tissue_probe_weights": path})
    for kind, want in (("pink", "normal stroma"), ("purple", "tumour")):
        record, result = _classify(s, ImageData(_tile(kind, 7), name="t.png", mpp=0.5))  # unseen tiles
        assert record.status == "ok", record.error
        assert result.output.head == "linear_probe" and result.output.labels == ["normal stroma", "tumour"]
        assert result.output.top_label == want and result.output.top_probability > 0.9
    assert "linear probe (2 labels)" in record.model["model"]
    # free labels and a preset the probe does not cover go to zero-shot
    _, r = _classify(s, ImageData(_tile("pink", 7), name="t.png"), labels=["a", "b"])
    assert r.output.head == "zero_shot"
    _, r = _classify(s, ImageData(_tile("pink", 7), name="t.png"), preset="crc100k")
    assert r.output.head == "zero_shot" and len(r.output.labels) == 9
    # a probe that does not fit fails naming its setting
    bad = tmp_path / "bad_probe.pt"
    torch.save({"state_dict": {"weight": torch.zeros(3, 512), "bias": torch.zeros(3)}, "config": {"labels": ["a", "b"]}}, bad)
    record, _ = _classify(clip_settings.model_copy(update={"tissue_probe_weights": bad}), ImageData(_tile("pink", 7), name="t.png"))
    assert record.status == "failed" and "PATHASST_TISSUE_PROBE_WEIGHTS" in record.error and "do not fit 2 labels" in record.error


# ---- slide classification ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def abmil_head(tile_embeddings: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ABMIL head trained on bags of the tile embeddings: 'tumour' iff the bag holds a purple tile."""
    from pathasst.tools.backends.abmil import build_abmil

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_abmil(512, 2, hidden_dim=32, attention_dim=16, gated=True)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    pink, purple = tile_embeddings["pink"], tile_embeddings["purple"]
    for step in range(300):
        n = int(rng.integers(2, 8))
        bag = pink[rng.integers(0, 4, n)]
        label = step % 2
        if label:
            k = int(rng.integers(1, max(2, n // 2 + 1)))
            bag[rng.choice(n, k, replace=False)] = purple[rng.integers(0, 4, k)]
        logits, _ = model(torch.from_numpy(bag + rng.normal(0, 0.01, bag.shape).astype(np.float32)))
        loss = torch.nn.functional.cross_entropy(logits[None], torch.tensor([label]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("abmil") / "abmil.pt"
    config = {"labels": ["normal", "tumour"], "tile_mpp": 0.5, "tile_size": 224, "min_tissue": 0.5}
    torch.save({"state_dict": model.state_dict(), "config": config}, path)
    return path


def _slide_call(settings: Any, image: ImageData, **args: Any):
    tool = SlideClassificationTool(settings)
    return call_tool(tool, {"image": image.name, **args}, make_resolver({image.name: image}))


def test_abmil_finds_the_tumour_tiles(clip_settings: Any, abmil_head: Path) -> None:
    s = clip_settings.model_copy(update={"slide_mil_weights": abmil_head})
    layout = [["white", "pink", "white"], ["pink", "purple", "pink"]]
    image = ImageData(_mosaic(layout, 50), name="slide.png", mpp=0.5, origin=(1000.0, 0.0))
    record, result = _slide_call(s, image, top_k_tiles=2)
    assert record.status == "ok", record.error
    out = result.output
    assert out.backend == "abmil" and out.n_tiles == 4  # the white tiles are not tissue
    assert out.label == "tumour" and out.probability > 0.8
    assert sum(out.class_probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert out.top_tiles[0].model_dump() == {"x": 1224, "y": 224, "width": 224, "height": 224}  # the purple tile
    att = {tuple(f["geometry"]["coordinates"][0][0]): f["properties"]["measurements"] for f in result.features}
    assert len(att) == 4 and sum(m["Attention"] for m in att.values()) == pytest.approx(1.0, abs=1e-4)
    assert att[(1224.0, 224.0)]["Attention (relative)"] == 1.0
    assert result.overlay.shape == (448, 672, 3)
    assert np.array_equal(result.overlay[:224, 448:], image.pixels[:224, 448:])  # no heat over background tiles
    assert not np.array_equal(result.overlay[224:, 224:448], image.pixels[224:, 224:448])
    assert "tumour (p=" in record.summary and "ABMIL" in record.model["model"]
    normal = ImageData(_mosaic([["pink", "pink"], ["pink", "white"]], 80), name="n.png", mpp=0.5)
    _, r = _slide_call(s, normal)
    assert r.output.label == "normal" and r.output.n_tiles == 3


def test_slide_tool_needs_pathclip_and_a_fitting_head(settings: Any, abmil_head: Path, tmp_path: Path, pathclip) -> None:
    image = ImageData(_tile("pink", 1, 64), name="x.png")
    record, result = _slide_call(settings.model_copy(update={"slide_mil_weights": abmil_head}), image)
    assert record.status == "not_configured"
    assert "PATHASST_PATHCLIP_WEIGHTS" in result.output.message and "PATHASST_SLIDE_MIL_WEIGHTS" in result.output.message
    sd = torch.load(abmil_head, weights_only=True)["state_dict"]
    for config, message in (({"labels": ["a", "b", "c"]}, "2 outputs but 3 labels"), ({}, "lack 'labels'"),
                            ({"labels": ["a", "b"], "embedder": "uni"}, "not supported")):
        path = tmp_path / "head.pt"
        torch.save({"state_dict": sd, "config": config}, path)
        s = settings.model_copy(update={"slide_mil_weights": path, "pathclip_weights": pathclip[0]})
        record, _ = _slide_call(s, image)
        assert record.status == "failed" and "PATHASST_SLIDE_MIL_WEIGHTS" in record.error and message in record.error


@pytest.mark.data
def test_whole_slide_path_reads_tissue_tiles_from_the_slide(
    clip_settings: Any, abmil_head: Path, shared_data: Path
) -> None:
    """With the slide attached to the analysed image, tiles are read from the slide at the head's resolution."""
    from pathasst.core.readers import SlideReader
    from pathasst.core.regions import Region

    s = clip_settings.model_copy(update={"slide_mil_weights": abmil_head})
    with SlideReader(shared_data / "slides" / "cmu-1-small-region.svs") as reader:
        window = reader.best_window(672, 448)
        image = reader.read_region(window, 4.0, 1 << 22)  # a coarse view of the window
        image.slide = reader  # type: ignore[attr-defined]
        record, result = _slide_call(s, image)
        assert record.status == "ok", record.error
        n = result.output.n_tiles
        assert 1 <= n <= 6 and len(result.features) == n
        for f in result.features:
            (x0, y0), (x1, _), (_, y1) = f["geometry"]["coordinates"][0][:3]
            assert x1 - x0 == pytest.approx(224, abs=1) and y1 - y0 == pytest.approx(224, abs=1)
            assert window.x - 224 <= x0 <= window.x + window.width and window.y - 224 <= y0 <= window.y + window.height
        assert isinstance(result.output.top_tiles[0], Region)
        assert result.overlay.shape == (*image.shape, 3)
