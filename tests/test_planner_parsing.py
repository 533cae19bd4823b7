"""parse_plan: messy planner output -> a valid PlanDecision, or PlannerOutputError with a message; never another error."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from pydantic import ConfigDict, Field

from pathasst.planning.base import PlanDecision, PlannerContext, PlannerOutputError
from pathasst.planning.parsing import (
    context_arguments,
    extract_json,
    parse_plan,
    question_coordinates,
    validate_arguments,
)
from pathasst.tools.base import ToolInput
from pathasst.tools.ihc_models import MODE_ALIASES
from pathasst.tools.registry import default_registry


class _RequiredModeInput(ToolInput):
    """A required enum with no default (the real ihc_quantification defaults its mode)."""

    mode: Literal["ki67", "er_pr", "pdl1"] = Field(..., description="Marker.",
                                                json_schema_extra={"x-aliases": MODE_ALIASES})


class _PointOrBoxInput(ToolInput):
    """``anyOf`` required point | box (the real region_segmentation checks this in its validator only)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [{"required": ["point"]}, {"required": ["box"]}]})
    point: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] | None = Field(None, description="[x, y].")
    box: tuple[
        Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]
    ] | None = Field(None, description="[x0, y0, x1, y1].")


# the installed tools as planners see them, with two input schemas given shapes the parser must handle
_SHAPES = {"ihc_quantification": _RequiredModeInput, "region_segmentation": _PointOrBoxInput}
CATALOGUE = [
    {**t, "input_schema": _SHAPES[t["name"]].model_json_schema()} if t["name"] in _SHAPES else t
    for t in default_registry().catalogue()
]
SCHEMAS = {t["name"]: t["input_schema"] for t in CATALOGUE}


def ctx(question: str = "Analyse the case", stain: str | None = "H&E", images: list[str] | None = None, **kw) -> PlannerContext:
    return PlannerContext(
        question=question, stain=stain, images=["a.png"] if images is None else images, catalogue=CATALOGUE, **kw
    )


def calls(decision: PlanDecision) -> list[tuple[str, dict]]:
    return [(c.tool, c.arguments) for c in decision.calls]


def test_fenced_json_with_prose_around():
    raw = 'Sure, here is the plan:\n```json\n{"tools": ["nuclei_segmentation"]}\n```\nLet me know!'
    d = parse_plan(raw, ctx())
    assert d.action == "call_tools"
    assert calls(d) == [("nuclei_segmentation", {"image": "a.png"})]
    assert "extracted JSON from a code fence" in d.repairs
    assert any("filled missing image" in r for r in d.repairs)


def test_prose_around_bare_json_and_trailing_comma_and_single_quotes():
    raw = "I think we need {'tool_calls': [{'name': 'tissue_qc', 'arguments': {'image': 'a.png',}},]} and that's it."
    d = parse_plan(raw, ctx())
    assert calls(d) == [("tissue_qc", {"image": "a.png"})]
    assert "removed text around the JSON" in d.repairs
    assert "removed trailing commas" in d.repairs


def test_unknown_tool_close_to_real_one_is_renamed():
    d = parse_plan('{"tools": ["nuclei_segmentaton", "Tissue QC", "mitosis-detection"]}', ctx())
    assert [c.tool for c in d.calls] == ["nuclei_segmentation", "tissue_qc", "mitosis_detection"]
    assert any("'nuclei_segmentaton' -> 'nuclei_segmentation'" in r for r in d.repairs)


def test_far_unknown_tool_is_dropped_and_the_rest_kept():
    d = parse_plan('{"tools": ["delete_all_files", "tissue_qc"]}', ctx())
    assert calls(d) == [("tissue_qc", {"image": "a.png"})]
    assert any("dropped unknown tool 'delete_all_files'" in r for r in d.repairs)


def test_only_unknown_tools_is_an_error_listing_valid_names():
    with pytest.raises(PlannerOutputError, match="valid tools: .*nuclei_segmentation"):
        parse_plan('{"tools": ["launch_rocket"]}', ctx())


def test_missing_image_fills_each_case_image():
    d = parse_plan('[{"name": "tissue_qc"}]', ctx(images=["a.png", "b.png"]))
    assert calls(d) == [("tissue_qc", {"image": "a.png"}), ("tissue_qc", {"image": "b.png"})]
    assert any("one call per case image (2)" in r for r in d.repairs)


def test_misspelt_image_maps_to_closest_case_image():
    d = parse_plan({"name": "tissue_qc", "arguments": {"image": "slide1.svs"}}, ctx(images=["slide_1.svs", "other.png"]))
    assert calls(d) == [("tissue_qc", {"image": "slide_1.svs"})]


def test_extra_arguments_dropped_and_enum_and_int_coerced():
    raw = {
        "name": "ihc_quantification",
        "arguments": {"image": "a.png", "mode": "PD-L1", "threshold": 0.5, "verbose": True},
    }
    d = parse_plan(raw, ctx(stain="PD-L1"))
    assert calls(d) == [("ihc_quantification", {"image": "a.png", "mode": "pdl1"})]
    assert any("dropped unknown argument 'threshold'" in r for r in d.repairs)
    assert any("mode='PD-L1' -> 'pdl1'" in r for r in d.repairs)
    d2 = parse_plan('{"name": "similar_cases", "arguments": "{\\"k\\": \\"3\\"}"}', ctx())
    assert calls(d2) == [("similar_cases", {"k": 3, "image": "a.png"})]


def test_required_enum_filled_from_the_stain_and_invalid_value_replaced():
    d = parse_plan('{"tools": ["ihc_quantification"]}', ctx(stain="ER"))
    assert calls(d) == [("ihc_quantification", {"mode": "er_pr", "image": "a.png"})]
    d2 = parse_plan({"name": "ihc_quantification", "arguments": {"mode": "her2"}}, ctx(stain="Ki-67 (MIB-1)"))
    assert calls(d2) == [("ihc_quantification", {"mode": "ki67", "image": "a.png"})]


def test_enum_aliases_are_the_tools_own():
    """Spellings of enum values come from the tool's input schema (x-aliases), not from planner code: without them
    "ER" means nothing; a tool declaring {"routine": "he"} gets "he" from a stain written "Routine"."""
    plain = {"type": "object", "properties": {"mode": {"enum": ["ki67", "er_pr"]}}}
    assert context_arguments(plain, ctx(stain="ER")) == {}
    assert context_arguments(plain, ctx(stain="Ki-67")) == {"mode": "ki67"}  # the value itself, spelt loosely
    own = {"type": "object", "properties": {"stain_kind": {"enum": ["he", "ihc"], "x-aliases": {"Routine": "he"}}}}
    assert context_arguments(own, ctx(stain="Routine")) == {"stain_kind": "he"}
    assert context_arguments(own, ctx(question="is this a routine stain?", stain=None)) == {"stain_kind": "he"}
    assert context_arguments(SCHEMAS["ihc_quantification"], ctx(question="PD L1 please", stain=None)) == {"mode": "pdl1"}


def test_required_enum_that_cannot_be_inferred_rejects_the_call():
    with pytest.raises(PlannerOutputError, match="ihc_quantification.*mode"):
        parse_plan('{"tools": ["ihc_quantification"]}', ctx(question="score it", stain=None))


def test_duplicates_removed():
    raw = '{"tools": ["tissue_qc", "tissue_qc", {"name": "tissue_qc", "arguments": {"image": "a.png"}}]}'
    d = parse_plan(raw, ctx())
    assert calls(d) == [("tissue_qc", {"image": "a.png"})]
    assert sum("removed duplicate call" in r for r in d.repairs) == 2


def test_openai_shape_and_single_object_shape():
    raw = [{"id": "x", "type": "function", "function": {"name": "mitosis_detection", "arguments": "{}"}}]
    assert calls(parse_plan(raw, ctx())) == [("mitosis_detection", {"image": "a.png"})]
    assert calls(parse_plan('{"tool": "tumor_segmentation", "args": {}}', ctx())) == [
        ("tumor_segmentation", {"image": "a.png"})
    ]


@pytest.mark.parametrize("raw", ['{"finish": true}', '{"tools": []}', "[]", '{"action": "finish", "reason": "done"}'])
def test_finish_shapes(raw):
    d = parse_plan(raw, ctx())
    assert d.action == "finish" and d.calls == []


def test_region_segmentation_takes_coordinates_from_the_question():
    d = parse_plan('{"tools": ["region_segmentation"]}', ctx(question="segment the gland at (120, 340)"))
    assert calls(d) == [("region_segmentation", {"point": [120, 340], "image": "a.png"})]
    with pytest.raises(PlannerOutputError, match="dropped region_segmentation: arguments invalid"):
        parse_plan('{"tools": ["region_segmentation"]}', ctx(question="segment it"))


def test_truncated_output_is_closed():
    d = parse_plan('{"tools": ["tissue_qc", "nuclei_segmentation"', ctx())
    assert [c.tool for c in d.calls] == ["tissue_qc", "nuclei_segmentation"]
    assert "closed unterminated brackets" in d.repairs


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("I would call the nuclei tool.", "no JSON"),
        ("{{{{[[[", "no JSON|no usable"),
        ('{"foo": 1}', "no tool calls"),
        ('{"tools": "not a list", "x": 1}', "no usable"),
        ('{"tools": 5}', "must be a list"),
        ("[1, 2, null]", "no usable"),
        ('"just a string"', "no JSON"),
        (12, "must be text"),
        (None, "must be text"),
        ('{"tools": [{"arguments": {}}]}', "no usable"),
        ("\x00\x01\x02", "no JSON"),
        ("[" * 5000, "no JSON|no usable|could not read"),
        ('{"tools": [' + '"tissue_qc",' * 100 + "]}", None),
    ],
)
def test_garbage_raises_only_planner_output_error(raw, message):
    if message is None:  # too many calls: kept the first MAX_CALLS, deduplicated
        d = parse_plan(raw, ctx())
        assert calls(d) == [("tissue_qc", {"image": "a.png"})]
        return
    with pytest.raises(PlannerOutputError, match=message) as info:
        parse_plan(raw, ctx())
    assert str(info.value)


def test_empty_catalogue_rejects_every_tool():
    with pytest.raises(PlannerOutputError, match="catalogue is empty"):
        parse_plan('{"tools": ["tissue_qc"]}', PlannerContext(question="q", images=["a.png"]))


def test_extract_json_and_validate_arguments_helpers():
    value, notes = extract_json("noise ```\n[1, 2]\n``` noise")
    assert value == [1, 2] and notes == ["extracted JSON from a code fence"]
    assert validate_arguments({"image": "a.png", "k": 3}, SCHEMAS["similar_cases"]) == []
    errors = validate_arguments({"image": "a.png", "k": 0, "x": 1}, SCHEMAS["similar_cases"])
    assert any("k" in e for e in errors) and any("x" in e for e in errors)
    (missing,) = validate_arguments({"mode": "ki67"}, SCHEMAS["ihc_quantification"])
    assert "image" in missing and "required" in missing


def test_context_arguments_and_coordinates():
    assert question_coordinates("box [10, 20, 110, 70]") == {"box": {"x": 10, "y": 20, "width": 100, "height": 50}}
    assert question_coordinates("x=5, y=7") == {"point": {"x": 5, "y": 7}}
    assert question_coordinates("no numbers here") == {}
    assert context_arguments(SCHEMAS["similar_cases"], ctx(question="the top 3 similar cases")) == {"k": 3}
    assert context_arguments(SCHEMAS["similar_cases"], ctx(question="100 similar cases")) == {"k": 20}  # clamped
    assert context_arguments(SCHEMAS["ihc_quantification"], ctx(question="ki-67 please", stain=None)) == {"mode": "ki67"}
    # the stain is the physical fact: it wins over a marker named in the question
    assert context_arguments(SCHEMAS["ihc_quantification"], ctx(question="Ki-67?", stain="PD-L1")) == {"mode": "pdl1"}


def test_repairs_are_json_serialisable():
    d = parse_plan("```\n{'tools': ['tissue_qc',]}\n```", ctx())
    json.dumps(d.model_dump())


def test_random_mutations_never_raise_anything_else():
    import random

    rng = random.Random(1234)
    seeds = [
        '{"tools": ["nuclei_segmentation", "tissue_qc"]}',
        '[{"name": "ihc_quantification", "arguments": {"image": "a.png", "mode": "ki67"}}]',
        '```json\n{"tool_calls": [{"function": {"name": "similar_cases", "arguments": "{\\"k\\": 4}"}}]}\n```',
    ]
    alphabet = '{}[]",:\' \n\tabcxyz_0123456789`'
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(text) + 1)
            if op < 0.4 and text:
                del text[min(pos, len(text) - 1)]
            elif op < 0.8:
                text.insert(pos, rng.choice(alphabet))
            else:
                text = text[:pos]
        try:
            decision = parse_plan("".join(text), ctx(stain="Ki-67"))
        except PlannerOutputError as exc:
            assert str(exc)
            outcomes["error"] += 1
        else:
            assert isinstance(decision, PlanDecision)
            outcomes["ok"] += 1
    assert outcomes["ok"] > 50 and outcomes["error"] > 10  # both paths exercised


def test_invented_geometry_is_dropped_and_written_geometry_kept():
    raw = {"name": "nuclei_segmentation", "arguments": {"region": {"x": 1, "y": 0, "width": 256, "height": 384}}}
    d = parse_plan(raw, ctx(question="Count the nuclei"))
    assert calls(d) == [("nuclei_segmentation", {"image": "a.png"})]
    assert any("dropped region" in r and "no such coordinates" in r for r in d.repairs)
    d = parse_plan(raw, ctx(question="Count the nuclei in box [10, 20, 110, 70]"))
    assert calls(d) == [("nuclei_segmentation", {"region": {"x": 10, "y": 20, "width": 100, "height": 50}, "image": "a.png"})]
    raw = {"name": "region_segmentation", "arguments": {"point": [5, 5]}}
    d = parse_plan(raw, ctx(question="segment the structure at (120, 340)"))
    assert calls(d) == [("region_segmentation", {"point": [120, 340], "image": "a.png"})]
    d = parse_plan('{"tools": ["region_segmentation"]}', ctx(question="segment the gland in box 10,20,110,70"))
    assert calls(d) == [("region_segmentation", {"box": [10, 20, 110, 70], "image": "a.png"})]


def test_builtin_validator_matches_the_schema_subset_pydantic_emits():
    from pathasst.planning.schemas import _builtin_errors  # the fallback when jsonschema is absent

    def errors(args, tool):
        return _builtin_errors(args, SCHEMAS[tool], SCHEMAS[tool], "arguments")

    assert errors({"image": "a.png", "mode": "ki67"}, "ihc_quantification") == []
    assert errors({"mode": "ki67"}, "ihc_quantification") == ["arguments.image: required"]
    assert errors({"image": "a.png", "mode": "her2"}, "ihc_quantification") == [
        "arguments.mode: 'her2' is not one of ['ki67', 'er_pr', 'pdl1']"
    ]
    assert errors({"image": "a.png"}, "region_segmentation") == ["arguments: needs one of: point | box"]
    box = {"x": 0, "y": 0, "width": 0, "height": 5}
    assert errors({"image": "a.png", "box": box}, "region_segmentation") == ["arguments.box: matches none of the allowed forms"]
    assert errors({"image": "a.png", "k": 2, "extra": 1}, "similar_cases") == ["arguments.extra: unexpected argument"]
