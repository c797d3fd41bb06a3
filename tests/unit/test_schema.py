"""Tool definitions from signatures (``_core.schema``): every schema checked with jsonschema.

The module uses ``from __future__ import annotations`` on purpose: every hint below is a
string until ``typing.get_type_hints`` resolves it (so the types live at module level).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NewType, NotRequired, Optional, Required, TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from foundation_etcd._core.schema import (
    arg_descriptions,
    check_arguments,
    describe,
    parameters_schema,
    tool_definition,
)
from foundation_etcd._core.schema_check import check_value


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mixed(enum.Enum):
    ONE = 1
    NAME = "name"


class Empty(enum.Enum):
    pass


class Blob(enum.Enum):
    RAW = b"raw"


class Movie(TypedDict):
    title: str
    year: NotRequired[int]


class Options(TypedDict, total=False):
    name: Required[str]
    verbose: bool


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0
    tags: list[str] = dataclasses.field(default_factory=list)
    cached: int = dataclasses.field(default=0, init=False)


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node]


class Plain:
    pass


UserId = NewType("UserId", int)


def assert_valid(schema: dict[str, Any], good: Any, bad: Any) -> None:
    """``schema`` is valid draft 2020-12 JSON Schema, made of JSON, accepting good only."""
    Draft202012Validator.check_schema(schema)
    assert json.loads(json.dumps(schema, allow_nan=False)) == schema
    validator = Draft202012Validator(schema)
    validator.validate(good)
    assert not validator.is_valid(bad), bad


def with_hint(hint: Any) -> Any:
    """A method ``f(self, x)`` whose annotation of ``x`` is ``hint`` (an object, not a string)."""

    def f(self, x):  # type: ignore[no-untyped-def]
        pass

    f.__annotations__ = {"x": hint}
    return f


def x_schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": ["x"],
        "additionalProperties": False,
    }


MAPPINGS = [
    (int, {"type": "integer"}, 3, 3.5),
    (float, {"type": "number"}, 3.5, "3.5"),
    (str, {"type": "string"}, "s", 1),
    (bool, {"type": "boolean"}, True, 1),
    (None, {"type": "null"}, None, 0),
    (type(None), {"type": "null"}, None, False),
    (list[int], {"type": "array", "items": {"type": "integer"}}, [1, 2], [1, "2"]),
    (typing.List[int], {"type": "array", "items": {"type": "integer"}}, [], ["a"]),  # noqa: UP006
    (list, {"type": "array"}, [1, "a"], {"a": 1}),
    (Sequence[str], {"type": "array", "items": {"type": "string"}}, ["a"], "a"),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}, [1, 2, 3], [1.5]),
    (
        tuple[int, str],
        {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2,
            "maxItems": 2,
        },
        [1, "a"],
        [1, "a", "b"],
    ),
    (tuple[()], {"type": "array", "minItems": 0, "maxItems": 0}, [], [1]),
    (tuple, {"type": "array"}, [1, "a"], "a"),
    (
        dict[str, int],
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"a": 1},
        {"a": "1"},
    ),
    (
        Mapping[str, list[float]],
        {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "number"}}},
        {"a": [1, 2.5]},
        {"a": 1},
    ),
    (dict, {"type": "object"}, {"a": [1]}, [1]),
    (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}, None, "1"),  # noqa: UP045
    (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}, 1, 1.5),
    (
        int | str | None,
        {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
        "a",
        [],
    ),
    (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}, "b", "c"),
    (Literal[1, 2], {"type": "integer", "enum": [1, 2]}, 2, 3),
    (Literal[1, 2.5], {"type": "number", "enum": [1, 2.5]}, 2.5, 2),
    (Literal[True], {"type": "boolean", "enum": [True]}, True, 1),
    (Literal[None], {"type": "null", "enum": [None]}, None, 0),
    (Literal[1, "a"], {"enum": [1, "a"]}, "a", "1"),
    (Literal[Color.RED], {"type": "string", "enum": ["red"]}, "red", "RED"),
    (Color, {"type": "string", "enum": ["red", "green"]}, "green", "blue"),
    (Priority, {"type": "integer", "enum": [1, 2]}, 1, 3),
    (Mixed, {"enum": [1, "name"]}, "name", "ONE"),
    (UserId, {"type": "integer"}, 7, "7"),
    (
        Movie,
        {
            "type": "object",
            "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
            "required": ["title"],
            "additionalProperties": False,
        },
        {"title": "Alien"},
        {"title": "Alien", "director": "Scott"},
    ),
    (
        Options,
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "verbose": {"type": "boolean"}},
            "required": ["name"],
            "additionalProperties": False,
        },
        {"name": "n"},
        {"verbose": True},
    ),
    (
        Point,
        {
            "type": "object",
            "properties": {
                "x": {"type": "number"},
                "y": {"type": "number", "default": 0.0},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["x"],
            "additionalProperties": False,
        },
        {"x": 1, "tags": ["a"]},
        {"y": 1.0},
    ),
    (
        list[Point],
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "x": {"type": "number"},
                    "y": {"type": "number", "default": 0.0},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["x"],
                "additionalProperties": False,
            },
        },
        [{"x": 1}, {"x": 2, "y": 3}],
        [{"x": 1, "cached": 3}],
    ),
    (Annotated[int, "how many"], {"description": "how many", "type": "integer"}, 1, "1"),
    (
        list[Annotated[str, "a tag"]],
        {"type": "array", "items": {"description": "a tag", "type": "string"}},
        ["a"],
        [1],
    ),
]


@pytest.mark.parametrize(("hint", "expected", "good", "bad"), MAPPINGS)
def test_mappings(hint: Any, expected: dict[str, Any], good: Any, bad: Any) -> None:
    schema = parameters_schema(with_hint(hint))
    assert schema == x_schema({"x": expected})
    assert_valid(schema, {"x": good}, {"x": bad})


@pytest.mark.parametrize("hint", [Any, "missing"])
def test_any_or_missing_hint_accepts_anything(hint: Any) -> None:
    fn = with_hint(hint)
    if hint == "missing":
        fn.__annotations__ = {}
    schema = parameters_schema(fn)
    assert schema == x_schema({"x": {}})
    for anything in (None, 1, "s", [1, {"a": None}], {"b": 2.5}):
        assert_valid(schema, {"x": anything}, {"x": anything, "y": 1})
    assert_valid(schema, {"x": 1}, {})


class Tools:
    """The hints of these methods are strings (``from __future__ import annotations``)."""

    def search(
        self,
        ctx: object,
        query: Annotated[str, "what to look for"],
        limit: int = 10,
        colors: list[Color] | None = None,
        point: Point | None = None,
    ) -> list[str]:
        """Search the catalogue.

        Results are ranked
            by relevance.

        Args:
            query: ignored, the Annotated description wins.
            limit: at most this many results,
                counted after ranking.
            colors (list[Color]): only these colors.

        Returns:
            The titles.
        """
        return []

    def nothing(self) -> None:
        pass

    def only_ctx(self, ctx: object) -> None:
        """Do nothing.

        Returns:
            Nothing.
        """


def test_methods_with_string_hints_skip_self_and_ctx() -> None:
    schema = parameters_schema(Tools.search)
    assert schema == {
        "type": "object",
        "properties": {
            "query": {"description": "what to look for", "type": "string"},
            "limit": {
                "description": "at most this many results, counted after ranking.",
                "type": "integer",
                "default": 10,
            },
            "colors": {
                "description": "only these colors.",
                "anyOf": [
                    {"type": "array", "items": {"type": "string", "enum": ["red", "green"]}},
                    {"type": "null"},
                ],
                "default": None,
            },
            "point": {
                "anyOf": [parameters_schema(with_hint(Point))["properties"]["x"], {"type": "null"}],
                "default": None,
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    }
    assert_valid(schema, {"query": "q", "colors": ["red"], "point": {"x": 1}}, {"limit": 3})
    assert_valid(schema, {"query": "q", "limit": 5}, {"query": "q", "ctx": {}})
    assert_valid(schema, {"query": "q", "point": None}, {"query": "q", "colors": ["blue"]})
    for fn in (Tools.nothing, Tools.only_ctx):
        empty = parameters_schema(fn)
        assert empty == {
            "type": "object",
            "properties": {},
            "required": [],
            "additionalProperties": False,
        }
        assert_valid(empty, {}, {"ctx": 1})


def test_skip_first_false_for_plain_functions() -> None:
    def add(a: int, b: int = 1) -> int:
        return a + b

    schema = parameters_schema(add, skip_first=False)
    assert list(schema["properties"]) == ["a", "b"]
    assert schema["required"] == ["a"]
    assert_valid(schema, {"a": 1}, {"b": 1})
    assert list(parameters_schema(add)["properties"]) == ["b"]  # the default skips `a`


def test_a_bound_method_has_no_self_to_skip() -> None:
    bound = parameters_schema(Tools().search)
    assert bound == parameters_schema(Tools.search)
    assert check_arguments(Tools().search, {"query": "q"}) == {"query": "q"}


def test_defaults() -> None:
    sentinel = object()

    def f(
        self: object,
        n: int = 3,
        color: Color = Color.GREEN,
        pair: tuple[int, int] = (1, 2),
        names: dict[str, int] | None = None,
        opaque: Any = sentinel,
        nan: float = float("nan"),
        keyword: str = "k",
    ) -> None:
        pass

    schema = parameters_schema(f)
    props = schema["properties"]
    assert schema["required"] == []
    assert props["n"]["default"] == 3
    assert props["color"]["default"] == "green"
    assert props["pair"]["default"] == [1, 2]
    assert props["names"]["default"] is None
    assert "default" not in props["opaque"]  # not JSON: left out, still optional
    assert "default" not in props["nan"]
    assert props["keyword"]["default"] == "k"
    assert_valid(schema, {}, {"n": "3"})


def test_keyword_only_parameters_are_parameters() -> None:
    def f(self: object, a: int, *, b: str, c: bool = False) -> None:
        pass

    schema = parameters_schema(f)
    assert schema["required"] == ["a", "b"]
    assert_valid(schema, {"a": 1, "b": "x"}, {"a": 1})


def test_annotated_non_string_metadata_is_ignored() -> None:
    schema = parameters_schema(with_hint(Annotated[int, 42, "the count", "not this"]))
    assert schema["properties"]["x"] == {"description": "the count", "type": "integer"}
    plain = parameters_schema(with_hint(Annotated[int, 42]))
    assert plain["properties"]["x"] == {"type": "integer"}
    assert_valid(schema, {"x": 1}, {"x": "1"})


def test_describe() -> None:
    assert (
        describe(Tools.search) == "Search the catalogue.\n\nResults are ranked\n    by relevance."
    )
    assert describe(Tools.only_ctx) == "Do nothing."
    assert describe(Tools.nothing) == ""
    assert describe(lambda: None) == ""

    def one_line() -> None:
        """Just a summary."""

    assert describe(one_line) == "Just a summary."

    def raises_first() -> None:
        """Summary.

        Raises:
            ValueError: never.
        Args:
            x: not reached.
        """

    assert describe(raises_first) == "Summary."


def test_arg_descriptions() -> None:
    assert arg_descriptions(Tools.search) == {
        "query": "ignored, the Annotated description wins.",
        "limit": "at most this many results, counted after ranking.",
        "colors": "only these colors.",
    }
    assert arg_descriptions(Tools.nothing) == {}

    def f(a: int, b: int, *args: int, **kwargs: int) -> None:
        """Summary.

        Args:
            a:
                on the next line.

            b (int, optional): two
                lines.
            *args: the rest.
            **kwargs: the named rest.

        Returns:
            x: not an argument.

        Keyword Args:
            extra: a keyword.
        """

    assert arg_descriptions(f) == {
        "a": "on the next line.",
        "b": "two lines.",
        "args": "the rest.",
        "kwargs": "the named rest.",
        "extra": "a keyword.",
    }


def test_tool_definition() -> None:
    definition = tool_definition("search", Tools.search)
    assert definition == {
        "name": "search",
        "description": describe(Tools.search),
        "parameters": parameters_schema(Tools.search),
    }
    assert json.loads(json.dumps(definition)) == definition
    Draft202012Validator.check_schema(definition["parameters"])


def test_var_arguments_are_refused() -> None:
    def star(self: object, *items: int) -> None:
        pass

    def double_star(self: object, **options: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"star takes \*items"):
        parameters_schema(star)
    with pytest.raises(TypeError, match=r"double_star takes \*\*options"):
        parameters_schema(double_star)
    with pytest.raises(TypeError, match=r"star takes \*items"):
        check_arguments(star, {})


def test_positional_only_parameters_are_refused() -> None:
    def f(self: object, a: int, /) -> None:
        pass

    with pytest.raises(TypeError, match=r"parameter 'a' of .*f is positional-only"):
        parameters_schema(f)
    # the skipped first parameter may be positional-only
    assert parameters_schema(lambda s, /, b: None)["required"] == ["b"]


@pytest.mark.parametrize(
    ("hint", "message"),
    [
        (Plain, r"unsupported type hint <class '.*Plain'> for parameter 'x' of .*f"),
        (bytes, r"unsupported type hint <class 'bytes'> for parameter 'x'"),
        (set[int], r"unsupported type hint set\[int\] for parameter 'x'"),
        (list[Plain], r"unsupported type hint <class '.*Plain'> for parameter 'x'"),
        (dict[int, str], r"dict\[int, str\] for parameter 'x'.*keys of a JSON object are str"),
        (Literal[b"raw"], r"for parameter 'x' .* not a JSON scalar"),
        (Blob, r"Blob'> for parameter 'x' .* not a JSON scalar"),
        (Empty, r"Empty'> for parameter 'x' .*has no values"),
        (Node, r"Node'> for field 'children' of parameter 'x' .* contains itself"),
        ("Undefined", r"cannot resolve the type hints of .*f.*Undefined"),
    ],
)
def test_unsupported_hints_are_refused(hint: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        parameters_schema(with_hint(hint))


def test_an_unsupported_hint_names_its_parameter() -> None:
    def f(self: object, movie: Movie, where: dict[str, Plain]) -> None:
        pass

    with pytest.raises(TypeError, match=r"Plain'> for parameter 'where' of .*f"):
        parameters_schema(f)


def test_check_arguments() -> None:
    given_args = {"query": "q", "limit": 5, "point": {"x": 1}}
    checked = check_arguments(Tools.search, given_args)
    assert checked == given_args
    assert checked is not given_args
    assert checked["point"] == {"x": 1}  # no coercion: a dataclass-typed value stays a dict
    assert check_arguments(Tools.nothing, {}) == {}

    with pytest.raises(TypeError, match=r"search\(\) got unknown argument\(s\) 'ctx'"):
        check_arguments(Tools.search, {"query": "q", "ctx": None})
    with pytest.raises(TypeError, match=r"unknown argument\(s\) 'self', 'other'; it takes 'query'"):
        check_arguments(Tools.search, {"self": 1, "query": "q", "other": 2})
    with pytest.raises(TypeError, match=r"nothing\(\) got unknown .*'a'; it takes no arguments"):
        check_arguments(Tools.nothing, {"a": 1})
    with pytest.raises(TypeError, match=r"search\(\) is missing required argument\(s\) 'query'"):
        check_arguments(Tools.search, {"limit": 1})

    def f(a: int, b: int, c: int = 0) -> None:
        pass

    with pytest.raises(TypeError, match=r"missing required argument\(s\) 'a', 'b'"):
        check_arguments(f, {"c": 1}, skip_first=False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"query": 5}, r"argument 'query': expected string, got integer 5"),
        ({"query": "q", "limit": "5"}, r"argument 'limit': expected integer, got string '5'"),
        ({"query": "q", "limit": True}, r"'limit': expected integer, got boolean True"),
        ({"query": "q", "limit": 1.5}, r"'limit': expected integer, got number 1.5"),
        ({"query": "q", "colors": "red"}, r"'colors': expected array or null, got string"),
        ({"query": "q", "colors": ["red", "pink"]}, r"'colors'\[1\]: expected one of 'red'"),
        ({"query": "q", "point": [1]}, r"'point': expected object or null, got array \[1\]"),
        ({"query": "q", "point": {"y": 1}}, r"'point': missing key\(s\) 'x'"),
        ({"query": "q", "point": {"x": "1"}}, r"'point'.x: expected number, got string '1'"),
        ({"query": "q", "point": {"x": 1, "z": 0}}, r"unknown key 'z'; it takes 'x', 'y', 'tags'"),
    ],
)
def test_check_arguments_refuses_values_of_another_type(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        check_arguments(Tools.search, arguments)


def test_check_arguments_takes_json_values_as_their_hints_say() -> None:
    def f(
        n: float,
        pair: tuple[int, str],
        rows: dict[str, list[int]],
        movie: Movie,
        mode: Literal[1, "a"] = 1,
        anything: Any = None,
    ) -> None:
        pass

    ok = {"n": 1, "pair": [1, "a"], "rows": {"a": [1, 2]}, "movie": {"title": "t"}, "mode": "a"}
    assert check_arguments(f, {**ok, "anything": {"x": [None]}}, skip_first=False)
    assert check_arguments(f, {**ok, "n": 2.5, "mode": 1.0}, skip_first=False)  # 1.0 == 1
    refused = [
        ({"n": False}, r"'n': expected number, got boolean"),
        ({"pair": [1]}, r"'pair': expected an array of 2 items, got 1"),
        ({"pair": [1, 2]}, r"'pair'\[1\]: expected string, got integer 2"),
        ({"rows": {"a": [1, "2"]}}, r"'rows'\['a'\]\[1\]: expected integer, got string"),
        ({"movie": {"year": 1}}, r"'movie': missing key\(s\) 'title'"),
        ({"movie": {"title": "t", "cast": []}}, r"'movie': unknown key 'cast'; it takes 'title'"),
        ({"movie": {"title": "t", "year": "1999"}}, r"'movie'.year: expected integer"),
        ({"mode": True}, r"'mode': expected one of 1, 'a', got boolean True"),
        ({"mode": "b"}, r"'mode': expected one of 1, 'a', got string 'b'"),
    ]
    for change, message in refused:
        with pytest.raises(TypeError, match=message):
            check_arguments(f, {**ok, **change}, skip_first=False)


SCALARS = st.one_of(st.text(max_size=5), st.integers(min_value=-(2**40), max_value=2**40))


@given(st.lists(SCALARS, min_size=1, max_size=8, unique_by=lambda v: (type(v), v)))
def test_random_literals(values: list[str | int]) -> None:
    hint = Literal[tuple(values)]  # type: ignore[valid-type]
    schema = parameters_schema(with_hint(hint))
    prop = schema["properties"]["x"]
    assert prop["enum"] == list(typing.get_args(hint))
    kinds = {type(value) for value in values}
    if kinds == {str}:
        assert prop["type"] == "string"
    elif kinds == {int}:
        assert prop["type"] == "integer"
    else:
        assert "type" not in prop
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for value in values:
        validator.validate({"x": value})
    assert not validator.is_valid({"x": "z" * 6})  # longer than any member
    assert not validator.is_valid({"x": 2**41})
    assert not validator.is_valid({"x": None})



JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
CHECKED_HINTS = [
    int, float, str, bool, list[int], tuple[int, str], dict[str, int], Literal[1, "a"],
    Movie, Point | None, list[Color] | None, Options, Any,
]  # fmt: skip


def integral_floats(value: Any) -> bool:
    """Whether ``value`` holds a float with no fraction (JSON Schema counts 1.0 an integer)."""
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, list):
        return any(map(integral_floats, value))
    if isinstance(value, dict):
        return any(map(integral_floats, value.values()))
    return False


@given(st.sampled_from(CHECKED_HINTS), JSON_VALUES)
def test_check_value_agrees_with_json_schema(hint: Any, value: Any) -> None:
    """A value passes exactly when a draft 2020-12 validator finds it valid for the schema.

    One difference, on purpose: a float without a fraction (``1.0``) is no integer here (an
    ``int`` parameter would get a float), where JSON Schema takes it as one.
    """
    schema = parameters_schema(with_hint(hint))["properties"]["x"]
    valid = Draft202012Validator(schema).is_valid(value)
    try:
        check_value(schema, value, "x")
    except TypeError:
        assert not valid or integral_floats(value), (schema, value)
    else:
        assert valid, (schema, value)


def test_check_arguments_takes_an_explicit_none_default_and_other_callables() -> None:
    import functools

    def f(x: int = None, y: int = 0) -> None:  # type: ignore[assignment]  # noqa: RUF013
        pass

    assert check_arguments(f, {"x": None}, skip_first=False) == {"x": None}
    with pytest.raises(TypeError, match=r"'y': expected integer, got null"):
        check_arguments(f, {"y": None}, skip_first=False)
    with pytest.raises(TypeError, match=r"'x': expected integer, got string"):
        check_arguments(f, {"x": "1"}, skip_first=False)
    # a callable whose hints cannot be read: its names are checked, as before
    part = functools.partial(f, y=1)
    assert check_arguments(part, {"x": "1"}, skip_first=False) == {"x": "1"}
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(TypeError, match=r"expected string, got array \[\[\[\[\.\.\.\]\]\]\]"):
        check_arguments(Tools.search, {"query": deep})  # a short message for a deep value
