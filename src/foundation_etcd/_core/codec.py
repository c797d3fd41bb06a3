"""JSON payloads: encoded once, checked for size before anything is sent."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import RequestTooLargeError, SerializationError

__all__ = ["decode", "encode", "json_object"]

# one encoder for every call: ``json.dumps`` with these options builds a new one each time
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=True)


def encode(value: Any, what: str, limit: int) -> bytes:
    """Encode ``value`` as compact JSON.

    Args:
        value: a JSON-compatible value (dicts with str keys, lists, str, numbers, bools, None).
        what: what the payload is, for error messages.
        limit: the largest encoding accepted, in bytes.

    Raises:
        SerializationError: ``value`` cannot be encoded (a set, an object, a NaN...).
        RequestTooLargeError: the encoding is larger than ``limit``.
    """
    try:
        data = _ENCODER.encode(value).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(what, str(exc)) from None
    if len(data) > limit:
        raise RequestTooLargeError(len(data), limit, what)
    return data


def decode(data: bytes) -> Any:
    """Decode a JSON payload written by :func:`encode`.

    Raises:
        ValueError: ``data`` is not JSON. That includes bytes that are not UTF-8 and JSON
            nested too deeply for the parser: a crafted value fails as any malformed one
            does, never with the parser's ``RecursionError``.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def json_object(value: object, what: str) -> dict[str, Any]:
    """``value`` as a new ``dict``: a mapping with ``str`` keys (a JSON object); ``None``: empty.

    Raises:
        SerializationError: anything else, naming ``what``.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SerializationError(
            what, f"must be a mapping with str keys (a JSON object), not {type(value).__name__}"
        )
    for key in value:
        if not isinstance(key, str):
            raise SerializationError(what, f"keys must be str, not {key!r}")
    return dict(value)
