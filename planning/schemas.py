"""Tool input JSON schemas as planners meet them: ``$ref`` resolution, enum and type look-ups, and argument validation
(``jsonschema`` when installed, otherwise a small built-in validator for the subset pydantic emits)."""

from __future__ import annotations

from typing import Any

__all__ = ["VALIDATOR_NAME", "enum_of", "resolve_schema", "schema_variants", "types_of", "validate_arguments"]

try:  # optional dependency: precise JSON-schema validation
    import jsonschema as _jsonschema  # type: ignore[import-untyped]

    VALIDATOR_NAME = "jsonschema"
except ImportError:  # pragma: no cover - depends on the environment
    _jsonschema = None
    VALIDATOR_NAME = "builtin-subset"


def resolve_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, _depth: int = 0) -> dict[str, Any]:
    """``schema`` with local ``$ref``s followed (one level at a time; ``root`` holds ``$defs``)."""
    root = root if root is not None else schema
    if _depth > 20 or not isinstance(schema, dict):
        return schema if isinstance(schema, dict) else {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return resolve_schema(merged, root, _depth + 1)
    return schema


def schema_variants(prop: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property schema (``anyOf``/``oneOf`` unpacked)."""
    prop = resolve_schema(prop, root)
    alts = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(alts, list):
        out = [resolve_schema(a, root) for a in alts if isinstance(a, dict)]
        return [a for a in out if a.get("type") != "null"]
    return [prop]


def enum_of(prop: dict[str, Any], root: dict[str, Any]) -> list[Any] | None:
    """The allowed values of a property (its ``enum`` or ``const``, through ``anyOf``), or None."""
    for v in schema_variants(prop, root):
        if isinstance(v.get("enum"), list):
            return list(v["enum"])
        if "const" in v:
            return [v["const"]]
    return None


def types_of(prop: dict[str, Any], root: dict[str, Any]) -> set[str]:
    """The JSON types a property allows (through ``anyOf``)."""
    types: set[str] = set()
    for v in schema_variants(prop, root):
        t = v.get("type")
        if isinstance(t, str):
            types.add(t)
        elif isinstance(t, list):
            types.update(x for x in t if isinstance(x, str))
    return types


_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _builtin_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    """A small validator for the JSON-schema subset pydantic emits (used when ``jsonschema`` is missing)."""
    schema = resolve_schema(schema, root)
    errors: list[str] = []
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            results = [_builtin_errors(value, alt, root, path) for alt in schema[key]]
            if key == "anyOf" and not any(not r for r in results):
                reqs = [a.get("required") for a in schema[key] if isinstance(a, dict)]
                if reqs and all(isinstance(r, list) and set(a) == {"required"} for r, a in zip(reqs, schema[key], strict=True)):
                    errors.append(f"{path}: needs one of: {' | '.join('+'.join(r) for r in reqs)}")
                else:
                    errors.append(f"{path}: matches none of the allowed forms")
            if key == "oneOf" and sum(1 for r in results if not r) != 1:
                errors.append(f"{path}: must match exactly one allowed form")
    if isinstance(schema.get("allOf"), list):
        for alt in schema["allOf"]:
            errors.extend(_builtin_errors(value, alt, root, path))
    t = schema.get("type")
    types = [t] if isinstance(t, str) else (t if isinstance(t, list) else [])
    if types and not any(_TYPE_CHECKS.get(x, lambda v: True)(value) for x in types):
        return [*errors, f"{path}: expected {'/'.join(types)}, got {type(value).__name__}"]
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, ok in (
            ("minimum", lambda a, b: a >= b),
            ("maximum", lambda a, b: a <= b),
            ("exclusiveMinimum", lambda a, b: a > b),
            ("exclusiveMaximum", lambda a, b: a < b),
        ):
            if isinstance(schema.get(key), (int, float)) and not ok(value, schema[key]):
                errors.append(f"{path}: {value} violates {key} {schema[key]}")
    if isinstance(value, str):
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, list):
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                errors.extend(_builtin_errors(item, items, root, f"{path}[{i}]"))
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            for i, (item, sub) in enumerate(zip(value, prefix, strict=False)):
                errors.extend(_builtin_errors(item, sub, root, f"{path}[{i}]"))
    if isinstance(value, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for req in schema.get("required", []) or []:
            if req not in value:
                errors.append(f"{path}.{req}: required")
        for k, v in value.items():
            if k in props:
                errors.extend(_builtin_errors(v, props[k], root, f"{path}.{k}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{k}: unexpected argument")
    return errors


def validate_arguments(arguments: Any, schema: dict[str, Any]) -> list[str]:
    """Error messages for ``arguments`` against a tool's JSON ``schema`` (empty list = valid)."""
    if not isinstance(schema, dict) or not schema:
        return [] if isinstance(arguments, dict) else ["arguments must be an object"]
    if _jsonschema is not None:
        try:
            validator_cls = _jsonschema.validators.validator_for(schema)
            validator = validator_cls(schema)
            return [
                f"{'.'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message}"
                for e in validator.iter_errors(arguments)
            ]
        except _jsonschema.exceptions.SchemaError as exc:
            return [f"tool schema is invalid: {exc.message}"]
    return _builtin_errors(arguments, schema, schema, "arguments")
