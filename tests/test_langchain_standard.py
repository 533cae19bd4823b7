"""LangChain's standard tool tests (langchain-tests) for every registry tool, wrapped by ``to_langchain_tool``.

``ToolsUnitTests`` and ``ToolsIntegrationTests`` run for all tools of the default registry (the classes are
parametrised over the registry, so a new tool is covered with no extra code beyond its example arguments). The
integration tests invoke each tool on a real image through the project's real resolver (``CaseImageResolver`` over
a PNG in a temporary case folder); deep tools without configured weights answer "not configured", which is a valid
ToolMessage too. ``tissue_qc`` and ``nuclei_segmentation`` are also checked value by value against ``call_tool``.

The async standard tests need pytest-asyncio: ``pytestmark`` below marks this module's tests for it (and silences
its "sync test marked asyncio" note, since the mark must cover the inherited async tests), so the file runs the
same with or without ``asyncio_mode = "auto"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import ToolMessage
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests
from PIL import Image
from tool_helpers import EXPECTED_TOOLS

from pathasst.tools.base import PathologyTool, call_tool
from pathasst.tools.langchain_adapter import to_langchain_tool
from pathasst.tools.registry import ToolRegistry, default_registry

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .*> is marked with '@pytest.mark.asyncio' but it is not"),
]

IMAGE = "ihc.png"
#: the installed tools (classes only: nothing is constructed or loaded at collection)
TOOL_NAMES = ToolRegistry().load_entry_points().names()
#: a valid call of every tool on the 256 x 256 test image, each setting a parameter of its own
EXAMPLES: dict[str, dict[str, Any]] = {
    "ihc_quantification": {"image": IMAGE, "mode": "er_pr"},
    "mitosis_detection": {"image": IMAGE, "min_score": 0.3},
    "nuclei_segmentation": {"image": IMAGE, "method": "deconvolution", "min_area_px": 12},
    "region_segmentation": {"image": IMAGE, "point": [128, 128], "max_radius_px": 64},
    "similar_cases": {"image": IMAGE, "k": 3, "where": {"stain": "H&E"}},
    "slide_classification": {"image": IMAGE, "top_k_tiles": 3},
    "tissue_classification": {"image": IMAGE, "preset": "crc100k"},
    "tissue_qc": {"image": IMAGE, "blur_threshold": 25.0, "region": {"x": 0, "y": 0, "width": 192, "height": 160}},
    "tumor_segmentation": {"image": IMAGE, "heatmap_class": "stroma"},
}
#: tools invoked by the integration tests: all of them (deep tools without weights answer "not configured")
INTEGRATION_TOOLS = tuple(TOOL_NAMES)
#: classical tools whose outputs are compared with a direct ``call_tool``
DIRECT_TOOLS = ("nuclei_segmentation", "tissue_qc")


@pytest.fixture(scope="module")
def case_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real H&E/DAB crop saved as a PNG in a one-image case folder."""
    from skimage import data

    path = tmp_path_factory.mktemp("case") / IMAGE
    Image.fromarray(data.immunohistochemistry()[128:384, 128:384]).save(path)
    return path


@pytest.fixture()
def real_parts(settings: Any, case_image: Path):
    """(registry, resolver): the default registry and the project's resolver for the case image (mpp 0.5)."""
    from pathasst.core.cases import CaseMeta, single_image_case
    from pathasst.core.readers import CaseImageResolver

    case = single_image_case(case_image, CaseMeta(stain="H&E", mpp=0.5), settings)
    resolver = CaseImageResolver(case, settings)
    yield default_registry(settings), resolver
    resolver.close()


class _AdapterParams:
    """``tool_constructor`` is the adapter itself: ``to_langchain_tool(tool=..., resolver=...)``."""

    _name: str
    _parts: tuple[ToolRegistry, Any]

    @property
    def tool_constructor(self):
        return to_langchain_tool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        registry, resolver = self._parts
        return {"tool": registry.get(self._name), "resolver": resolver}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return dict(EXAMPLES[self._name])


class TestToolsUnitStandard(_AdapterParams, ToolsUnitTests):
    @pytest.fixture(autouse=True, params=TOOL_NAMES)
    def _tool_under_test(self, request: pytest.FixtureRequest, real_parts) -> None:
        self._name, self._parts = request.param, real_parts


class TestToolsIntegrationStandard(_AdapterParams, ToolsIntegrationTests):
    @pytest.fixture(autouse=True, params=INTEGRATION_TOOLS)
    def _tool_under_test(self, request: pytest.FixtureRequest, real_parts) -> None:
        self._name, self._parts = request.param, real_parts


# ---- what the standard tests do not check ------------------------------------------------------------------------
def test_standard_tests_cover_every_registry_tool(settings: Any) -> None:
    assert TOOL_NAMES == default_registry(settings).names() == sorted(EXPECTED_TOOLS) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_examples_validate_against_the_tool_input_model(name: str, settings: Any) -> None:
    cls: type[PathologyTool] = default_registry(settings).tool_class(name)
    args = cls.input_model.model_validate(EXAMPLES[name])
    assert args.image == IMAGE
    # every example sets something beyond the image, so the schema is exercised past its defaults
    assert args.model_dump(exclude_defaults=True).keys() - {"image"}


@pytest.mark.parametrize("name", DIRECT_TOOLS)
def test_tool_call_equals_a_direct_call(name: str, real_parts) -> None:
    """The ToolMessage's content and artifact are what ``call_tool`` gives for the same arguments."""
    registry, resolver = real_parts
    lc_tool = to_langchain_tool(registry.get(name), resolver)
    msg = lc_tool.invoke({"name": name, "args": EXAMPLES[name], "id": "call_std1", "type": "tool_call"})
    assert isinstance(msg, ToolMessage) and msg.status == "success" and msg.tool_call_id == "call_std1"
    record, result = msg.artifact
    direct, direct_result = call_tool(registry.get(name), EXAMPLES[name], resolver)
    assert record.status == direct.status == "ok" and msg.content == record.summary == direct.summary
    assert record.output == direct.output
    if name == "nuclei_segmentation":
        assert record.output["count"] == len(np.unique(result.labels)) - 1 > 20
        assert np.array_equal(result.labels, direct_result.labels)
    else:  # tissue_qc on the 192 x 160 region
        assert result.mask.shape == (160, 192)
        assert record.output["tissue_fraction"] == pytest.approx(float(result.mask.mean()), abs=1e-3)
    assert lc_tool.invoke(EXAMPLES[name]) == direct.summary  # plain arguments: the summary only


def test_every_tool_answers_through_the_adapter(real_parts) -> None:
    """Every sub-model measures on its embedded default; the case library, when absent, says how to build it."""
    registry, resolver = real_parts
    statuses = {}
    for name in TOOL_NAMES:
        msg = to_langchain_tool(registry.get(name), resolver).invoke(
            {"name": name, "args": EXAMPLES[name], "id": f"call_{name}", "type": "tool_call"}
        )
        record, _ = msg.artifact
        assert msg.status == "success" and msg.content == record.summary and record.id == f"call_{name}"
        statuses[name] = record.status
        if record.status == "not_configured":
            assert "PATHASST_" in msg.content or "pathasst library add" in msg.content, msg.content
    assert {n for n, s in statuses.items() if s == "ok"} == {
        "ihc_quantification", "nuclei_segmentation", "region_segmentation", "tissue_qc", "mitosis_detection",
        "tissue_classification", "tumor_segmentation", "slide_classification",
    }
    assert set(statuses.values()) == {"ok", "not_configured"}
