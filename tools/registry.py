"""The tool registry, fed by the entry point group ``pathasst.tools``.

Registration fails loudly: a duplicate name or a class that breaks the contract is refused when registered, and an
unknown name answers with the list of valid names.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from pathasst.core.errors import DuplicateToolError, ToolError, UnknownToolError
from pathasst.core.settings import Settings
from pathasst.tools.base import PathologyTool, ToolInput, ToolOutput
from pathasst.tools.planning import PlanningHints

__all__ = ["ENTRY_POINT_GROUP", "ToolRegistry", "default_registry"]

ENTRY_POINT_GROUP = "pathasst.tools"


class ToolRegistry:
    """Tool classes by name; instances are created (lazily, once) with the registry's settings."""

    def __init__(self, settings: Settings | None = None) -> None:
        """``settings`` None: a registry that lists tools (names, classes, catalogue) but cannot run them."""
        self.settings = settings
        self._classes: dict[str, type[PathologyTool]] = {}
        self._instances: dict[str, PathologyTool] = {}

    def register(self, cls: type[PathologyTool]) -> type[PathologyTool]:
        _validate_tool_class(cls)
        if cls.name in self._classes and self._classes[cls.name] is not cls:
            raise DuplicateToolError(
                f"tool name {cls.name!r} registered twice: {_qual(self._classes[cls.name])} and {_qual(cls)}"
            )
        self._classes[cls.name] = cls
        return cls

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> ToolRegistry:
        seen: dict[str, str] = {}
        for ep in entry_points(group=group):
            if ep.name in seen and seen[ep.name] != ep.value:
                raise DuplicateToolError(f"entry point {ep.name!r} declared twice: {seen[ep.name]} and {ep.value}")
            seen[ep.name] = ep.value
            cls = ep.load()
            if getattr(cls, "name", None) != ep.name:
                raise ToolError(f"entry point {ep.name!r} loads {_qual(cls)} whose name is {getattr(cls, 'name', None)!r}")
            self.register(cls)
        return self

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __len__(self) -> int:
        return len(self._classes)

    def tool_class(self, name: str) -> type[PathologyTool]:
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownToolError(name, self.names()) from None

    def get(self, name: str) -> PathologyTool:
        cls = self.tool_class(name)
        if self.settings is None:
            raise ToolError(f"this registry has no settings, so it lists tools but cannot run {name!r}: build it with "
                            "pathasst.agent.system.build_system(settings) or ToolRegistry(settings)")
        if name not in self._instances:
            self._instances[name] = cls(self.settings)
        return self._instances[name]

    def tools(self) -> list[PathologyTool]:
        return [self.get(n) for n in self.names()]

    def catalogue(self) -> list[dict[str, Any]]:
        """Name, description, version, input and output schemas and planning hints of every tool (for planners, CLI
        and docs)."""
        return [
            {
                "name": c.name,
                "description": c.description,
                "version": c.version,
                "weights_setting": c.weights_setting,
                "input_schema": c.input_model.model_json_schema(),
                "output_schema": c.output_model.model_json_schema(),
                "planning": c.planning.model_dump(),
            }
            for c in (self._classes[n] for n in self.names())
        ]


def _qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _validate_tool_class(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, PathologyTool)):
        raise ToolError(f"{cls!r} is not a PathologyTool subclass")
    for attr in ("name", "description"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise ToolError(f"tool {_qual(cls)} has no {attr}")
    if not cls.name.isidentifier() or cls.name != cls.name.lower():
        raise ToolError(f"tool name {cls.name!r} must be a lower-case identifier")
    if not issubclass(cls.input_model, ToolInput):
        raise ToolError(f"tool {cls.name}: input_model must subclass ToolInput")
    if not issubclass(cls.output_model, ToolOutput):
        raise ToolError(f"tool {cls.name}: output_model must subclass ToolOutput")
    if not isinstance(getattr(cls, "planning", None), PlanningHints):
        raise ToolError(f"tool {cls.name}: planning must be a PlanningHints (pathasst.tools.planning)")
    if getattr(cls, "__abstractmethods__", None):
        raise ToolError(f"tool {cls.name}: abstract methods not implemented: {sorted(cls.__abstractmethods__)}")


def default_registry(settings: Settings | None = None) -> ToolRegistry:
    """A registry holding every tool installed under the ``pathasst.tools`` entry point group (without settings: for
    listing them only)."""
    return ToolRegistry(settings).load_entry_points()
