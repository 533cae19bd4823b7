"""GeoJSON interchange: real tool outputs validate against the official GeoJSON JSON Schema and read back as the
same objects (count, per-object IoU, classes); invalid input fails with a clear error naming the feature."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage as ndi
from tool_helpers import make_resolver

from pathasst.core.imaging import ImageData
from pathasst.tools.base import ToolResult, call_tool
from pathasst.tools.geojson import (
    GeoJSONError,
    GeoJSONSchemaError,
    GeoObject,
    feature_collection,
    feature_collection_schema,
    features_to_label_map,
    mask_to_features,
    point_feature,
    read_features,
    schema_errors,
)
from pathasst.tools.registry import ToolRegistry, default_registry

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "tools" / "schemas" / "geojson.FeatureCollection.schema.json"


@pytest.fixture(scope="module")
def image() -> ImageData:
    """A 256 x 256 crop of skimage's IHC image, placed at (128, 128) of its source: features are level-0."""
    from skimage import data

    return ImageData(data.immunohistochemistry()[128:384, 128:384], name="ihc.png", mpp=0.5, origin=(128.0, 128.0))


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    from pathasst.core.settings import Settings

    with pytest.MonkeyPatch.context() as mp:  # settings isolated from the user's PATHASST_* variables
        for key in [k for k in os.environ if k.startswith("PATHASST_") and k != "PATHASST_SHARED_DATA"]:
            mp.delenv(key)
        return default_registry(Settings(_env_file=None))


_RUNS: dict[tuple[str, str], tuple[Any, ToolResult]] = {}


def run(registry: ToolRegistry, image: ImageData, name: str, **args: Any) -> ToolResult:
    """Run a real tool through ``call_tool`` once per module (cached)."""
    key = (name, json.dumps(args, sort_keys=True))
    if key not in _RUNS:
        record, result = call_tool(registry.get(name), {"image": "ihc.png", **args}, make_resolver({"ihc.png": image}))
        assert record.status == "ok" and result is not None, record.error
        _RUNS[key] = (record, result)
    return _RUNS[key][1]


def write_and_reread(features: list[dict[str, Any]], path: Path) -> tuple[dict[str, Any], list[GeoObject]]:
    path.write_text(json.dumps(feature_collection(features)), encoding="utf-8")
    data = json.loads(path.read_text(encoding="utf-8"))
    return data, read_features(path)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ---- the vendored schema -----------------------------------------------------------------------------------------
def test_vendored_schema_is_the_official_draft7_feature_collection_schema() -> None:
    from jsonschema import Draft7Validator

    schema = feature_collection_schema()
    assert schema == json.loads(SCHEMA_FILE.read_text())  # loaded as package data of pathasst.tools
    Draft7Validator.check_schema(schema)
    assert schema["$id"] == "https://geojson.org/schema/FeatureCollection.json"
    assert "github.com/geojson/schema" in schema["$comment"] and "MIT" in schema["$comment"]
    feature = schema["properties"]["features"]["items"]
    geometry_types = [g.get("title") for g in feature["properties"]["geometry"]["oneOf"]]
    assert geometry_types == [None, "GeoJSON Point", "GeoJSON LineString", "GeoJSON Polygon", "GeoJSON MultiPoint",
                              "GeoJSON MultiLineString", "GeoJSON MultiPolygon", "GeoJSON GeometryCollection"]


# ---- real tools: write, validate, read back ----------------------------------------------------------------------
def test_nuclei_segmentation_roundtrip(registry, image: ImageData, tmp_path: Path) -> None:
    result = run(registry, image, "nuclei_segmentation")
    data, objects = write_and_reread(result.features, tmp_path / "nuclei.geojson")
    assert schema_errors(data) == []
    ids = [int(v) for v in np.unique(result.labels) if v]
    assert len(objects) == len(ids) == result.output.count > 20
    assert {(o.classification, o.color, o.object_type, o.geometry_type) for o in objects} == {
        ("Nucleus", (0, 160, 0), "detection", "Polygon")
    }
    labels = features_to_label_map(objects, image.shape, image=image)
    assert labels.max() == len(objects)
    ious = []
    for k, (obj, lab) in enumerate(zip(objects, ids), start=1):  # features are written in label order
        truth = result.labels == lab
        assert obj.measurements["Area px"] == float(truth.sum())
        ious.append(iou(labels == k, truth))
    assert np.mean(ious) >= 0.9 and min(ious) >= 0.75, (np.mean(ious), min(ious))


def test_ihc_quantification_roundtrip_keeps_each_cells_class(registry, image: ImageData, tmp_path: Path) -> None:
    result = run(registry, image, "ihc_quantification")
    data, objects = write_and_reread(result.features, tmp_path / "ihc.geojson")
    assert schema_errors(data) == []
    cells = result.output.cells
    assert len(objects) == len(cells) == int(result.labels.max())
    assert [o.classification for o in objects] == ["Positive" if c.positive else "Negative" for c in cells]
    assert {o.classification for o in objects} == {"Positive", "Negative"}
    assert [o.measurements["Intensity"] for o in objects] == [c.intensity for c in cells]
    labels = features_to_label_map(objects, image.shape, image=image)
    ious = [iou(labels == k, result.labels == k) for k in range(1, len(objects) + 1)]
    assert np.mean(ious) >= 0.9


def test_region_segmentation_roundtrip(registry, image: ImageData, tmp_path: Path) -> None:
    result = run(registry, image, "region_segmentation", point=[256, 256])  # level-0: the crop's centre
    data, objects = write_and_reread(result.features, tmp_path / "region.geojson")
    assert schema_errors(data) == []
    (obj,) = objects
    assert obj.geometry_type == "Polygon" and obj.classification == "Region"
    labels = features_to_label_map(objects, image.shape, image=image)
    assert iou(labels == 1, result.mask) >= 0.9
    assert labels[128, 128] == 1  # the prompt point is inside


def test_tissue_qc_roundtrip(registry, image: ImageData, tmp_path: Path) -> None:
    result = run(registry, image, "tissue_qc")
    data, objects = write_and_reread(result.features, tmp_path / "tissue.geojson")
    assert schema_errors(data) == []
    assert objects and {o.classification for o in objects} <= {"Tissue", "Pen"}
    tissue = [o for o in objects if o.classification == "Tissue"]
    comps, _ = ndi.label(result.mask, structure=np.ones((3, 3)))
    areas = np.bincount(comps.ravel())[1:]
    smallest = min(o.measurements["Area px"] for o in tissue)  # the tool drops components below a minimum area
    kept = [i + 1 for i, a in enumerate(areas) if a >= smallest]
    assert len(tissue) == len(kept)
    labels = features_to_label_map(tissue, image.shape, image=image)
    for k, obj in enumerate(tissue, start=1):
        lab = np.bincount(comps[labels == k]).argmax()  # the component this object came from
        assert areas[lab - 1] == obj.measurements["Area px"]
        assert iou(labels == k, comps == lab) >= 0.9


def test_polygons_with_holes_roundtrip(registry, image: ImageData, tmp_path: Path) -> None:
    """The nuclei tool's non-nuclear area: a real mask whose big component has dozens of holes (the nuclei)."""
    background = run(registry, image, "nuclei_segmentation").labels == 0
    comps, n = ndi.label(background, structure=np.ones((3, 3)))  # mask_to_features' 8-connected components
    big = comps == np.bincount(comps.ravel())[1:].argmax() + 1
    _, true_holes = ndi.label(ndi.binary_fill_holes(big) & ~big)  # 4-connected background inside it
    for tolerance, min_iou in ((0.0, 1.0), (1.0, 0.97)):
        features = mask_to_features(background, image, "Stroma", tolerance=tolerance)
        data, objects = write_and_reread(features, tmp_path / "stroma.geojson")
        assert schema_errors(data) == []
        assert len(objects) == n and {o.classification for o in objects} == {"Stroma"}
        biggest = max(objects, key=lambda o: o.measurements["Area px"])
        assert biggest.measurements["Area px"] == big.sum()
        assert len(biggest.polygons) == 1 and len(biggest.polygons[0]) - 1 == true_holes >= 10
        labels = features_to_label_map(objects, image.shape, image=image)
        assert iou(labels > 0, background) >= min_iou
        assert iou(labels == objects.index(biggest) + 1, big) >= min_iou


def test_diagonally_touching_pixels_stay_one_object(image: ImageData) -> None:
    """An 8-connected component whose parts touch only at a corner is one feature covering every part."""
    mask = np.zeros(image.shape, bool)
    mask[10:20, 10:20] = True
    mask[20:30, 20:30] = True  # touches the first square at one corner only
    mask[40:50, 40:50] = True
    mask[45, 45] = False  # a one-pixel hole
    features = mask_to_features(mask, image, "Tissue", tolerance=0)
    assert [f["properties"]["measurements"]["Area px"] for f in features] == [200.0, 99.0]
    assert [len(f["geometry"]["coordinates"]) for f in features] == [1, 2]
    labels = features_to_label_map(read_features(feature_collection(features)), image.shape, image=image)
    assert np.array_equal(labels > 0, mask)


def test_multipolygon_and_points(registry, image: ImageData, tmp_path: Path) -> None:
    """MultiPolygon (two nuclei as one object) and Point / MultiPoint features read back where they were."""
    result = run(registry, image, "nuclei_segmentation")
    a, b = result.features[0], result.features[1]
    multi = {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon",
                     "coordinates": [a["geometry"]["coordinates"], b["geometry"]["coordinates"]]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}},
    }
    cy, cx = ndi.center_of_mass(result.labels == 3)
    point = point_feature(round(cx), round(cy), "Positive", image=image)
    multipoint = {"type": "Feature", "id": 7, "properties": None,
                  "geometry": {"type": "MultiPoint", "coordinates": [[130.0, 131.0], [200.0, 250.0, 5.0]]}}
    data, objects = write_and_reread([multi, point, multipoint], tmp_path / "mixed.geojson")
    assert schema_errors(data) == []
    assert [o.geometry_type for o in objects] == ["MultiPolygon", "Point", "MultiPoint"]
    assert objects[0].classification == "Tumor" and len(objects[0].polygons) == 2
    assert objects[2].id == 7 and objects[2].classification is None and objects[2].points.shape == (2, 2)
    labels = features_to_label_map(objects, image.shape, image=image)
    ids = [int(v) for v in np.unique(result.labels) if v]
    both = np.isin(result.labels, ids[:2])
    assert iou(labels == 1, both) >= 0.9
    assert labels[round(cy), round(cx)] == 2 and (labels == 2).sum() == 1
    assert labels[3, 2] == 3 and labels[122, 72] == 3 and (labels == 3).sum() == 2  # level-0 (130,131), (200,250)
    disks = features_to_label_map(objects[1:2], image.shape, image=image, point_radius=2)
    assert (disks == 1).sum() == 21 and disks[round(cy), round(cx)] == 1


# ---- invalid input: clear errors naming the feature --------------------------------------------------------------
def _square(closed: bool = True) -> list[list[float]]:
    ring = [[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 20.0]]
    return ring + [ring[0]] if closed else ring


def _collection(*geometries: dict[str, Any] | None) -> dict[str, Any]:
    return feature_collection([{"type": "Feature", "geometry": g, "properties": {"classification": {"name": "Nucleus"}}}
                               for g in geometries])


def test_unclosed_ring_passes_the_schema_but_not_the_reader() -> None:
    data = _collection({"type": "Polygon", "coordinates": [_square()]},
                       {"type": "Polygon", "coordinates": [_square(closed=False) + [[12.0, 12.0]]]})
    assert schema_errors(data) == []  # JSON Schema cannot express closure (RFC 7946 3.1.6)
    with pytest.raises(GeoJSONError) as exc:
        read_features(data)
    assert exc.value.feature_index == 1 and not isinstance(exc.value, GeoJSONSchemaError)
    assert str(exc.value).startswith("feature 1: Polygon ring 0 is not closed (first position [10.0, 10.0] != last")
    multi = _collection({"type": "MultiPolygon", "coordinates": [[_square()], [_square(), _square(False) + [[1, 1]]]]})
    with pytest.raises(GeoJSONError, match=r"^feature 0: MultiPolygon polygon 1 ring 1 is not closed"):
        read_features(multi)


def test_wrong_coordinate_nesting_fails_the_schema_with_the_feature_index() -> None:
    data = _collection({"type": "Point", "coordinates": [1.0, 2.0]},
                       {"type": "Point", "coordinates": [3.0, 4.0]},
                       {"type": "Polygon", "coordinates": _square()})  # one level of nesting missing
    errors = schema_errors(data)
    assert errors and all(e.startswith("feature 2: ") for e in errors)
    assert "a Polygon's coordinates are a list of linear rings" in errors[0]
    with pytest.raises(GeoJSONSchemaError) as exc:
        read_features(data)
    assert isinstance(exc.value, ValueError) and exc.value.feature_index == 2 and exc.value.errors == errors
    assert str(exc.value).startswith("feature 2: geometry.coordinates[0]: [10.0, 10.0] has fewer than 4 items")
    many = _collection(*[{"type": "Point", "coordinates": [float(i), 1.0]} for i in range(12)])
    many["features"][10]["geometry"]["coordinates"] = ["x", 1.0]
    many["features"][2]["geometry"]["coordinates"] = [2.0]
    assert [e.split(":")[0] for e in schema_errors(many)] == ["feature 2", "feature 10"]  # in feature order
    # without the schema check the reader still fails cleanly (no TypeError)
    with pytest.raises(GeoJSONError, match=r"^feature 2: (malformed Polygon coordinates|Polygon ring 0 has 2 pos)"):
        read_features(data, validate=False)


@pytest.mark.parametrize(
    "geometry,expect",
    [
        ({"type": "Point", "coordinates": [[1.0, 2.0]]},
         r"^feature 0: geometry.coordinates: \[\[1.0, 2.0\]\] has fewer than 2 items .*one \[x, y\] position$"),
        ({"type": "Polygon", "coordinates": [_square()[:3]]},
         r"^feature 0: geometry.coordinates\[0\]: .* has fewer than 4 items"),
        ({"type": "Circle", "coordinates": [1.0, 2.0]},
         r"^feature 0: geometry type 'Circle' is not a GeoJSON geometry type"),
        ({"type": "Polygon"}, r"^feature 0: geometry: 'coordinates' is a required property; a Polygon's"),
    ],
)
def test_schema_violations_are_named(geometry: dict[str, Any], expect: str) -> None:
    with pytest.raises(GeoJSONSchemaError, match=expect):
        read_features(_collection(geometry))


@pytest.mark.parametrize(
    "source,expect",
    [
        (_collection({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
         r"^feature 0: geometry type 'LineString' cannot be read back; readable types: Point, MultiPoint, Polygon"),
        (_collection(None), r"^feature 0: has no geometry \(null\)"),
        ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None, "properties": "x"}]},
         r"^feature 0: properties must be an object or null"),
        (feature_collection([{"type": "Feature", "properties": {"classification": {"colour": "red"}},
                              "geometry": {"type": "Point", "coordinates": [1, 2]}}]),
         r"^feature 0: properties.classification must be"),
        ({"type": "Polygon", "coordinates": [_square()]},
         r"^GeoJSON: expected a FeatureCollection, a Feature or a list"),
        ({"type": "FeatureCollection"}, r"^GeoJSON: 'features' is a required property$"),
    ],
)
def test_unreadable_input_is_a_clear_error(source: dict[str, Any], expect: str) -> None:
    with pytest.raises(GeoJSONError, match=expect):
        read_features(source)


def test_files_single_features_and_lists(tmp_path: Path) -> None:
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_square()]},
               "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016},  # QuPath 0.2 style
                              "measurements": [{"name": "Area", "value": 100.0}]}}
    (obj,) = read_features(feature)
    assert obj.classification == "Tumor" and obj.color == (200, 0, 0) and obj.measurements == {"Area": 100.0}
    assert len(read_features([feature, feature])) == 2
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(GeoJSONError, match=r"bad.geojson is not JSON"):
        read_features(bad)
    with pytest.raises(GeoJSONError, match=r"cannot read"):
        read_features(tmp_path / "missing.geojson")
    labels = features_to_label_map([feature], (32, 32))  # raw features are read (and validated) first
    assert (labels == 1).sum() == 121 and labels[10, 10] == 1 and labels[21, 21] == 0
