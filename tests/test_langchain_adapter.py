"""The LangChain adapter: typed args schema, content = planner summary, artifact = (record, result), never raises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from tool_helpers import example_arguments, loadable_tools, make_resolver, tool_registry

from pathasst.core.imaging import ImageData
from pathasst.tools.base import ToolCallRecord, ToolResult
from pathasst.tools.langchain_adapter import to_langchain_tool, to_langchain_tools
from pathasst.tools.mitosis_detection import MitosisDetectionTool
from pathasst.tools.region_segmentation import RegionSegmentationTool
from pathasst.tools.similar_cases import SimilarCasesTool

TOOLS, _ = loadable_tools()


@pytest.fixture(scope="module")
def resolver():
    from skimage import data

    return make_resolver({"ihc.png": ImageData(data.immunohistochemistry()[128:384, 128:384], name="ihc.png")})


def _tool_call(name: str, args: dict[str, Any], call_id: str = "call_abc123") -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def test_tool_call_returns_message_with_record_artifact(settings: Any, resolver) -> None:
    lc_tool = to_langchain_tool(RegionSegmentationTool(settings), resolver)
    msg = lc_tool.invoke(_tool_call("region_segmentation", {"image": "ihc.png", "point": [128, 128]}))
    assert isinstance(msg, ToolMessage)
    assert msg.tool_call_id == "call_abc123" and msg.name == "region_segmentation" and msg.status == "success"
    record, result = msg.artifact
    assert isinstance(record, ToolCallRecord) and isinstance(result, ToolResult)
    assert record.id == "call_abc123" and record.status == "ok"
    assert msg.content == record.summary and "area" in msg.content
    assert record.arguments == {"image": "ihc.png", "point": [128, 128]}  # raw arguments, as the planner sent them
    assert result.mask is not None and result.mask.shape == (256, 256) and result.mask[128, 128]
    assert record.output is not None and record.output["area_px"] == pytest.approx(float(result.mask.sum()))


def test_not_configured_tool_reports_through_content(settings: Any, resolver, tmp_path) -> None:
    tool = SimilarCasesTool(settings.model_copy(update={"chroma_path": tmp_path / "no_library"}))
    msg = to_langchain_tool(tool, resolver).invoke(_tool_call("similar_cases", {"image": "ihc.png"}))
    record, result = msg.artifact
    assert record.status == "not_configured" and msg.status == "success"
    assert "pathasst library add" in msg.content
    assert result is not None and result.output.status == "not_configured"


@pytest.mark.parametrize(
    "args,expect",
    [
        ({"image": "ihc.png", "point": [1, 2], "bogus": True}, "bogus"),
        ({"image": "ihc.png", "point": "middle"}, "point"),
        ({"image": "nope.png", "point": [1, 2]}, "nope.png"),
        ({"image": "ihc.png"}, "exactly one of point or box"),
    ],
)
def test_bad_calls_become_error_messages_not_exceptions(settings: Any, resolver, args: dict, expect: str) -> None:
    lc_tool = to_langchain_tool(RegionSegmentationTool(settings), resolver)
    msg = lc_tool.invoke(_tool_call("region_segmentation", args, "call_bad"))
    record, result = msg.artifact
    assert record.status == "bad_call" and result is None
    assert msg.status == "error" and msg.content == record.summary and expect in msg.content
    assert record.id == "call_bad"


def test_failed_call_is_an_error_message(settings: Any, resolver, tmp_path) -> None:
    bad = tmp_path / "sam.pth"
    bad.write_bytes(b"garbage" * 10)
    tool = RegionSegmentationTool(settings.model_copy(update={"sam_weights": bad}))
    call = _tool_call("region_segmentation", {"image": "ihc.png", "point": [5, 5]})
    msg = to_langchain_tool(tool, resolver).invoke(call)
    assert msg.status == "error" and msg.artifact[0].status == "failed" and "PATHASST_SAM_WEIGHTS" in msg.content


def test_plain_invoke_returns_the_summary(settings: Any, resolver) -> None:
    lc_tool = to_langchain_tool(MitosisDetectionTool(settings), resolver)
    out = lc_tool.invoke({"image": "ihc.png"})  # a DAB image: the embedded detector refuses to count, and says why
    assert out == ("mitosis_detection: not counted: not H&E (no eosin: IHC or another stain): "
                   "mitotic figures are counted on H&E only")


def test_async_invoke(settings: Any, resolver) -> None:
    lc_tool = to_langchain_tool(RegionSegmentationTool(settings), resolver)
    call = _tool_call("region_segmentation", {"image": "ihc.png", "box": [96, 96, 160, 160]})
    msg = asyncio.run(lc_tool.ainvoke(call))
    assert isinstance(msg, ToolMessage) and msg.artifact[0].status == "ok"


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_args_schema_is_the_input_model(name: str, settings: Any, resolver) -> None:
    cls = TOOLS[name]
    lc_tool = to_langchain_tool(cls(settings), resolver)
    assert isinstance(lc_tool, BaseTool)
    assert lc_tool.name == name and lc_tool.description == cls.description
    assert lc_tool.args_schema is cls.input_model
    assert lc_tool.response_format == "content_and_artifact"
    schema = cls.input_model.model_json_schema()
    # LangChain keeps the JSON-schema keywords and drops our planner hints (x-aliases: see tools/ihc_models.py)
    properties = {k: {key: v for key, v in p.items() if not key.startswith("x-")} for k, p in schema["properties"].items()}
    assert lc_tool.args == properties
    assert lc_tool.tool_call_schema.model_json_schema()["properties"] == properties
    msg = lc_tool.invoke(_tool_call(name, example_arguments(cls, "ihc.png")))
    assert msg.artifact[0].status in ("ok", "not_configured") and msg.content == msg.artifact[0].summary


def test_to_langchain_tools_wraps_the_registry(settings: Any, resolver) -> None:
    registry = tool_registry(TOOLS, settings)
    wrapped = to_langchain_tools(registry, resolver)
    assert [t.name for t in wrapped] == registry.names() == sorted(TOOLS)
    assert all(t.response_format == "content_and_artifact" for t in wrapped)
