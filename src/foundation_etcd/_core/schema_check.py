"""Decoded JSON values checked against the schemas :mod:`.schema` emits, before an action runs.

Only the keywords that module emits are understood: ``type``, ``enum``, ``anyOf``,
``items``, ``prefixItems``, ``minItems``/``maxItems``, ``properties``, ``required`` and
``additionalProperties``; ``description`` and ``default`` say nothing about validity.

Guarantees:
    * Pure: no I/O; the value is never changed or coerced.
    * JSON's types, not Python's: a boolean is no integer or number (``True`` is not ``1``
      here), an integer is a number, and an enum value matches only a value of its own
      JSON type.
    * :class:`TypeError` for the first mismatch, its message the path to the value
      (``f() argument 'n'``, ``... 'items'[2]``, ``... 'point'.x``), what the schema
      expects and what was given.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from typing import Any

__all__ = ["check_value"]


def _kind(value: Any) -> str:
    """The JSON type of a decoded value (``"unknown"`` for anything JSON does not have)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else "unknown"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "unknown"


def _fits_type(kind: str, wanted: str) -> bool:
    return kind == wanted or (wanted == "number" and kind == "integer")


def _family(kind: str) -> str:
    """Integers and numbers compare as numbers (an enum of 1.0 takes 1); nothing else mixes."""
    return "number" if kind == "integer" else kind


_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 40, 40, 4, 4


def _shown(value: Any) -> str:
    """A short repr, bounded in depth and length (a deep or huge value costs nothing)."""
    return _REPR.repr(value)


def _wanted(schema: Mapping[str, Any]) -> str:
    """What ``schema`` expects, in a few words."""
    if "enum" in schema:
        return "one of " + ", ".join(_shown(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_wanted(s) for s in schema["anyOf"]) or "nothing"
    return str(schema.get("type", "anything"))


def _mismatch(path: str, schema: Mapping[str, Any], value: Any) -> TypeError:
    return TypeError(f"{path}: expected {_wanted(schema)}, got {_kind(value)} {_shown(value)}")


def check_value(schema: Mapping[str, Any], value: Any, path: str) -> None:
    """Check ``value`` (decoded JSON) against ``schema``.

    Args:
        schema: a schema as :func:`.schema.parameters_schema` emits them.
        value: the value to check.
        path: where the value is (the start of the error message).

    Raises:
        TypeError: the value does not fit the schema.
    """
    kind = _kind(value)
    if "anyOf" in schema:
        near: TypeError | None = None  # the error of an option of the value's own type
        for option in schema["anyOf"]:
            try:
                check_value(option, value, path)
            except TypeError as exc:
                wanted = option.get("type")
                if near is None and wanted is not None and _fits_type(kind, wanted):
                    near = exc
                continue
            return
        raise near or _mismatch(path, schema, value)
    if "enum" in schema:
        family = _family(kind)
        if not any(_family(_kind(v)) == family and v == value for v in schema["enum"]):
            raise _mismatch(path, schema, value)
        return
    wanted = schema.get("type")
    if wanted is not None and not _fits_type(kind, wanted):
        raise _mismatch(path, schema, value)
    if kind == "array":
        _check_array(schema, value, path)
    elif kind == "object":
        _check_object(schema, value, path)


def _check_array(schema: Mapping[str, Any], value: Any, path: str) -> None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if (low is not None and len(value) < low) or (high is not None and len(value) > high):
        count = f"{low}" if low == high else f"{low or 0} to {high if high is not None else 'any'}"
        raise TypeError(f"{path}: expected an array of {count} items, got {len(value)}")
    prefix = schema.get("prefixItems", ())
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else schema.get("items")
        if sub is not None:
            check_value(sub, item, f"{path}[{i}]")


def _check_object(schema: Mapping[str, Any], value: Mapping[Any, Any], path: str) -> None:
    props: Mapping[str, Any] = schema.get("properties", {})
    missing = [name for name in schema.get("required", ()) if name not in value]
    if missing:
        raise TypeError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{path}: key {_shown(key)} is not a string")
        if key in props:
            check_value(props[key], item, f"{path}.{key}")
        elif extra is False:
            raise TypeError(
                f"{path}: unknown key {key!r}; it takes {', '.join(map(repr, props)) or 'none'}"
            )
        elif isinstance(extra, Mapping):
            check_value(extra, item, f"{path}[{key!r}]")
