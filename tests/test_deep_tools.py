"""The deep tools' common behaviour: honest 'not configured', weights-file checks, clear errors for unusable weights."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from tool_helpers import make_resolver

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData
from pathasst.core.weights import check_weights_file, settings_env_var
from pathasst.tools.base import call_tool
from pathasst.tools.mitosis_detection import MitosisDetectionTool
from pathasst.tools.region_segmentation import RegionSegmentationTool
from pathasst.tools.similar_cases import SimilarCasesInput, SimilarCasesTool
from pathasst.tools.slide_classification import SlideClassificationTool
from pathasst.tools.tissue_classification import (
    CRC100K_LABELS,
    EBHI_LABELS,
    TissueClassificationInput,
    TissueClassificationTool,
)
from pathasst.tools.tumor_segmentation import TumorSegmentationTool

DEEP = [MitosisDetectionTool, TissueClassificationTool, TumorSegmentationTool, SlideClassificationTool]
MESSAGES = {
    "mitosis_detection": "not configured: set PATHASST_MITOSIS_WEIGHTS to a YOLO .pt file",
    "tissue_classification": "not configured: set PATHASST_PATHCLIP_WEIGHTS to the PathCLIP open_clip checkpoint "
    "(pathclip-base.pt)",
    "tumor_segmentation": "not configured: set PATHASST_TUMOR_SEG_WEIGHTS to a U-Net state dict "
    "(.pt, .pth or .safetensors)",
    "slide_classification": "not configured: set PATHASST_SLIDE_MIL_WEIGHTS to an ABMIL head state dict "
    "(.pt, .pth or .safetensors)",
}


@pytest.fixture(scope="module")
def resolver():
    rng = np.random.default_rng(0)
    return make_resolver({"x.png": ImageData(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), name="x.png")})


@pytest.fixture(scope="module")
def torch_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real torch.save files: the zip format (torch >= 1.6) and the legacy pickle format."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("ckpt")
    state = {"w": torch.zeros(3)}
    paths = {"zip": folder / "model.pt", "legacy": folder / "legacy.pth"}
    torch.save(state, paths["zip"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


def test_env_var_names() -> None:
    assert settings_env_var("mitosis_weights") == "PATHASST_MITOSIS_WEIGHTS"
    assert settings_env_var("sam_weights") == "PATHASST_SAM_WEIGHTS"


#: the backend each tool's embedded (shipped) weights answer with when its setting is empty
EMBEDDED = {"mitosis_detection": "mitosis_net", "tissue_classification": "tissue_net",
            "tumor_segmentation": "tissue_net", "slide_classification": "abmil_hed_texture"}


@pytest.mark.parametrize("cls", DEEP, ids=lambda c: c.name)
def test_unconfigured_tool_answers_with_its_shipped_weights(cls: Any, settings: Any, resolver) -> None:
    tool = cls(settings)
    assert tool.configured_weights() is None and tool.shipped_weights() is not None
    record, result = call_tool(tool, {"image": "x.png"}, resolver)
    assert record.status == "ok", record.error
    assert result.output.backend == EMBEDDED[cls.name]
    assert record.model["weights"] is None and record.model["shipped_weights"].startswith("pathasst/tools/weights/")


@pytest.mark.parametrize("cls", DEEP, ids=lambda c: c.name)
def test_without_shipped_weights_a_tool_answers_not_configured_without_numbers(
    cls: Any, settings: Any, resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cls, "shipped_weights", lambda self: None)
    record, result = call_tool(cls(settings), {"image": "x.png"}, resolver)
    assert record.status == "not_configured"
    out = result.output
    assert out.message == MESSAGES[cls.name] and out.backend == "none"
    assert record.summary == f"{cls.name}: not_configured: {MESSAGES[cls.name]}"
    measured = {k: v for k, v in out.model_dump().items() if k not in ("status", "message", "backend")}
    assert all(v in (None, [], {}) for k, v in measured.items() if k not in ("labels", "prompt_template")), measured
    assert result.labels is None and result.mask is None and result.overlay is None and result.features == []


def test_tissue_classification_label_sets(settings: Any, resolver) -> None:
    assert len(CRC100K_LABELS) == 9 and "colorectal adenocarcinoma epithelium" in CRC100K_LABELS
    _, result = call_tool(TissueClassificationTool(settings), {"image": "x.png"}, resolver)
    assert result.output.labels == list(EBHI_LABELS) and result.output.head == "embedded"
    args = {"image": "x.png", "labels": [" tumour ", "stroma"]}
    _, result = call_tool(TissueClassificationTool(settings), args, resolver)
    assert result.output.labels == list(EBHI_LABELS)  # free labels need PathCLIP: the six classes answer, and say so
    assert "free labels need PathCLIP (PATHASST_PATHCLIP_WEIGHTS" in result.output.message
    assert TissueClassificationInput.model_validate(args).label_set() == ["tumour", "stroma"]
    assert TissueClassificationInput.model_validate({"image": "x", "preset": "ebhi"}).label_set() == list(EBHI_LABELS)


@pytest.mark.parametrize(
    "args,message",
    [
        ({"labels": ["a", "b"], "preset": "crc100k"}, "either labels or preset"),
        ({"labels": ["tumour", "Tumour"]}, "distinct"),
        ({"labels": ["tumour", "  "]}, "non-empty"),
        ({"labels": ["tumour"]}, "at least 2"),
        ({"preset": "kather"}, "'crc100k' or 'ebhi'"),
    ],
)
def test_tissue_classification_input_validation(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TissueClassificationInput.model_validate({"image": "x.png", **args})


def test_similar_cases_not_configured(settings: Any, resolver) -> None:
    record, result = call_tool(SimilarCasesTool(settings), {"image": "x.png", "k": 3}, resolver)
    assert record.status == "not_configured" and result.output.cases == []
    assert result.output.message == "case library not configured: run `pathasst library add CASES_DIR`"
    for bad in ({"k": 0}, {"k": 21}, {"where": {"$and": [1]}}):
        record, _ = call_tool(SimilarCasesTool(settings), {"image": "x.png", **bad}, resolver)
        assert record.status == "bad_call", bad
    where = {"organ": "colon", "year": 2020}
    assert SimilarCasesInput(image="x.png", where=where).where == where


# ---- weights-file checks --------------------------------------------------------------------------------------------
def test_real_torch_checkpoints_pass_the_check(torch_checkpoints: dict[str, Path]) -> None:
    assert check_weights_file(torch_checkpoints["zip"], "mitosis_weights", (".pt",)) == "torch"
    assert check_weights_file(torch_checkpoints["legacy"], "sam_weights", (".pth",)) == "torch"


def test_safetensors_file_passes_the_check(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path = tmp_path / "unet.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 4)
    assert check_weights_file(path, "tumor_seg_weights", (".pt", ".safetensors")) == "safetensors"
    wrong = tmp_path / "unet.pt"
    wrong.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="looks like a safetensors file"):
        check_weights_file(wrong, "tumor_seg_weights", (".pt", ".safetensors"))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "weights file not found"),
        (lambda p: p.mkdir(), "not a file"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100), "unrecognised or corrupt"),
        (lambda p: zipfile.ZipFile(p, "w").writestr("readme.txt", "not torch"), "unrecognised or corrupt"),
    ],
    ids=["missing", "directory", "empty", "png", "zip-without-data.pkl"],
)
def test_bad_weights_files_raise_weights_error_naming_the_setting(tmp_path: Path, make: Any, message: str) -> None:
    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(WeightsError, match=message) as info:
        check_weights_file(path, "mitosis_weights", (".pt",))
    assert "PATHASST_MITOSIS_WEIGHTS (mitosis_weights)" in str(info.value) and str(path) in str(info.value)


def test_wrong_suffix_lists_accepted_suffixes(tmp_path: Path) -> None:
    path = tmp_path / "weights.onnx"
    path.write_bytes(b"x" * 10)
    with pytest.raises(WeightsError, match=r"expected one of \.pt, \.pth"):
        check_weights_file(path, "tumor_seg_weights", (".pt", ".pth"))


#: what each backend says of a valid torch file that is not its model
NOT_THE_MODEL = {
    "mitosis_detection": "not an ultralytics YOLO checkpoint",
    "tissue_classification": "do not fit open_clip ViT-B-16",
    "tumor_segmentation": "lack 'classes'",
    "slide_classification": "lack 'labels'",
    "region_segmentation": "not a segment-anything checkpoint",
}


@pytest.mark.parametrize("cls", [*DEEP, RegionSegmentationTool], ids=lambda c: c.name)
def test_valid_torch_file_that_is_not_the_model_fails_clearly(
    cls: Any, settings: Any, resolver, torch_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    suffix = cls.weights_suffixes[0]
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(torch_checkpoints["zip"].read_bytes())
    tool = cls(settings.model_copy(update={cls.weights_setting: path}))
    args = {"image": "x.png", "point": [32, 32]} if cls is RegionSegmentationTool else {"image": "x.png"}
    record, result = call_tool(tool, args, resolver)
    assert record.status == "failed" and result is None
    assert NOT_THE_MODEL[cls.name] in (record.error or ""), record.error
    assert settings_env_var(cls.weights_setting) in (record.error or "") and str(path) in (record.error or "")
    assert tool._loaded is False
