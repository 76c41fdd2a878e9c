"""JSON schemas: which keywords are guaranteed, and the regex of a schema's JSON text.

outlines-core writes the regex of a schema, but it silently ignores some keywords (`minimum`,
`maximum`, `minProperties`, `uniqueItems`, `pattern` next to `maxLength`, ...), so an answer
matching its regex need not validate. `check_schema` therefore accepts only the keywords whose
every instance the regex keeps valid, and refuses the rest by name; `schema_to_regex` compiles
what outlines-core leaves out itself: integer bounds (`numbers.integer_range_regex`) and string
patterns (wrapped so that an alternation stays inside the quotes).
"""

from __future__ import annotations

import copy
import json

from dllmserve.errors import ValidationError, echo
from dllmserve.structured.numbers import integer_range_regex

ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$anchor",
}
SUPPORTED = ANNOTATIONS | {
    "type",
    "enum",
    "const",
    "anyOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
}
# Keywords outlines-core's regex does not enforce, with what to do instead.
REFUSED = {
    "oneOf": "use anyOf (the branches are not checked to exclude each other)",
    "uniqueItems": "items are not checked to differ",
    "multipleOf": "not enforced",
    "minProperties": "not enforced",
    "maxProperties": "not enforced",
    "patternProperties": "property names are not matched against patterns",
}
SENTINEL = "__dllmserve_sentinel_{}__"


def check_schema(schema: dict, field: str) -> None:
    """Raise ValidationError naming `field` if the schema is invalid for its draft or uses a
    keyword that the compiled regex would not enforce."""
    try:
        from jsonschema import exceptions, validators
    except ImportError:  # pragma: no cover - the engine extra installs it
        raise ValidationError(field, "needs the jsonschema package (dllmserve[engine])") from None
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        reason = f"is not a valid JSON schema at #/{where}: {e.message}"
        raise ValidationError(field, reason) from None
    _walk(schema, "#", field)


def _walk(node: object, path: str, field: str) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise ValidationError(field, f"{path} must be a schema (an object), got {echo(node)}")
    for key, value in node.items():
        if key in REFUSED:
            reason = f"keyword {key!r} at {path} is unsupported: {REFUSED[key]}"
            raise ValidationError(field, reason)
        if key not in SUPPORTED:
            raise ValidationError(
                field, f"keyword {key!r} at {path} is unsupported (docs/structured_outputs.md)"
            )
        if key in ("properties", "$defs", "definitions"):
            for name, sub in value.items():
                _walk(sub, f"{path}/{key}/{name}", field)
        elif key in ("anyOf", "prefixItems") or (key == "allOf" and len(value) == 1):
            for i, sub in enumerate(value):
                _walk(sub, f"{path}/{key}/{i}", field)
        elif key == "allOf":
            raise ValidationError(field, f"allOf at {path} must hold one schema, not {len(value)}")
        elif key in ("items", "additionalProperties") and isinstance(value, (dict, bool)):
            _walk(value, f"{path}/{key}", field)
    if "pattern" in node and ({"minLength", "maxLength"} & node.keys()):
        raise ValidationError(
            field,
            f"pattern at {path} cannot be combined with min/maxLength "
            "(write the length into the pattern)",
        )
    bounded = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & node.keys()
    if bounded and node.get("type") != "integer":
        raise ValidationError(
            field, f"{sorted(bounded)[0]} at {path} is supported on type integer only"
        )
    if bounded and not ({"enum", "const"} & node.keys()):
        _bounds(node, path, field)


def _bounds(node: dict, path: str, field: str) -> tuple[int | None, int | None]:
    """The inclusive integer range of an integer schema's bounds."""
    lo = hi = None
    for key, value in node.items():
        if key not in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        if isinstance(value, bool):  # draft 4's boolean exclusives
            raise ValidationError(field, f"{key} at {path} must be a number (draft 6 or later)")
        if key == "minimum":
            lo = max(lo, _ceil(value)) if lo is not None else _ceil(value)
        elif key == "exclusiveMinimum":
            v = _floor(value) + 1
            lo = max(lo, v) if lo is not None else v
        elif key == "maximum":
            hi = min(hi, _floor(value)) if hi is not None else _floor(value)
        else:
            v = _ceil(value) - 1
            hi = min(hi, v) if hi is not None else v
    if lo is not None and hi is not None and lo > hi:
        raise ValidationError(field, f"the bounds at {path} leave no integer")
    return lo, hi


def _floor(x: float) -> int:
    return int(x // 1)


def _ceil(x: float) -> int:
    return -int(-x // 1)


def schema_to_regex(schema_text: str, field: str) -> tuple[str, list[str]]:
    """The regex of the schema's JSON text (a checked schema): outlines-core's, with the bounded
    integers and string patterns filled in by sentinels it copies verbatim; and the string
    patterns, which the compiler checks never to write a character JSON must escape."""
    from outlines_core.json_schema import build_regex_from_schema

    schema = json.loads(schema_text)
    fills: dict[str, str] = {}
    schema = _replace(copy.deepcopy(schema), fills, "#", field)
    try:
        regex = build_regex_from_schema(json.dumps(schema))
    except (ValueError, TypeError) as e:
        raise ValidationError(field, f"is not supported: {str(e).splitlines()[0]}") from None
    for sentinel, fill in fills.items():
        regex = regex.replace(f'"{sentinel}"', fill)
    patterns = [f[4:-2] for f in fills.values() if f.startswith('"')]
    return regex, patterns


def _replace(node: object, fills: dict[str, str], path: str, field: str) -> object:
    """The schema with each bounded integer and each string pattern replaced by a sentinel
    const, whose regex `fills` maps it to."""
    if not isinstance(node, dict):
        return node
    if {"enum", "const"} & node.keys():
        return node
    fill = None
    if node.get("type") == "integer" and _bounded(node):
        fill = integer_range_regex(*_bounds(node, path, field))
    elif node.get("type") == "string" and "pattern" in node:
        fill = '"(?:' + _unanchored(node["pattern"]) + ')"'
    if fill is not None:
        sentinel = SENTINEL.format(len(fills))
        fills[sentinel] = fill
        return {"const": sentinel}
    out = dict(node)
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions"):
            out[key] = {k: _replace(v, fills, f"{path}/{key}/{k}", field) for k, v in value.items()}
        elif key in ("anyOf", "allOf", "prefixItems"):
            out[key] = [_replace(v, fills, f"{path}/{key}/{i}", field) for i, v in enumerate(value)]
        elif key in ("items", "additionalProperties"):
            out[key] = _replace(value, fills, f"{path}/{key}", field)
    return out


def _bounded(node: dict) -> bool:
    return bool({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & node.keys())


def _unanchored(pattern: str) -> str:
    """A pattern without its outer ^ / $: the string's whole content matches it."""
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and (len(pattern) - len(pattern[:-1].rstrip("\\")) - 1) % 2 == 0:
        pattern = pattern[:-1]
    return pattern
