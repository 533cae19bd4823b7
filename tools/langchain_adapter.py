"""Expose pathology tools to LangChain / LangGraph as ``StructuredTool`` objects.

The LangChain tool's ``args_schema`` is the tool's input model (so a chat model sees the typed schema), and its
response format is ``content_and_artifact``: the content is the short summary for the planner
(``ToolCallRecord.summary``), the artifact is ``(ToolCallRecord, ToolResult | None)`` for the trace and the case view.
Invoked with a ``ToolCall``, the result is a ``ToolMessage`` whose ``status`` is ``"error"`` for a bad or failed call.

Argument validation is left to :func:`pathasst.tools.base.call_tool`, the one place where errors are typed and
converted: LangChain's own validation would raise on a bad call instead of answering the planner with a ``bad_call``
record. Nothing is raised to LangChain for tool-side problems.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool

from pathasst.tools.base import ImageResolver, PathologyTool, ToolCallRecord, ToolResult, call_tool
from pathasst.tools.registry import ToolRegistry

__all__ = ["PathologyStructuredTool", "to_langchain_tool", "to_langchain_tools"]

Artifact = tuple[ToolCallRecord, ToolResult | None]


class PathologyStructuredTool(StructuredTool):
    """A ``StructuredTool`` that hands the raw arguments and the tool-call id to ``call_tool``.

    ``_parse_input`` is LangChain's hook between the incoming tool call and ``_run``; here it skips LangChain's
    validation (``call_tool`` validates against the same input model and turns errors into a ``bad_call`` record).
    """

    def _parse_input(self, tool_input: str | dict[str, Any], tool_call_id: str | None) -> dict[str, Any]:
        # a bare string is the first field, as LangChain itself treats it: the image name
        arguments = {"image": tool_input} if isinstance(tool_input, str) else dict(tool_input)
        return {"arguments": arguments, "call_id": tool_call_id}


def to_langchain_tool(tool: PathologyTool, resolver: ImageResolver) -> StructuredTool:
    """Wrap one pathology tool; ``resolver`` turns image names into pixels (raises ``ToolCallError`` if unknown)."""

    def _call(arguments: dict[str, Any], call_id: str | None = None) -> tuple[str | ToolMessage, Artifact]:
        record, result = call_tool(tool, arguments, resolver, call_id=call_id)
        artifact: Artifact = (record, result)
        if call_id is None:  # invoked with plain arguments: LangChain returns the content only
            return record.summary, artifact
        # invoked with a ToolCall: build the ToolMessage here so a bad or failed call is marked status="error"
        # (LangChain passes a returned ToolMessage through unchanged)
        message = ToolMessage(
            content=record.summary,
            artifact=artifact,
            tool_call_id=call_id,
            name=tool.name,
            status="error" if record.status in ("bad_call", "failed") else "success",
        )
        return message, artifact

    return PathologyStructuredTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.input_model,
        func=_call,
        response_format="content_and_artifact",
    )


def to_langchain_tools(registry: ToolRegistry, resolver: ImageResolver) -> list[StructuredTool]:
    """Every tool of ``registry``, wrapped, in name order."""
    return [to_langchain_tool(t, resolver) for t in registry.tools()]
