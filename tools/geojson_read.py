"""Reading GeoJSON back (QuPath exports, or what the tools wrote): :func:`read_features` checks a file or dict
against the official GeoJSON JSON Schema (vendored in ``schemas/``, validated with ``jsonschema``) and then ring
closure, and returns :class:`GeoObject` items; :func:`features_to_label_map` rasterises them into an instance label
map. Bad input raises :class:`GeoJSONError` (a ``ValueError``) naming the feature index. Writing: :mod:`geojson`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathasst.core.imaging import ImageData

__all__ = [
    "GeoJSONError",
    "GeoJSONSchemaError",
    "GeoObject",
    "feature_collection_schema",
    "features_to_label_map",
    "read_features",
    "schema_errors",
]

#: the vendored JSON Schema (geojson.org/schema/FeatureCollection.json), inside this package
SCHEMA_RESOURCE = "schemas/geojson.FeatureCollection.schema.json"

GeometryType = Literal["Point", "MultiPoint", "Polygon", "MultiPolygon"]
_READABLE: tuple[str, ...] = ("Point", "MultiPoint", "Polygon", "MultiPolygon")
_NESTING_HINT: dict[str, str] = {
    "Point": "a Point's coordinates are one [x, y] position",
    "MultiPoint": "a MultiPoint's coordinates are a list of [x, y] positions",
    "LineString": "a LineString's coordinates are a list of at least 2 [x, y] positions",
    "MultiLineString": "a MultiLineString's coordinates are a list of LineString coordinate lists",
    "Polygon": "a Polygon's coordinates are a list of linear rings, each a list of at least 4 [x, y] positions",
    "MultiPolygon": "a MultiPolygon's coordinates are a list of Polygon coordinate lists (rings of [x, y] positions)",
    "GeometryCollection": "a GeometryCollection has a 'geometries' list",
}


class GeoJSONError(ValueError):
    """GeoJSON that cannot be read. ``feature_index`` is the offending feature's position (None: the whole input)."""

    def __init__(self, message: str, feature_index: int | None = None) -> None:
        self.feature_index = feature_index
        self.detail = message
        where = f"feature {feature_index}" if feature_index is not None else "GeoJSON"
        super().__init__(f"{where}: {message}")


class GeoJSONSchemaError(GeoJSONError):
    """The input breaks the GeoJSON JSON Schema; ``errors`` lists every violation, the message names the first."""

    def __init__(self, message: str, feature_index: int | None, errors: list[str]) -> None:
        super().__init__(message, feature_index)
        self.errors = errors


@dataclass(eq=False)
class GeoObject:
    """One feature read back: its geometry in level-0 ``[x, y]`` and its QuPath properties."""

    index: int  # position of the feature in the collection
    geometry_type: GeometryType
    #: polygons (Polygon: one; MultiPolygon: several), each ``[exterior, *holes]`` of closed ``(N, 2)`` rings
    polygons: list[list[np.ndarray]] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # ``(K, 2)`` for Point / MultiPoint
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    object_type: str | None = None
    measurements: dict[str, Any] = field(default_factory=dict)
    id: str | int | None = None
    properties: dict[str, Any] = field(default_factory=dict)


def feature_collection_schema() -> dict[str, Any]:
    """The GeoJSON FeatureCollection JSON Schema (draft-07), vendored from github.com/geojson/schema (MIT)."""
    text = resources.files("pathasst.tools").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft7Validator

    return Draft7Validator(feature_collection_schema())


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path_key(path: Any) -> list[tuple[int, int | str]]:
    """Sort key of a JSON path: array indices numerically (feature 2 before feature 10)."""
    return [(0, p) if isinstance(p, int) else (1, str(p)) for p in path]


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: Any) -> tuple[int | None, str]:
    """(feature index, readable message) of one jsonschema error on a FeatureCollection."""
    path = list(err.absolute_path)
    index = path[1] if len(path) > 1 and path[0] == "features" and isinstance(path[1], int) else None
    rel = _where(path[2:] if index is not None else path)
    prefix = f"{rel}: " if rel else ""
    inst = err.instance
    if err.validator == "oneOf" and path[-1:] == ["geometry"] and isinstance(inst, dict):
        gtype = inst.get("type")
        branches = err.schema["oneOf"]
        match = [
            k for k, b in enumerate(branches) if b.get("properties", {}).get("type", {}).get("enum") == [gtype]
        ]
        if not match:
            return index, (
                f"geometry type {_short(gtype)} is not a GeoJSON geometry type "
                f"({', '.join(_NESTING_HINT)}), or null"
            )
        sub = sorted(
            (e for e in err.context if list(e.relative_schema_path)[:1] == match),
            key=lambda e: _path_key(e.relative_path),
        )
        first = sub[0] if sub else err
        extra = f" (and {len(sub) - 1} more)" if len(sub) > 1 else ""
        inner = _where(["geometry", *first.relative_path])
        what = first.message if first.validator == "required" else f"{_short(first.instance)} {_reason(first)}"
        msg = f"{inner}: {what}{extra}; {_NESTING_HINT[gtype]}"
        return index, msg
    if err.validator == "oneOf" and path[-1:] == ["properties"]:
        return index, f"properties must be an object or null, got {_short(inst)}"
    if err.validator == "oneOf" and path[-1:] == ["id"]:
        return index, f"id must be a string or a number, got {_short(inst)}"
    if err.validator == "required":
        return index, f"{prefix}{err.message}"
    return index, f"{prefix}{_short(inst)} {_reason(err)}"


def _reason(err: Any) -> str:
    v = err.validator
    if v == "type":
        return f"is not of type {err.validator_value!r}"
    if v == "minItems":
        return f"has fewer than {err.validator_value} items"
    if v == "enum":
        return f"is not one of {err.validator_value}"
    return f"is invalid ({err.message})"


def _schema_problems(data: Any) -> list[tuple[int | None, str]]:
    errors = sorted(_validator().iter_errors(data), key=lambda e: _path_key(e.absolute_path))
    return [_describe(err) for err in errors]


def schema_errors(data: Any) -> list[str]:
    """Every violation of the GeoJSON FeatureCollection schema in ``data`` (empty list: valid), in path order.

    The schema cannot express that linear rings are closed (RFC 7946 3.1.6); :func:`read_features` checks that.
    """
    return [f"feature {i}: {msg}" if i is not None else msg for i, msg in _schema_problems(data)]


def _as_collection(source: Any) -> dict[str, Any]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise GeoJSONError(f"cannot read {path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise GeoJSONError(f"{path} is not JSON: {exc}") from exc
    else:
        data = source
    if isinstance(data, Mapping) and data.get("type") == "Feature":
        return {"type": "FeatureCollection", "features": [dict(data)]}
    if isinstance(data, (list, tuple)):
        return {"type": "FeatureCollection", "features": list(data)}
    if not isinstance(data, Mapping) or data.get("type") != "FeatureCollection":
        kind = data.get("type") if isinstance(data, Mapping) else type(data).__name__
        raise GeoJSONError(f"expected a FeatureCollection, a Feature or a list of features, got {_short(kind)}")
    return dict(data)


def _read_ring(coords: list[Any], index: int, what: str) -> np.ndarray:
    ring = np.asarray([c[:2] for c in coords], dtype=float).reshape(-1, 2)
    if len(ring) < 4:
        raise GeoJSONError(f"{what} has {len(ring)} positions; a linear ring needs at least 4", index)
    if not np.isfinite(ring).all():
        raise GeoJSONError(f"{what} has a non-finite coordinate", index)
    if not np.array_equal(ring[0], ring[-1]):
        raise GeoJSONError(
            f"{what} is not closed (first position {ring[0].tolist()} != last {ring[-1].tolist()}); "
            "RFC 7946 3.1.6: a linear ring's first and last positions are identical",
            index,
        )
    return ring


def _read_polygon(rings: list[Any], index: int, what: str) -> list[np.ndarray]:
    if not rings:
        raise GeoJSONError(f"{what} has no rings", index)
    return [_read_ring(r, index, f"{what} ring {k}") for k, r in enumerate(rings)]


def _classification(props: Mapping[str, Any], index: int) -> tuple[str | None, tuple[int, int, int] | None]:
    cls = props.get("classification")
    if cls is None:
        return None, None
    if isinstance(cls, str):
        return cls, None
    if not isinstance(cls, Mapping) or not isinstance(cls.get("name"), str):
        raise GeoJSONError(f"properties.classification must be {{'name': str, 'color': [r, g, b]}}, got {_short(cls)}",
                           index)
    color = cls.get("color")
    if isinstance(color, list) and len(color) == 3 and all(isinstance(c, int) for c in color):
        return cls["name"], (color[0], color[1], color[2])
    if isinstance(cls.get("colorRGB"), int):  # QuPath 0.2 exports a packed RGB integer
        rgb = cls["colorRGB"] & 0xFFFFFF
        return cls["name"], ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
    return cls["name"], None


def _measurements(props: Mapping[str, Any], index: int) -> dict[str, Any]:
    m = props.get("measurements")
    if m is None:
        return {}
    if isinstance(m, Mapping):
        return dict(m)
    if isinstance(m, list) and all(isinstance(x, Mapping) and "name" in x and "value" in x for x in m):
        return {str(x["name"]): x["value"] for x in m}  # QuPath 0.2: [{"name": ..., "value": ...}]
    raise GeoJSONError(f"properties.measurements must be an object, got {_short(m)}", index)


def _read_feature(feature: Mapping[str, Any], index: int) -> GeoObject:
    geom = feature.get("geometry")
    if geom is None:
        raise GeoJSONError("has no geometry (null): nothing to place in the image", index)
    gtype = geom.get("type") if isinstance(geom, Mapping) else None
    if gtype not in _READABLE:
        raise GeoJSONError(f"geometry type {_short(gtype)} cannot be read back; readable types: {', '.join(_READABLE)}",
                           index)
    props = feature.get("properties") or {}
    if not isinstance(props, Mapping):
        raise GeoJSONError(f"properties must be an object or null, got {_short(props)}", index)
    name, color = _classification(props, index)
    obj = GeoObject(
        index=index,
        geometry_type=gtype,
        classification=name,
        color=color,
        object_type=props.get("objectType") if isinstance(props.get("objectType"), str) else None,
        measurements=_measurements(props, index),
        id=feature.get("id"),
        properties=dict(props),
    )
    coords = geom.get("coordinates")
    try:  # with validate=False the nesting is unchecked: turn any shape error into a GeoJSONError
        if gtype == "Point":
            obj.points = np.asarray([coords[:2]], dtype=float).reshape(1, 2)
        elif gtype == "MultiPoint":
            obj.points = np.asarray([c[:2] for c in coords], dtype=float).reshape(-1, 2)
        elif gtype == "Polygon":
            obj.polygons = [_read_polygon(coords, index, "Polygon")]
        else:
            if not coords:
                raise GeoJSONError("MultiPolygon has no polygons", index)
            obj.polygons = [_read_polygon(p, index, f"MultiPolygon polygon {k}") for k, p in enumerate(coords)]
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, GeoJSONError):
            raise
        raise GeoJSONError(f"malformed {gtype} coordinates ({exc}); {_NESTING_HINT[gtype]}", index) from exc
    if not np.isfinite(obj.points).all():
        raise GeoJSONError(f"{gtype} has a non-finite coordinate", index)
    return obj


def read_features(
    source: str | Path | Mapping[str, Any] | list[Mapping[str, Any]], validate: bool = True
) -> list[GeoObject]:
    """Read GeoJSON (a file path, a FeatureCollection, a Feature, or a list of features) into :class:`GeoObject`.

    The input is checked against the GeoJSON JSON Schema first (``validate=False`` skips that), then every feature:
    rings must be closed, geometries must be Point, MultiPoint, Polygon or MultiPolygon (what the tools write and
    QuPath exchanges). Problems raise :class:`GeoJSONError` (:class:`GeoJSONSchemaError` for schema violations)
    naming the feature index. Coordinates stay level-0 ``[x, y]``; a third (altitude) coordinate is dropped.
    """
    data = _as_collection(source)
    if validate:
        problems = _schema_problems(data)
        if problems:
            index, msg = problems[0]
            more = f" (and {len(problems) - 1} more schema errors)" if len(problems) > 1 else ""
            errors = [f"feature {i}: {m}" if i is not None else m for i, m in problems]
            raise GeoJSONSchemaError(f"{msg}{more}", index, errors)
    features = data.get("features")
    if not isinstance(features, list):
        raise GeoJSONError("'features' must be a list")
    out = []
    for index, feature in enumerate(features):
        if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
            raise GeoJSONError("is not a GeoJSON Feature object", index)
        out.append(_read_feature(feature, index))
    return out


def features_to_label_map(
    features: Any,
    shape: tuple[int, int],
    image: ImageData | None = None,
    point_radius: int = 0,
) -> np.ndarray:
    """Rasterise features into an instance label map of ``shape``: object ``k`` (0-based) gets label ``k + 1``.

    ``features`` is a list of :class:`GeoObject` or anything :func:`read_features` reads. Coordinates are level-0
    and mapped to array coordinates with ``image`` (its origin and scale) when given. A pixel belongs to a polygon
    when its centre lies inside the exterior ring and outside every hole (the inverse of how the writers trace
    outlines); points mark one pixel, or a disk of ``point_radius``. Later objects overwrite earlier ones where they
    overlap; parts outside ``shape`` are clipped. Returns int32.
    """
    from skimage.draw import disk, polygon

    objects = features if all(isinstance(f, GeoObject) for f in features) else read_features(features)
    h, w = int(shape[0]), int(shape[1])
    labels = np.zeros((h, w), dtype=np.int32)
    origin = np.asarray(image.origin if image is not None else (0.0, 0.0), dtype=float)
    scale = float(image.scale) if image is not None else 1.0

    def to_array(xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=float) - origin) / scale

    for k, obj in enumerate(objects, start=1):
        if obj.polygons:
            exteriors = np.vstack([to_array(rings[0]) for rings in obj.polygons])
            x0, y0 = (max(int(np.floor(v)), 0) for v in exteriors.min(axis=0))
            x1, y1 = min(int(np.ceil(exteriors[:, 0].max())) + 1, w), min(int(np.ceil(exteriors[:, 1].max())) + 1, h)
            if x1 > x0 and y1 > y0:
                window = (y1 - y0, x1 - x0)
                mask = np.zeros(window, dtype=bool)
                for rings in obj.polygons:
                    part = np.zeros(window, dtype=bool)
                    for j, ring in enumerate(rings):
                        xy = to_array(ring) - (x0, y0)
                        part[polygon(xy[:, 1], xy[:, 0], window)] = j == 0  # exterior in, holes out
                    mask |= part
                labels[y0:y1, x0:x1][mask] = k
        for x, y in to_array(obj.points) if len(obj.points) else []:
            r, c = int(round(y)), int(round(x))
            if point_radius > 0:
                labels[disk((r, c), point_radius + 0.5, shape=(h, w))] = k
            elif 0 <= r < h and 0 <= c < w:
                labels[r, c] = k
    return labels
