"""Tool definitions for language models, derived from a Python function's signature.

A tool is a method of an agent class: its parameters (after ``self``; a parameter named
``ctx``, the agent context, is never offered to the model) become a JSON Schema, its
docstring the tool's description (the summary and body, up to the first Google-style
section) and its Google-style ``Args:`` section the parameters' descriptions.

Type hints map as follows: ``int``, ``float``, ``str``, ``bool`` and ``None`` to the JSON
types; ``list[X]``, ``Sequence[X]`` and ``tuple[X, ...]`` to arrays of ``X``;
``tuple[X, Y]`` to a fixed-length array; ``dict[str, X]`` and ``Mapping[str, X]`` to
objects of ``X``; unions (``Optional[X]``, ``X | None``) to ``anyOf``; ``Literal[...]``
and :class:`enum.Enum` subclasses to ``enum`` (of the values); TypedDicts and dataclasses
to closed objects; ``NewType`` to its base; ``Any`` or no hint to ``{}`` (anything).
``Annotated[X, "text"]`` describes ``X``; an ``Args:`` entry describes a parameter whose
hint does not. A JSON-serializable default is the property's ``"default"``.

Guarantees:
    * Pure: no I/O, no global state; the same function always gives the same schema.
      Nothing of the function is called, and neither is a dataclass's default factory.
    * Every schema emitted is valid JSON Schema (draft 2020-12) made of JSON values only
      (dicts, lists, strings, finite numbers, booleans, ``None``), and every object in it
      is closed (``additionalProperties: false``) unless it is a ``dict``/``Mapping``.
    * Refused with :class:`TypeError`, with a message naming the function, the parameter
      and the hint: ``*args`` and ``**kwargs``, positional-only parameters (tools are called
      with keyword arguments), hints that cannot be resolved, and hints outside the list
      above: a plain class, ``bytes``, ``set``, a mapping whose keys are not ``str``, a
      ``Literal`` or ``Enum`` value that is not a JSON scalar, an ``Enum`` without members,
      a TypedDict or dataclass that contains itself.
    * :func:`check_arguments` checks the names and the values (JSON types, as the schema
      says) and never coerces: a dataclass-typed argument arrives as a ``dict``, an
      ``Enum``-typed one as the member's value.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

from .schema_check import check_value

__all__ = [
    "arg_descriptions",
    "check_arguments",
    "describe",
    "parameters_schema",
    "tool_definition",
]

_ARGS: typing.Final = "Args|Arguments|Keyword Args|Keyword Arguments|Parameters|Params"
_ARGS_HEADER: typing.Final = re.compile(rf"(?:{_ARGS})\s*:")
_HEADER: typing.Final = re.compile(
    rf"(?:{_ARGS}|Attributes|Examples?|Methods|Notes?|Other Parameters|Raises|References"
    r"|Returns?|See Also|Todo|Warnings?|Warns|Yields?)\s*:"
)
_ENTRY: typing.Final = re.compile(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:(.*)")
_SCALARS: typing.Final = {bool: "boolean", int: "integer", float: "number", str: "string"}
_P = inspect.Parameter


def parameters_schema(fn: Callable[..., Any], *, skip_first: bool = True) -> dict[str, Any]:
    """The JSON Schema (an object) of ``fn``'s parameters.

    Args:
        fn: the function; with ``skip_first`` a method taken from its class (unbound).
        skip_first: skip the first parameter (``self``); a bound method has none to skip.

    Raises:
        TypeError: a parameter or a hint outside what the module docstring lists.
    """
    name = _name(fn)
    hints = _hints(fn, name)
    docs = arg_descriptions(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in _params(fn, skip_first):
        prop = _schema(hints.get(param.name, Any), f"parameter {param.name!r} of {name}", ())
        if "description" not in prop and param.name in docs:
            prop = {"description": docs[param.name], **prop}
        if param.default is _P.empty:
            required.append(param.name)
        else:
            prop = _with_default(prop, param.default)
        properties[param.name] = prop
    return _object(properties, required)


def describe(fn: Callable[..., Any]) -> str:
    """The description of ``fn`` as a tool: its docstring up to the first section header."""
    lines = (inspect.getdoc(fn) or "").splitlines()
    return "\n".join(itertools.takewhile(lambda x: not _HEADER.fullmatch(x.strip()), lines)).strip()


def arg_descriptions(fn: Callable[..., Any]) -> dict[str, str]:
    """The parameters' descriptions from the Google-style ``Args:`` section of ``fn``.

    An entry is ``name: text`` or ``name (type): text``; lines indented deeper than the
    entries continue the entry above (joined with a space).
    """
    descriptions: dict[str, str] = {}
    section_at: int | None = None  # the indentation of the Args header we are under
    entry_at: int | None = None
    current: str | None = None
    for line in (inspect.getdoc(fn) or "").splitlines():
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        if text and (section_at is None or indent <= section_at):
            section_at = indent if _ARGS_HEADER.fullmatch(text) else None
            entry_at = current = None
            continue
        if section_at is None or not text:
            continue
        if entry_at is None:
            entry_at = indent
        match = _ENTRY.fullmatch(text) if indent <= entry_at else None
        if match:
            current = match[1]
            descriptions[current] = match[2].strip()
        elif current is not None:
            descriptions[current] = f"{descriptions[current]} {text}".strip()
    return descriptions


def tool_definition(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """The tool ``name``: its description and the schema of its parameters."""
    return {"name": name, "description": describe(fn), "parameters": parameters_schema(fn)}


def check_arguments(
    fn: Callable[..., Any], arguments: Mapping[str, Any], *, skip_first: bool = True
) -> dict[str, Any]:
    """Check a model's ``arguments`` against ``fn``'s parameters; return them as a dict.

    The names are checked (``self`` and ``ctx`` are not arguments a model may give), and
    each value against its parameter's schema (:func:`parameters_schema`, checked by
    :func:`.schema_check.check_value`); values are returned as given, uncoerced.

    Raises:
        TypeError: an unknown argument, a missing required one, a value its parameter's
            type does not take, or a parameter that cannot be a tool's (``*args``,
            ``**kwargs``, positional-only, a hint outside the module docstring's list).
    """
    plain = inspect.isfunction(fn)
    if plain:  # a plain function's parameters are read once
        names, required = _names_cached(fn, skip_first)
    else:  # a bound method or other callable: not kept alive by a cache
        names, required = _names(fn, skip_first)
    unknown = [key for key in arguments if key not in names]
    if unknown:
        takes = ", ".join(map(repr, names)) or "no arguments"
        raise TypeError(
            f"{_name(fn)}() got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"it takes {takes}"
        )
    missing = [n for n in required if n not in arguments]
    if missing:
        raise TypeError(
            f"{_name(fn)}() is missing required argument(s) {', '.join(map(repr, missing))}"
        )
    if plain:
        schema = _schema_cached(fn, skip_first)
    else:  # another callable (a partial...): its hints may not be readable; names only then
        try:
            schema = parameters_schema(fn, skip_first=skip_first)
        except TypeError:
            return dict(arguments)
    for key, value in arguments.items():
        prop = schema["properties"][key]
        if value is None and "default" in prop and prop["default"] is None:
            continue  # ``x: int = None``: the default given explicitly
        check_value(prop, value, f"{_name(fn)}() argument {key!r}")
    return dict(arguments)


def _names(fn: Callable[..., Any], skip_first: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names a model may give ``fn``, and those of them that are required."""
    params = _params(fn, skip_first)
    return (
        tuple(p.name for p in params),
        tuple(p.name for p in params if p.default is _P.empty),
    )


_names_cached = functools.lru_cache(maxsize=1024)(_names)


@functools.lru_cache(maxsize=1024)
def _schema_cached(fn: Callable[..., Any], skip_first: bool) -> dict[str, Any]:
    return parameters_schema(fn, skip_first=skip_first)


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _hints(obj: Any, where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot resolve the type hints of {where}: {exc!r}") from exc


def _params(fn: Callable[..., Any], skip_first: bool) -> list[inspect.Parameter]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of {_name(fn)}: {exc}") from exc
    first = params[0].kind if params and not inspect.ismethod(fn) else None  # bound: no self
    if skip_first and first in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
        params = params[1:]
    for param in params:
        if param.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            stars = "*" if param.kind is _P.VAR_POSITIONAL else "**"
            raise TypeError(f"{_name(fn)} takes {stars}{param.name}: a tool's parameters are named")
        if param.kind is _P.POSITIONAL_ONLY and param.name != "ctx":
            raise TypeError(f"parameter {param.name!r} of {_name(fn)} is positional-only")
    return [param for param in params if param.name != "ctx"]


def _object(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def _with_default(schema: dict[str, Any], value: Any) -> dict[str, Any]:
    def encode(obj: Any) -> Any:
        if isinstance(obj, enum.Enum):
            return obj.value
        raise TypeError(f"{obj!r} is not JSON")

    try:
        default = json.loads(json.dumps(value, allow_nan=False, default=encode))
    except (TypeError, ValueError, RecursionError):
        return schema  # not JSON: the default stays the function's business
    return {**schema, "default": default}


def _json_type(value: Any) -> str | None:
    for kind, name in ((type(None), "null"), (bool, "boolean"), (str, "string"), (int, "integer")):
        if isinstance(value, kind):
            return name
    return "number" if isinstance(value, float) and math.isfinite(value) else None


def _enum(values: list[Any], where: str, hint: Any) -> dict[str, Any]:
    if not values:
        raise TypeError(f"{hint!r} for {where} has no values")
    kinds = {_json_type(value) for value in values}
    if None in kinds:
        raise TypeError(f"{hint!r} for {where} has a value that is not a JSON scalar")
    if kinds == {"integer", "number"}:
        kinds = {"number"}
    return {"type": kinds.pop(), "enum": values} if len(kinds) == 1 else {"enum": values}


def _schema(hint: Any, where: str, seen: tuple[type, ...]) -> dict[str, Any]:
    origin, args = get_origin(hint), get_args(hint)
    if origin is typing.Annotated:
        schema = _schema(args[0], where, seen)
        text = next((m for m in hint.__metadata__ if isinstance(m, str)), None)
        return schema if text is None else {"description": text, **schema}
    if origin is Required or origin is NotRequired:
        return _schema(args[0], where, seen)
    if hint is Any:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if isinstance(hint, type) and hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin is Union or origin is types.UnionType:
        return {"anyOf": [_schema(arg, where, seen) for arg in args]}
    if origin is Literal:
        values = [arg.value if isinstance(arg, enum.Enum) else arg for arg in args]
        return _enum(values, where, hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum([member.value for member in hint], where, hint)
    if isinstance(hint, typing.NewType):
        return _schema(hint.__supertype__, where, seen)
    if origin is None and hint in (list, tuple, dict, Sequence, Mapping):
        origin = hint
    if origin is list or origin is Sequence or (origin is tuple and args[1:] == (...,)):
        return {"type": "array", **({"items": _schema(args[0], where, seen)} if args else {})}
    if origin is tuple:
        if hint is tuple or hint is typing.Tuple:  # noqa: UP006 (the bare alias is a hint too)
            return {"type": "array"}
        items = [_schema(arg, where, seen) for arg in args]
        bounds = {"minItems": len(items), "maxItems": len(items)}
        return {"type": "array", **({"prefixItems": items} if items else {}), **bounds}
    if origin is dict or origin is Mapping:
        if not args:
            return {"type": "object"}
        if args[0] is not str:
            raise TypeError(f"{hint!r} for {where}: the keys of a JSON object are str")
        return {"type": "object", "additionalProperties": _schema(args[1], where, seen)}
    if isinstance(hint, type) and (typing.is_typeddict(hint) or dataclasses.is_dataclass(hint)):
        if hint in seen:
            raise TypeError(f"{hint!r} for {where} contains itself")
        return _record(hint, where, (*seen, hint))
    raise TypeError(f"unsupported type hint {hint!r} for {where}")


def _record(cls: type, where: str, seen: tuple[type, ...]) -> dict[str, Any]:
    """The closed-object schema of a TypedDict or a dataclass."""
    hints = _hints(cls, f"{cls.__qualname__} (for {where})")
    properties: dict[str, Any] = {}
    required: list[str] = []
    if typing.is_typeddict(cls):
        for key, hint in hints.items():
            properties[key] = _schema(hint, f"key {key!r} of {where}", seen)
            origin = get_origin(hint)  # Required/NotRequired first: 3.11 misses them as strings
            if origin is Required or (
                origin is not NotRequired and key in getattr(cls, "__required_keys__", ())
            ):
                required.append(key)
        return _object(properties, required)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        prop = _schema(hints.get(field.name, Any), f"field {field.name!r} of {where}", seen)
        if field.default is not dataclasses.MISSING:
            prop = _with_default(prop, field.default)
        elif field.default_factory is dataclasses.MISSING:
            required.append(field.name)
        properties[field.name] = prop
    return _object(properties, required)
