"""Embedders: the registry, the hed-texture descriptor, MiniLM, and PathCLIP loaded from a checkpoint saved here.

The PathCLIP checkpoint is a randomly initialised open_clip ViT-B-16 (QuickGELU) state dict written once per session
(~570 MB in tmp): it checks the loading path and that the loaded towers reproduce the saved model's outputs, not
PathCLIP's accuracy (its weights are not available offline).
"""

from __future__ import annotations

import numpy as np
import pytest

from pathasst.core.descriptor import BLOCKS, HEDTextureEmbedder, hed_texture_descriptor
from pathasst.core.embedders import EmbedderError, image_embedder, list_embedders, text_embedder
from pathasst.core.errors import WeightsError


def _ihc() -> np.ndarray:
    from skimage import data

    return np.asarray(data.immunohistochemistry())


# --- registry ---------------------------------------------------------------------------------------
def test_registry_defaults_and_unknown_names(settings, tmp_path):
    assert list_embedders() == {"image": ["hed-texture", "pathclip"], "text": ["minilm", "pathclip"]}
    assert image_embedder(settings).name == "hed-texture-v1"  # no PathCLIP weights configured
    assert text_embedder(settings).name == "minilm-l6-v2"
    with pytest.raises(EmbedderError, match="unknown image embedder 'resnet'; valid: hed-texture, pathclip"):
        image_embedder(settings, "resnet")
    with pytest.raises(EmbedderError, match="needs PATHASST_PATHCLIP_WEIGHTS"):
        image_embedder(settings, "pathclip")
    with_weights = settings.model_copy(update={"pathclip_weights": tmp_path / "pathclip-base.pt"})
    assert image_embedder(with_weights).name == "pathclip-vitb16"  # chosen, not loaded: nothing read yet
    with pytest.raises(EmbedderError, match="does not embed texts"):
        HEDTextureEmbedder().embed_texts(["x"])


# --- hed-texture ------------------------------------------------------------------------------------
def test_descriptor_shape_norm_and_determinism():
    ihc = _ihc()
    emb = HEDTextureEmbedder(batch_size=2)
    tiles = [ihc[:256, :256], ihc[256:, 256:], ihc[:256, 256:]]
    v = emb.embed_images(tiles)
    assert v.shape == (3, sum(BLOCKS.values())) == (3, 171) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    assert np.allclose(v[0], hed_texture_descriptor(tiles[0]), atol=1e-6)  # batching changes nothing
    assert np.array_equal(emb.embed_images(tiles[:1]), emb.embed_images(tiles[:1]))
    assert emb.embed_images([]).shape == (0, 171)
    for odd in (np.full((64, 64, 3), 255, np.uint8), np.zeros((8, 8, 3), np.uint8), np.asarray(ihc[..., 0])):
        x = hed_texture_descriptor(odd)  # blank, tiny, grey: finite unit vectors
        assert np.isfinite(x).all() and np.linalg.norm(x) == pytest.approx(1, abs=1e-6)


def test_descriptor_separates_stains_and_keeps_a_tissue_close_to_itself(shared_data):
    from PIL import Image

    he = [np.asarray(Image.open(shared_data / "consep_train/images" / f"train_13_00{i}.jpg").convert("RGB")) for i in range(3)]
    ihc = _ihc()
    v = HEDTextureEmbedder().embed_images([*he, ihc[:256, :256], ihc[256:, :256]])
    d = 1 - v @ v.T  # cosine distances
    same_he, same_ihc, cross = d[0, 1:3].max(), d[3, 4], d[:3, 3:].min()
    assert same_he < cross and same_ihc < cross  # H&E tiles nearer each other than to DAB IHC, and vice versa
    # the DAB block carries the difference: the IHC image has DAB, the H&E tiles nearly none
    dab = slice(32, 48)
    assert v[3, dab][1:].sum() > v[0, dab][1:].sum()


def test_descriptor_ablation_weights():
    ihc = _ihc()[:256, :256]
    colour_only = {k: (1.0 if k in ("haematoxylin", "eosin", "dab", "haematoxylin_x_eosin") else 0.0) for k in BLOCKS}
    e = HEDTextureEmbedder(weights=colour_only)
    v = e.embed_images([ihc])[0]
    assert np.all(v[112:] == 0) and e.fingerprint() != HEDTextureEmbedder().fingerprint()
    with pytest.raises(ValueError, match="unknown descriptor blocks"):
        HEDTextureEmbedder(weights={"colour": 1})


# --- MiniLM -----------------------------------------------------------------------------------------
def test_minilm_text_embeddings(settings):
    emb = text_embedder(settings)
    v = emb.embed_texts(["adenocarcinoma of the colon", "colorectal cancer", "normal skin with hair follicles"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # meaning, not spelling
    with pytest.raises(EmbedderError, match="does not embed images"):
        emb.embed_images([_ihc()])


# --- PathCLIP ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pathclip_checkpoint(tmp_path_factory):
    """A state dict saved from ``open_clip.create_model('ViT-B-16', force_quick_gelu=True)``, and that model."""
    open_clip = pytest.importorskip("open_clip")
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    path = tmp_path_factory.mktemp("pathclip") / "pathclip-base.pt"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.mark.slow
def test_pathclip_loads_checkpoint_and_reproduces_the_model(pathclip_checkpoint, settings):
    import open_clip
    import torch
    from PIL import Image

    path, model = pathclip_checkpoint
    emb = image_embedder(settings.model_copy(update={"pathclip_weights": path, "torch_threads": 1}))
    assert emb.name == "pathclip-vitb16" and emb.dimension == 512
    img = _ihc()[:300, :260]
    got = emb.embed_images([img])
    pre = open_clip.image_transform(224, is_train=False)
    with torch.inference_mode():
        want = model.encode_image(pre(Image.fromarray(img))[None], normalize=True).numpy()
    assert got.shape == (1, 512) and np.linalg.norm(got) == pytest.approx(1, abs=1e-5)
    assert np.allclose(got, want, atol=1e-4)  # the weights were loaded, not re-initialised
    text = "An image of colorectal adenocarcinoma"
    tv = emb.embed_texts([text])
    with torch.inference_mode():
        tw = model.encode_text(open_clip.get_tokenizer("ViT-B-16")([text]), normalize=True).numpy()
    assert tv.shape == (1, 512) and np.allclose(tv, tw, atol=1e-4)
    assert emb.fingerprint().startswith("pathclip-vitb16:") and len(emb.fingerprint()) == len("pathclip-vitb16:") + 16
    assert torch.get_num_threads() == 1


def test_pathclip_checkpoint_formats(tmp_path):
    import torch

    from pathasst.core.pathclip import load_pathclip_state_dict

    wrapped = tmp_path / "epoch_10.pt"  # open_clip_train checkpoint, DistributedDataParallel names
    torch.save({"epoch": 10, "state_dict": {"module.logit_scale": torch.ones(())}}, wrapped)
    assert list(load_pathclip_state_dict(wrapped)) == ["logit_scale"]


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint at all", "truncated-zip", "wrong-keys", "not-tensors"],
)
def test_bad_pathclip_weights_name_the_setting(tmp_path, settings, content):
    import torch

    path = tmp_path / "pathclip-base.pt"
    if content == "truncated-zip":
        torch.save({"a": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif content == "wrong-keys":
        torch.save({"visual.proj": torch.zeros(3)}, path)
    elif content == "not-tensors":
        torch.save({"a": "text"}, path)
    else:
        path.write_bytes(content)
    emb = image_embedder(settings.model_copy(update={"pathclip_weights": path}))
    with pytest.raises(WeightsError, match="PATHASST_PATHCLIP_WEIGHTS") as err:
        emb.embed_images([_ihc()[:64, :64]])
    assert str(path) in str(err.value)


def test_missing_pathclip_weights(settings, tmp_path):
    emb = image_embedder(settings.model_copy(update={"pathclip_weights": tmp_path / "nope.pt"}))
    with pytest.raises(WeightsError, match="not found: PATHASST_PATHCLIP_WEIGHTS"):
        emb.embed_images([_ihc()[:64, :64]])
    with pytest.raises(WeightsError, match="PATHASST_PATHCLIP_WEIGHTS"):
        emb.fingerprint()


def test_importing_memory_loads_no_heavy_module():
    """Importing the package (as the CLI and the review app do) loads neither torch, Chroma nor open_clip."""
    import subprocess
    import sys

    code = (
        "import sys, pathasst.memory, pathasst.core.embedders, pathasst.memory.store, pathasst.memory.library;"
        "heavy=[m for m in ('torch','chromadb','open_clip','sentence_transformers') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
