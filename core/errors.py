"""Typed tool errors, and the one place where they become planner-readable messages.

``ToolCallError``: the planner called a tool wrongly (unknown tool, bad arguments, unknown image).
``ToolExecutionError``: the call was valid but the tool failed while running.
A tool whose weights are not configured is not an error: it returns a typed ``not_configured`` output.
"""

from __future__ import annotations

__all__ = [
    "CallTimeoutError",
    "DuplicateToolError",
    "ToolCallError",
    "ToolError",
    "ToolExecutionError",
    "UnknownToolError",
    "WeightsError",
    "to_planner_message",
]


class ToolError(Exception):
    """Base class of every tool error."""


class ToolCallError(ToolError):
    """The planner called a tool wrongly; it can fix the call and try again."""


class UnknownToolError(ToolCallError, KeyError):
    """No tool of that name is registered. The message lists the valid names."""

    def __init__(self, name: str, valid: list[str]):
        self.name = name
        self.valid = sorted(valid)
        super().__init__(f"unknown tool {name!r}; valid tools: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DuplicateToolError(ToolError):
    """Two registrations used the same tool name."""


class ToolExecutionError(ToolError):
    """A valid call failed inside the tool."""


class CallTimeoutError(ToolExecutionError):
    """A call ran past its time limit and was stopped (``PATHASST_CALL_TIMEOUT_S``)."""


class WeightsError(ToolExecutionError):
    """A configured weights file is missing, corrupt or of the wrong kind. The message names the setting."""


def to_planner_message(tool: str, exc: BaseException) -> str:
    """Turn any tool-side exception into one short message the planner can act on."""
    if isinstance(exc, ToolCallError):
        return f"ERROR bad call to {tool}: {exc}. Fix the arguments or choose another tool."
    if isinstance(exc, ToolExecutionError):
        return f"ERROR {tool} failed: {exc}. Do not retry the same call; report the failure."
    return f"ERROR {tool} failed unexpectedly ({type(exc).__name__}: {exc}). Report the failure."
