"""Introspection for ``scripts/gen_sync.py``: the spec, and what each async member is.

Reads the async classes the spec lists (signatures, resolved type hints, docstrings,
dataclass fields, the attributes ``__init__`` sets) and says what kind of twin each member
needs; ``gen_sync.py`` writes them. Refuses, with :class:`GenError`, what it cannot carry.
"""

from __future__ import annotations

import ast
import collections.abc
import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from anyio.streams.memory import MemoryObjectReceiveStream

import foundation_etcd as fe
from foundation_etcd import lowlevel as ll

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "foundation_etcd" / "sync"
MAX_LINES = 450


def load_spec() -> types.ModuleType:
    """The spec module, loaded by path (importing the package would import stale output)."""
    spec = importlib.util.spec_from_file_location(
        "_foundation_etcd_sync_spec", PACKAGE / "_spec.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SPEC = load_spec()
NAMES: dict[str, Any] = {
    **{n: getattr(fe, n) for n in fe.__all__},
    **{n: getattr(ll, n) for n in ll.__all__},
    **{n: getattr(collections.abc, n) for n in collections.abc.__all__},
    "Any": Any,
    "ClassVar": typing.ClassVar,
    "Literal": typing.Literal,
    "MemoryObjectReceiveStream": MemoryObjectReceiveStream,
}


class GenError(Exception):
    """The generator cannot carry a member over; the message says which and why."""


def has_async_members(cls: type) -> bool:
    """Whether a class has public coroutine methods or async context managers."""
    return any(
        not name.startswith("_") and (inspect.iscoroutinefunction(v) or is_async_cm(v))
        for name, v in inspect.getmembers(cls)
    )


def is_async_cm(fn: Any) -> bool:
    """Whether ``fn`` is decorated with ``@asynccontextmanager``."""
    wrapped = getattr(fn, "__wrapped__", None)
    return wrapped is not None and inspect.isasyncgenfunction(wrapped)


def real_globals(cls: type) -> dict[str, Any]:
    """The globals of the module that defines ``cls`` (its ``__module__`` is the public one)."""
    for value in vars(cls).values():
        fn: Any = value.fget if isinstance(value, property) else value
        fn = getattr(fn, "__wrapped__", fn)
        if inspect.isfunction(fn) and fn.__qualname__.startswith(cls.__qualname__ + "."):
            return dict(fn.__globals__)
    return dict(sys.modules[cls.__module__].__dict__)


def class_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls`` and its bases."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):
        scope = real_globals(klass)
        for name, ann in inspect.get_annotations(klass).items():
            try:
                out[name] = eval(ann, scope, NAMES) if isinstance(ann, str) else ann
            except NameError as exc:
                raise GenError(f"cannot resolve {klass.__name__}.{name}: {exc}") from exc
    return out


def hints(fn: Any) -> dict[str, Any]:
    """The resolved annotations of ``fn`` (public names first, then its module's)."""
    try:
        return typing.get_type_hints(fn, localns=NAMES)
    except NameError as exc:
        raise GenError(f"cannot resolve the annotations of {fn.__qualname__}: {exc}") from exc


# members -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Member:
    """One member of an async class, classified."""

    name: str
    kind: str  # async, background, context, sync, property, attribute, classvar
    type: Any
    fn: Any = None
    doc: str = ""


def init_attributes(cls: type) -> dict[str, Any]:
    """The public attributes ``cls.__init__`` sets, with their types."""
    init = cls.__dict__.get("__init__")
    if init is None or dataclasses.is_dataclass(cls):
        return {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    params = hints(init)
    known = class_hints(cls)
    module = real_globals(cls)
    out: dict[str, Any] = {}
    for node in ast.walk(func):
        targets: list[tuple[ast.expr, ast.expr | None, ast.expr | None]] = []
        if isinstance(node, ast.Assign):
            targets = [(t, None, node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign):
            targets = [(node.target, node.annotation, node.value)]
        for target, annotation, value in targets:
            if not (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and not target.attr.startswith("_")
            ):
                continue
            name = target.attr
            if annotation is not None:
                tp = eval(ast.unparse(annotation), module, NAMES)
            elif name in known:
                tp = known[name]
            elif isinstance(value, ast.Name) and value.id in params:
                tp = params[value.id]
            elif name in params:
                tp = params[name]
            elif isinstance(value, ast.Constant) and value.value is not None:
                tp = type(value.value)
            else:
                raise GenError(f"cannot tell the type of {cls.__name__}.{name}")
            out.setdefault(name, tp)
    return out


def members(twin: Any) -> list[Member]:
    """The members of a twin's class, in source order, less the skipped ones."""
    cls = twin.cls
    out: list[Member] = []
    seen: set[str] = set()
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    own_fields = inspect.get_annotations(cls)
    for name, value in cls.__dict__.items():
        if name.startswith("_") or (cls, name) in SPEC.SKIP:
            continue
        if twin.of is not cls and name in vars(twin.of):
            continue  # overridden by the public class (twinned there)
        seen.add(name)
        try:
            out.append(classify(cls, name, value, fields, own_fields))
        except GenError as exc:
            raise GenError(f"{cls.__name__}.{name}: {exc}") from None
    for name, tp in init_attributes(cls).items():
        if name not in seen and (cls, name) not in SPEC.SKIP:
            out.append(Member(name, "attribute", tp))
    return out


def classify(
    cls: type, name: str, value: Any, fields: dict[str, Any], own: dict[str, Any]
) -> Member:
    """What kind of twin one member gets."""
    if isinstance(value, types.MemberDescriptorType) or name in fields:
        if name not in fields:
            raise GenError("a slot that is not a dataclass field")
        return Member(name, "attribute", class_hints(cls)[name])
    if isinstance(value, property | functools.cached_property):
        fget = value.fget if isinstance(value, property) else value.func
        return Member(name, "property", hints(fget).get("return", Any), fget, docstring(fget))
    if isinstance(value, staticmethod | classmethod):
        raise GenError("a static or class method (needs a SKIP decision)")
    if inspect.isfunction(value):
        ret = hints(value).get("return", Any)
        if is_async_cm(value):
            yields = typing.get_args(ret)[0] if typing.get_args(ret) else Any
            return Member(name, "context", yields, value, docstring(value))
        if typing.get_origin(ret) is collections.abc.AsyncIterator:
            raise GenError("an async generator")
        if typing.get_origin(ret) is contextlib.AbstractAsyncContextManager:
            return Member(name, "context", typing.get_args(ret)[0], value, docstring(value))
        if inspect.iscoroutinefunction(value):
            kind = "background" if (cls, name) in SPEC.BACKGROUND else "async"
            return Member(name, kind, ret, value, docstring(value))
        return Member(name, "sync", ret, value, docstring(value))
    if name in own:
        hint = class_hints(cls)[name]
        if typing.get_origin(hint) is typing.ClassVar:
            return Member(name, "classvar", hint)
    raise GenError(f"cannot carry over {value!r}")


def docstring(fn: Any) -> str:
    """The member's own docstring, cleaned (the twin's is the same)."""
    if not fn.__doc__:
        raise GenError(f"{fn.__qualname__} has no docstring")
    return inspect.cleandoc(fn.__doc__)
