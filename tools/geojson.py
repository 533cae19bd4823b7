"""QuPath-compatible GeoJSON helpers shared by the tools.

A feature looks like QuPath's own export::

    {"type": "Feature", "id": "...", "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...]]},
     "properties": {"objectType": "detection", "classification": {"name": "Positive", "color": [200, 0, 0]},
                    "measurements": {"Area px": 41.0}}}

Coordinates are ``[x, y]`` floats in level-0 pixels of the source image (array coordinates are mapped with
``ImageData.to_level0``); polygon rings are closed (first point == last point) and exterior rings run
counter-clockwise in (x, y) (positive shoelace area), holes clockwise, as RFC 7946 asks.

Reading back is :mod:`pathasst.tools.geojson_read` (its names are re-exported here).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from pathasst.core.imaging import ImageData
from pathasst.tools.geojson_read import (
    GeoJSONError,
    GeoJSONSchemaError,
    GeoObject,
    feature_collection_schema,
    features_to_label_map,
    read_features,
    schema_errors,
)

__all__ = [
    "CLASS_COLORS",
    "GeoJSONError",
    "GeoJSONSchemaError",
    "GeoObject",
    "ObjectType",
    "classification",
    "feature_collection",
    "feature_collection_schema",
    "feature_properties",
    "features_to_label_map",
    "label_map_to_features",
    "mask_to_features",
    "point_feature",
    "polygon_feature",
    "read_features",
    "schema_errors",
]

ObjectType = Literal["detection", "annotation", "cell", "tile"]

#: RGB colours of the classes the tools emit (QuPath's defaults for Positive / Negative / Stroma / Tumor).
CLASS_COLORS: dict[str, list[int]] = {
    "Positive": [200, 0, 0],
    "Negative": [112, 112, 225],
    "Nucleus": [0, 160, 0],
    "Tissue": [80, 160, 80],
    "Pen": [0, 90, 200],
    "Tumor": [200, 0, 0],
    "Stroma": [150, 200, 150],
    "Necrosis": [50, 50, 50],
    "Other": [255, 200, 0],
}
_DEFAULT_COLOR = [255, 200, 0]
_DECIMALS = 2


def classification(name: str) -> dict[str, Any]:
    """QuPath ``classification`` object for a class name (colour from :data:`CLASS_COLORS`)."""
    return {"name": name, "color": list(CLASS_COLORS.get(name, _DEFAULT_COLOR))}


def feature_properties(name: str, object_type: str, measurements: Mapping[str, Any] | None) -> dict[str, Any]:
    """QuPath ``properties`` of a feature: object type, classification (with its colour), measurements."""
    props: dict[str, Any] = {"objectType": object_type, "classification": classification(name)}
    if measurements:
        props["measurements"] = {str(k): _plain(v) for k, v in measurements.items()}
    return props


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _ring(xy: np.ndarray, image: ImageData, exterior: bool) -> list[list[float]]:
    """Array (x, y) points -> closed level-0 ring with the orientation RFC 7946 asks for."""
    pts = image.to_level0(xy)
    if len(pts) == 0 or not np.array_equal(pts[0], pts[-1]):
        pts = np.vstack([pts, pts[:1]])
    area = _signed_area(pts)
    if (area < 0) == exterior:
        pts = pts[::-1]
    pts = np.round(pts, _DECIMALS)
    return [[float(x), float(y)] for x, y in pts]


def polygon_feature(
    rings_xy: list[np.ndarray],
    image: ImageData,
    classification_name: str,
    object_type: ObjectType = "detection",
    measurements: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Polygon feature from rings of array ``(x, y)`` points (first ring exterior, others holes)."""
    coords = [_ring(r, image, exterior=(i == 0)) for i, r in enumerate(rings_xy)]
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": coords},
        "properties": feature_properties(classification_name, object_type, measurements),
    }


def _contours(mask: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """Closed contours ((x, y) array coordinates) of a binary mask, largest enclosed area first.

    The mask is traced as 8-connected (``fully_connected="high"``), as ``mask_to_features`` labels its components:
    one 8-connected component gives one outer contour plus one contour per (4-connected) hole. Traced 4-connected,
    parts touching only at a corner became extra outer contours that were written as holes and lost.
    """
    import cv2
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5, fully_connected="high"):
        xy = c[:, ::-1] - 1.0  # (row, col) -> (x, y); undo padding
        if tolerance > 0 and len(xy) > 8:  # Douglas-Peucker (OpenCV's: ~250x skimage's approximate_polygon)
            simple = cv2.approxPolyDP(xy.astype(np.float32).reshape(-1, 1, 2), tolerance, False).reshape(-1, 2)
            xy = simple.astype(np.float64) if len(simple) >= 4 else xy  # a tiny ring stays a ring
        if len(xy) >= 4:
            out.append(xy)
    out.sort(key=lambda r: -abs(_signed_area(np.vstack([r, r[:1]]))))
    return out


def _objects(labels: np.ndarray):
    from scipy import ndimage as ndi

    slices = ndi.find_objects(labels)
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        y0, x0 = sl[0].start, sl[1].start
        yield i, labels[sl] == i, float(x0), float(y0)


def label_map_to_features(
    labels: np.ndarray,
    image: ImageData,
    classification: str | Mapping[int, str],  # noqa: A002 - the QuPath property name
    object_type: ObjectType = "detection",
    measurements: Mapping[int, Mapping[str, Any]] | None = None,
    tolerance: float = 0.5,
) -> list[dict[str, Any]]:
    """One Polygon feature per object of an instance label map (0 = background).

    ``classification`` is one class name for every object or ``{label: name}`` (labels absent from the mapping are
    skipped). ``measurements`` maps a label to its QuPath measurements. The outline is the outer contour of the object
    (holes dropped), simplified with ``tolerance`` array pixels. Coordinates are level-0 ``[x, y]``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.shape != image.shape:
        raise ValueError(f"label map {labels.shape} does not match the image {image.shape}")
    features: list[dict[str, Any]] = []
    for lab, obj, x0, y0 in _objects(labels.astype(np.int64, copy=False)):
        name = classification if isinstance(classification, str) else classification.get(lab)
        if name is None:
            continue
        rings = _contours(obj, tolerance)
        if not rings:
            continue
        m = measurements.get(lab) if measurements else None
        features.append(polygon_feature([rings[0] + (x0, y0)], image, name, object_type, m))
    return features


def mask_to_features(
    mask: np.ndarray,
    image: ImageData,
    classification: str,  # noqa: A002 - the QuPath property name
    object_type: ObjectType = "annotation",
    min_area_px: int = 0,
    tolerance: float = 1.0,
    measurements: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One Polygon feature (with holes) per connected component of a boolean mask of at least ``min_area_px``."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask) > 0
    if mask.shape != image.shape:
        raise ValueError(f"mask {mask.shape} does not match the image {image.shape}")
    comps, _ = ndi.label(mask, structure=np.ones((3, 3)))
    features: list[dict[str, Any]] = []
    for _, obj, x0, y0 in _objects(comps):
        area = int(obj.sum())
        if area < max(min_area_px, 1):
            continue
        rings = _contours(obj, tolerance)
        if not rings:
            continue
        m = {"Area px": float(area), **(measurements or {})}
        features.append(polygon_feature([r + (x0, y0) for r in rings], image, classification, object_type, m))
    return features


def point_feature(
    x: float,
    y: float,
    classification: str,  # noqa: A002 - the QuPath property name
    image: ImageData | None = None,
    object_type: ObjectType = "detection",
    measurements: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Point feature. ``x, y`` are array coordinates of ``image`` (mapped to level 0), or level 0 if no image."""
    pt = np.array([[x, y]], dtype=float)
    if image is not None:
        pt = image.to_level0(pt)
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Point", "coordinates": [round(float(v), _DECIMALS) for v in pt[0]]},
        "properties": feature_properties(classification, object_type, measurements),
    }


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Wrap features in a GeoJSON ``FeatureCollection`` (what QuPath imports)."""
    return {"type": "FeatureCollection", "features": list(features)}
