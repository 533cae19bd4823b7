"""The tool contract, checked for every tool the ``pathasst.tools`` entry points register (no per-tool code)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel
from tool_helpers import HEAVY_MODULES, example_arguments, loadable_tools, make_resolver

from pathasst.core.imaging import ImageData
from pathasst.tools.base import PathologyTool, ToolCallRecord, ToolInput, ToolOutput, ToolResult, call_tool

TOOLS, BROKEN = loadable_tools()
NAMES = sorted(TOOLS)
WEIGHTED = [n for n in NAMES if TOOLS[n].weights_setting]
BASE_OUTPUT_FIELDS = set(ToolOutput.model_fields)
GARBAGE = b"this is not a checkpoint\n" * 40


def _env_var(setting: str) -> str:
    return f"PATHASST_{setting.upper()}"


@pytest.fixture(scope="module")
def images() -> dict[str, ImageData]:
    """A real 256 x 256 DAB IHC crop (scikit-image), always available."""
    from skimage import data

    return {"ihc.png": ImageData(data.immunohistochemistry()[128:384, 128:384], name="ihc.png")}


@pytest.fixture(scope="module")
def he_image(shared_data: Path) -> ImageData:
    """A real 256 x 256 H&E CoNSeP tile at 40x (0.25 um/px)."""
    from PIL import Image

    path = shared_data / "consep_train" / "images" / "train_10_000.jpg"
    return ImageData(np.asarray(Image.open(path).convert("RGB")), name="he.png", mpp=0.25)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models nested anywhere in a type annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _undescribed(model: type[BaseModel], seen: set[type] | None = None) -> list[str]:
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    missing = []
    for fname, field in model.model_fields.items():
        if not (field.description and field.description.strip()):
            missing.append(f"{model.__name__}.{fname}")
        for sub in _models_in(field.annotation):
            missing += _undescribed(sub, seen)
    return missing


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return []


def _tool(name: str, settings: Any, **update: Any) -> PathologyTool:
    return TOOLS[name](settings.model_copy(update=update) if update else settings)


# ---- static contract ------------------------------------------------------------------------------------------
def test_some_tools_load() -> None:
    assert NAMES, f"no tool entry point loads: {BROKEN}"


@pytest.mark.parametrize("name", NAMES)
def test_name_is_identifier_matching_entry_point(name: str) -> None:
    cls = TOOLS[name]
    assert cls.name == name
    assert cls.name.isidentifier() and cls.name == cls.name.lower()


@pytest.mark.parametrize("name", NAMES)
def test_description_is_planner_quality(name: str) -> None:
    desc = TOOLS[name].description
    assert isinstance(desc, str) and len(desc.strip()) > 40, desc
    assert desc.strip() != (TOOLS[name].__doc__ or "").strip()


@pytest.mark.parametrize("name", NAMES)
def test_every_field_has_a_description(name: str) -> None:
    cls = TOOLS[name]
    missing = _undescribed(cls.input_model) + _undescribed(cls.output_model)
    assert not missing, f"fields without a description: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_schemas_generate_and_keep_base_fields(name: str) -> None:
    cls = TOOLS[name]
    assert issubclass(cls.input_model, ToolInput) and issubclass(cls.output_model, ToolOutput)
    schema_in = cls.input_model.model_json_schema()
    schema_out = cls.output_model.model_json_schema(mode="serialization")
    json.dumps(schema_in), json.dumps(schema_out)
    assert {"image", "region"} <= set(schema_in["properties"])
    assert "image" in schema_in["required"]
    assert schema_in.get("additionalProperties") is False, "input models must forbid unknown arguments"
    assert {"status", "message", "backend"} <= set(schema_out["properties"])
    assert schema_in == cls.json_schema()


# ---- lifecycle ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heavy_imports() -> dict[str, list[str]]:
    """Heavy modules each tool pulls in at import + construction, measured in a fresh interpreter."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from importlib.metadata import entry_points
        from pathasst.core.settings import Settings
        heavy = {HEAVY_MODULES!r}
        settings = Settings(_env_file=None)
        out = {{}}
        for ep in entry_points(group="pathasst.tools"):
            before = {{m for m in heavy if m in sys.modules}}
            try:
                cls = ep.load()
            except ImportError:
                continue
            cls(settings)
            out[ep.name] = sorted({{m for m in heavy if m in sys.modules}} - before)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NAMES)
def test_import_and_construction_are_light(name: str, heavy_imports: dict[str, list[str]]) -> None:
    assert name in heavy_imports
    assert heavy_imports[name] == [], f"{name} imports {heavy_imports[name]} at import/construction; do it in _load"


@pytest.mark.parametrize("name", WEIGHTED)
def test_construction_does_not_load_weights(name: str, settings: Any, tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(GARBAGE)
    tool = _tool(name, settings, **{TOOLS[name].weights_setting: bad})  # must not touch the file
    assert tool._loaded is False
    assert tool.weights_path() == bad


# ---- calls through call_tool --------------------------------------------------------------------------------
BAD_CALLS = [
    pytest.param({}, "image", id="missing-image"),
    pytest.param({"image": "ihc.png", "no_such_argument": 1}, "no_such_argument", id="unknown-argument"),
    pytest.param(
        {"image": "ihc.png", "region": {"x": -5, "y": 0, "width": 10, "height": 10}}, "region.x", id="bad-region"
    ),
]


@pytest.mark.parametrize("arguments,field", BAD_CALLS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_give_bad_call_naming_the_field(
    name: str, arguments: dict[str, Any], field: str, settings: Any, images: dict[str, ImageData]
) -> None:
    record, result = call_tool(_tool(name, settings), arguments, make_resolver(images), call_id="call_bad")
    assert record.status == "bad_call"
    assert result is None and record.output is None
    assert record.id == "call_bad" and record.tool == name
    assert field in record.summary and field in (record.error or "")
    assert record.summary.startswith(f"ERROR bad call to {name}")


@pytest.mark.parametrize("name", NAMES)
def test_unknown_image_gives_bad_call(name: str, settings: Any, images: dict[str, ImageData]) -> None:
    args = example_arguments(TOOLS[name], "missing.png")
    record, result = call_tool(_tool(name, settings), args, make_resolver(images))
    assert record.status == "bad_call" and result is None
    assert "missing.png" in record.summary and "ihc.png" in record.summary


def _check_result(name: str, record: ToolCallRecord, result: ToolResult | None, image: ImageData) -> None:
    cls = TOOLS[name]
    assert record.status in ("ok", "not_configured"), record.summary
    assert result is not None
    out = cls.output_model.model_validate(record.output)
    assert out == result.output and isinstance(result.output, cls.output_model)
    assert out.status == record.status
    assert isinstance(record.summary, str) and record.summary.strip()
    assert json.loads(json.dumps(record.summary)) == record.summary
    json.dumps(record.model_dump(mode="json"))
    assert record.model is not None and record.model["version"] == cls.version
    assert record.image == image.name and record.tool_version == cls.version
    if out.status == "not_configured":
        assert out.message, "a not_configured output must say what to configure"
        if cls.weights_setting:
            assert _env_var(cls.weights_setting) in out.message
        measured = out.model_dump(exclude=BASE_OUTPUT_FIELDS)
        assert _numbers(measured) == [], f"not_configured output carries numbers: {measured}"
        assert out.message in record.summary
        return
    h, w = image.shape
    for arr in (result.labels, result.mask):
        assert arr is None or arr.shape == (h, w)
    assert result.overlay is None or (result.overlay.shape == (h, w, 3) and result.overlay.dtype == np.uint8)
    if cls.segmentation:  # a label map (0 = background) that tools predict can write; it may hold no object
        assert result.labels is not None and result.labels.dtype.kind in "iu" and result.labels.min() >= 0
    for feat in result.features:
        assert feat["type"] == "Feature" and "properties" in feat
        json.dumps(feat)
        if feat["geometry"]["type"] == "Polygon":
            ring = feat["geometry"]["coordinates"][0]
            assert len(ring) >= 4 and ring[0] == ring[-1], "polygon rings must be closed"


@pytest.mark.parametrize("name", NAMES)
def test_call_on_real_ihc_image(name: str, settings: Any, images: dict[str, ImageData]) -> None:
    args = example_arguments(TOOLS[name], "ihc.png")
    record, result = call_tool(_tool(name, settings), args, make_resolver(images))
    _check_result(name, record, result, images["ihc.png"])


@pytest.mark.data
@pytest.mark.parametrize("name", NAMES)
def test_call_on_real_he_tile(name: str, settings: Any, he_image: ImageData) -> None:
    args = example_arguments(TOOLS[name], "he.png")
    record, result = call_tool(_tool(name, settings), args, make_resolver({"he.png": he_image}))
    _check_result(name, record, result, he_image)


# ---- weights ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [GARBAGE, b""], ids=["corrupt", "empty"])
@pytest.mark.parametrize("name", WEIGHTED)
def test_bad_weights_file_fails_naming_the_env_var(
    name: str, content: bytes, settings: Any, images: dict[str, ImageData], tmp_path: Path
) -> None:
    setting = TOOLS[name].weights_setting
    bad = tmp_path / "weights.pt"
    bad.write_bytes(content)
    tool = _tool(name, settings, **{setting: bad})
    record, result = call_tool(tool, example_arguments(TOOLS[name], "ihc.png"), make_resolver(images))
    assert record.status == "failed" and result is None
    assert _env_var(setting) in (record.error or "") and _env_var(setting) in record.summary
    assert str(bad) in (record.error or "")


@pytest.mark.parametrize("name", WEIGHTED)
def test_missing_weights_file_fails_naming_the_env_var(
    name: str, settings: Any, images: dict[str, ImageData], tmp_path: Path
) -> None:
    setting = TOOLS[name].weights_setting
    tool = _tool(name, settings, **{setting: tmp_path / "nowhere" / "weights.pt"})
    record, _ = call_tool(tool, example_arguments(TOOLS[name], "ihc.png"), make_resolver(images))
    assert record.status == "failed"
    assert _env_var(setting) in (record.error or "") and "not found" in (record.error or "")


@pytest.mark.parametrize("name", NAMES)
def test_model_info_reports_version_and_checksum(name: str, settings: Any, tmp_path: Path) -> None:
    cls = TOOLS[name]
    info = _tool(name, settings).model_info()
    assert info["tool"] == name and info["version"] == cls.version
    assert info["weights"] is None and info["weights_sha256"] is None
    if cls.weights_setting:
        path = tmp_path / "weights.pt"
        path.write_bytes(GARBAGE)
        info = _tool(name, settings, **{cls.weights_setting: path}).model_info()
        assert info["version"] == cls.version and info["weights"] == str(path)
        assert info["weights_sha256"] == hashlib.sha256(GARBAGE).hexdigest()
