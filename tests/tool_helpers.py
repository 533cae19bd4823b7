"""Helpers shared by the tool tests: the tools the entry points load, test images, a resolver, example arguments."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

import numpy as np
from pydantic import ValidationError

from pathasst.core.errors import ToolCallError, ToolError
from pathasst.core.imaging import ImageData
from pathasst.core.regions import Region
from pathasst.tools.base import PathologyTool
from pathasst.tools.registry import ENTRY_POINT_GROUP, ToolRegistry

__all__ = [
    "EXPECTED_TOOLS",
    "HEAVY_MODULES",
    "example_arguments",
    "loadable_tools",
    "make_resolver",
    "tool_registry",
]

#: every tool the project's pyproject.toml registers
EXPECTED_TOOLS = (
    "ihc_quantification",
    "mitosis_detection",
    "nuclei_segmentation",
    "region_segmentation",
    "similar_cases",
    "slide_classification",
    "tissue_classification",
    "tissue_qc",
    "tumor_segmentation",
)

#: modules a tool may import only inside ``_load`` (never at import or construction)
HEAVY_MODULES = (
    "torch",
    "torchvision",
    "ultralytics",
    "open_clip",
    "segment_anything",
    "transformers",
    "timm",
    "llama_cpp",
    "chromadb",
)


def loadable_tools() -> tuple[dict[str, type[PathologyTool]], dict[str, str]]:
    """Tool classes of every entry point that loads and registers, and why the others did not.

    The strict check that *every* entry point loads is ``test_registry.test_entry_point_registry_holds_all_tools``;
    the contract tests run over whatever loads, so one broken tool does not hide the others' results.
    """
    registry = ToolRegistry()
    broken: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if getattr(cls, "name", None) != ep.name:
                raise ToolError(f"entry point {ep.name!r} loads a tool named {getattr(cls, 'name', None)!r}")
            registry.register(cls)
        except (ImportError, ToolError) as exc:
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
    return {n: registry.tool_class(n) for n in registry.names()}, broken


def tool_registry(classes: Mapping[str, type[PathologyTool]], settings: Any) -> ToolRegistry:
    registry = ToolRegistry(settings)
    for cls in classes.values():
        registry.register(cls)
    return registry


def make_resolver(images: Mapping[str, ImageData]) -> Callable[[str, Region | None, float | None], ImageData]:
    """A resolver over named in-memory images; unknown names raise ``ToolCallError`` as the real one does."""

    def resolve(name: str, region: Region | None, working_mpp: float | None) -> ImageData:
        if name not in images:
            raise ToolCallError(f"unknown image {name!r}; case images: {', '.join(sorted(images))}")
        img = images[name]
        if region is None:
            return img
        h, w = img.shape
        if region.x + region.width > w or region.y + region.height > h:
            raise ToolCallError(f"region {region.model_dump()} lies outside image {name!r} ({w}x{h})")
        pixels = np.array(img.pixels[region.y : region.y + region.height, region.x : region.x + region.width])
        return ImageData(pixels, name=name, mpp=img.mpp, origin=(float(region.x), float(region.y)))

    return resolve


def example_arguments(cls: type[PathologyTool], image: str) -> dict[str, Any]:
    """Valid arguments for ``cls`` on ``image``: its schema's first valid example, else just the image.

    A tool whose input needs more than ``image`` must declare
    ``model_config = ConfigDict(json_schema_extra={"examples": [...]})`` (examples also help planners); examples
    must fit a 256 x 256 image.
    """
    extra = cls.input_model.model_config.get("json_schema_extra")
    examples = list(extra.get("examples", [])) if isinstance(extra, dict) else []
    errors = []
    for ex in [*examples, {}]:
        args = {**ex, "image": image}
        try:
            cls.input_model.model_validate(args)
        except ValidationError as exc:
            errors.append(str(exc))
            continue
        return args
    raise AssertionError(
        f"{cls.name}: no valid example arguments; its input needs more than 'image', so declare "
        f"json_schema_extra={{'examples': [...]}} on the input model. Errors: {errors}"
    )
