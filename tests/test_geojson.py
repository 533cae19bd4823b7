"""QuPath GeoJSON helpers: closure, orientation, level-0 mapping, classification names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathasst.core.imaging import ImageData
from pathasst.tools.geojson import feature_collection, label_map_to_features, mask_to_features, point_feature


def _signed_area(ring: list[list[float]]) -> float:
    a = np.asarray(ring)
    return 0.5 * float(np.dot(a[:-1, 0], a[1:, 1]) - np.dot(a[1:, 0], a[:-1, 1]))


@pytest.fixture()
def image() -> ImageData:
    return ImageData(np.zeros((20, 30, 3), np.uint8), origin=(100.0, 50.0), scale=2.0)


def test_label_map_polygons_closed_and_mapped(image: ImageData) -> None:
    labels = np.zeros((20, 30), np.uint32)
    labels[2:5, 3:6] = 7  # rows 2-4, cols 3-5
    labels[10:15, 20:28] = 300
    feats = label_map_to_features(labels, image, {7: "Positive", 300: "Negative"}, measurements={7: {"DAB": 0.5}})
    assert [f["properties"]["classification"]["name"] for f in feats] == ["Positive", "Negative"]
    assert feats[0]["properties"]["classification"]["color"] == [200, 0, 0]
    assert feats[0]["properties"]["objectType"] == "detection"
    assert feats[0]["properties"]["measurements"] == {"DAB": 0.5}
    ring = feats[0]["geometry"]["coordinates"][0]
    assert feats[0]["geometry"]["type"] == "Polygon"
    assert ring[0] == ring[-1] and len(ring) >= 4
    assert all(isinstance(v, float) for pt in ring for v in pt)
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    # x (columns 3..5, contour at 2.5..5.5) -> 100 + 2 x; y (rows 2..4) -> 50 + 2 y
    assert min(xs) == pytest.approx(105.0) and max(xs) == pytest.approx(111.0)
    assert min(ys) == pytest.approx(53.0) and max(ys) == pytest.approx(59.0)
    assert _signed_area(ring) > 0  # exterior ring counter-clockwise in (x, y)
    json.dumps(feature_collection(feats))  # serialisable


def test_label_map_single_class_and_skip(image: ImageData) -> None:
    labels = np.zeros((20, 30), np.int32)
    labels[1:4, 1:4] = 2
    labels[8:12, 8:12] = 5
    assert len(label_map_to_features(labels, image, "Nucleus")) == 2
    assert len(label_map_to_features(labels, image, {5: "Nucleus"})) == 1
    with pytest.raises(ValueError):
        label_map_to_features(labels[:10], image, "Nucleus")


def test_mask_with_hole(image: ImageData) -> None:
    mask = np.zeros((20, 30), bool)
    mask[2:18, 2:20] = True
    mask[7:12, 7:12] = False
    feats = mask_to_features(mask, image, "Tissue")
    assert len(feats) == 1
    f = feats[0]
    assert f["properties"]["objectType"] == "annotation"
    assert f["properties"]["classification"]["name"] == "Tissue"
    rings = f["geometry"]["coordinates"]
    assert len(rings) == 2
    assert all(r[0] == r[-1] for r in rings)
    assert _signed_area(rings[0]) > 0 > _signed_area(rings[1])
    assert f["properties"]["measurements"]["Area px"] == float(mask.sum())
    assert mask_to_features(mask, image, "Tissue", min_area_px=10_000) == []


def test_point_feature_mapping(image: ImageData) -> None:
    f = point_feature(3.0, 4.5, "Negative", image=image)
    assert f["geometry"] == {"type": "Point", "coordinates": [106.0, 59.0]}
    assert f["properties"]["classification"] == {"name": "Negative", "color": [112, 112, 225]}
    assert point_feature(3.0, 4.5, "Positive")["geometry"]["coordinates"] == [3.0, 4.5]
    fc = feature_collection([f])
    assert fc["type"] == "FeatureCollection" and fc["features"] == [f]
