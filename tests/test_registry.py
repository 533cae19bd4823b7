"""The tool registry: explicit, fails loudly (duplicates, unknown names, classes that break the contract)."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest
from tool_helpers import EXPECTED_TOOLS

from pathasst.core.errors import DuplicateToolError, ToolCallError, ToolError, UnknownToolError
from pathasst.core.imaging import ImageData
from pathasst.tools import registry as registry_module
from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput, ToolResult
from pathasst.tools.registry import ENTRY_POINT_GROUP, ToolRegistry, default_registry


class _Echo(PathologyTool):
    name: ClassVar[str] = "echo"
    description: ClassVar[str] = "Echoes the image size; a test tool that exists only in the registry tests."

    def analyze(self, image: ImageData, args: ToolInput) -> ToolResult:
        return ToolResult(output=ToolOutput(message=f"{image.shape}"))


class _OtherEcho(_Echo):
    """Same name, different class."""


class _Count(_Echo):
    name: ClassVar[str] = "count"


def test_register_and_get_instance_once(settings: Any) -> None:
    reg = ToolRegistry(settings)
    reg.register(_Echo)
    reg.register(_Echo)  # the same class again is harmless
    assert reg.names() == ["echo"] and len(reg) == 1 and "echo" in reg
    tool = reg.get("echo")
    assert isinstance(tool, _Echo) and tool.settings is settings
    assert reg.get("echo") is tool


def test_duplicate_name_is_rejected() -> None:
    reg = ToolRegistry()
    reg.register(_Echo)
    with pytest.raises(DuplicateToolError, match="'echo' registered twice"):
        reg.register(_OtherEcho)
    assert reg.tool_class("echo") is _Echo


def test_unknown_name_lists_valid_names() -> None:
    reg = ToolRegistry()
    reg.register(_Echo)
    reg.register(_Count)
    with pytest.raises(UnknownToolError) as info:
        reg.get("ecoh")
    assert str(info.value) == "unknown tool 'ecoh'; valid tools: count, echo"
    assert isinstance(info.value, ToolCallError) and isinstance(info.value, KeyError)
    assert info.value.valid == ["count", "echo"]


@pytest.mark.parametrize(
    "bad,message",
    [
        (object, "not a PathologyTool subclass"),
        (type("Plain", (), {"name": "plain", "description": "x" * 50}), "not a PathologyTool subclass"),
        (type("Upper", (_Echo,), {"name": "Upper"}), "lower-case identifier"),
        (type("Dash", (_Echo,), {"name": "my-tool"}), "lower-case identifier"),
        (type("NoDesc", (_Echo,), {"name": "nodesc", "description": ""}), "has no description"),
        (type("BadIn", (_Echo,), {"name": "badin", "input_model": ToolOutput}), "input_model must subclass"),
        (type("BadOut", (_Echo,), {"name": "badout", "output_model": ToolInput}), "output_model must subclass"),
    ],
)
def test_contract_breaking_classes_are_rejected(bad: Any, message: str) -> None:
    reg = ToolRegistry()
    with pytest.raises(ToolError, match=message):
        reg.register(bad)
    assert len(reg) == 0


def test_abstract_tool_is_rejected() -> None:
    abstract = type("Abstract", (PathologyTool,), {"name": "abstract", "description": "d" * 50})
    with pytest.raises(ToolError, match="abstract methods not implemented"):
        ToolRegistry().register(abstract)


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: list[EntryPoint]) -> None:
    def fake(*, group: str) -> list[EntryPoint]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry_module, "entry_points", fake)


def test_entry_point_name_must_match_tool_name(monkeypatch: pytest.MonkeyPatch) -> None:
    value = "pathasst.tools.mitosis_detection:MitosisDetectionTool"
    _fake_entry_points(monkeypatch, [EntryPoint(name="mitosis", value=value, group=ENTRY_POINT_GROUP)])
    with pytest.raises(ToolError, match="'mitosis' loads .* whose name is 'mitosis_detection'"):
        ToolRegistry().load_entry_points()


def test_entry_point_declared_twice_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        EntryPoint("similar_cases", "pathasst.tools.similar_cases:SimilarCasesTool", ENTRY_POINT_GROUP),
        EntryPoint("similar_cases", "other.module:SimilarCasesTool", ENTRY_POINT_GROUP),
    ]
    _fake_entry_points(monkeypatch, eps)
    with pytest.raises(DuplicateToolError, match="declared twice"):
        ToolRegistry().load_entry_points()


def test_entry_point_registry_holds_all_tools(settings: Any) -> None:
    reg = default_registry(settings)
    assert reg.names() == sorted(EXPECTED_TOOLS)
    catalogue = reg.catalogue()
    assert [c["name"] for c in catalogue] == sorted(EXPECTED_TOOLS)
    for entry in catalogue:
        assert entry["input_schema"]["properties"]["image"]
        assert entry["output_schema"]["properties"]["status"]
    assert [t.name for t in reg.tools()] == sorted(EXPECTED_TOOLS)


def test_tools_run_only_with_explicit_settings() -> None:
    """No hidden fallback to the environment deep in the tools: a registry without settings lists and describes its
    tools, but running one needs the settings (front ends pass them through build_system)."""
    reg = ToolRegistry()
    reg.register(_Echo)
    assert reg.names() == ["echo"] and reg.catalogue()[0]["name"] == "echo"
    with pytest.raises(ToolError, match="has no settings.*cannot run 'echo'"):
        reg.get("echo")
    with pytest.raises(ToolError, match="echo needs the settings"):
        _Echo(None)
