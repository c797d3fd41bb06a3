"""Generate ``foundation_etcd.sync``'s twins from the async classes, so that they cannot drift.

Like trio's ``gen_exports``: the async classes listed in ``src/foundation_etcd/sync/_spec.py``
are introspected (``inspect.signature``, resolved type hints, docstrings, dataclass fields,
the attributes their ``__init__`` sets) and one blocking twin per class is written to
``src/foundation_etcd/sync/_{module}.py``, then formatted with ruff. Every member becomes one
call into the connection's portal (``sync/_portal.py``): a coroutine method blocks on
``Portal.call``, an async context manager becomes a sync one (``Portal.context``), a plain
method or property runs on the event loop thread (``Portal.run``), and a returned object
that has twins itself (a ``Lock``, a ``Leadership``, ...) comes back wrapped.

The generator refuses what it cannot carry over faithfully: a parameter that takes an
object with a twin, a default it cannot write back, a returned type that is neither public
nor plain data (an async object handed to sync code), a module over 450 lines. Such a
member needs a decision in the spec's ``SKIP``.

Usage::

    python scripts/gen_sync.py           # write the modules
    python scripts/gen_sync.py --check   # exit 1 (with a diff) if a module is not current
"""

from __future__ import annotations

import argparse
import collections.abc
import difflib
import inspect
import subprocess
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from anyio.streams.memory import MemoryObjectReceiveStream

import foundation_etcd as fe
from foundation_etcd import lowlevel as ll
from sync_introspect import (
    MAX_LINES,
    PACKAGE,
    ROOT,
    SPEC,
    GenError,
    Member,
    docstring,
    has_async_members,
    hints,
    members,
)


# types ---------------------------------------------------------------------------------------
class Renderer:
    """Writes types as source text, collecting the imports the text needs."""

    def __init__(self, module: str, twins: dict[type, tuple[str, str]]) -> None:
        self.module = module
        self.twins = twins  # public async class -> (twin name, module)
        self.typing: set[str] = set()
        self.abc: set[str] = set()
        self.handles: set[str] = set()
        self.siblings: dict[str, set[str]] = {}
        self.context = False

    def public(self, cls: type) -> str | None:
        """``_fe.Name`` or ``_ll.Name`` for a class of the public API, else ``None``."""
        for alias, mod in (("_fe", fe), ("_ll", ll)):
            if cls.__name__ in mod.__all__ and getattr(mod, cls.__name__) is cls:
                return f"{alias}.{cls.__name__}"
        return None

    def twin(self, cls: type) -> str:
        """The twin's name (imported from its module when it is another one)."""
        name, module = self.twins[cls]
        if module != self.module:
            self.siblings.setdefault(module, set()).add(name)
        return name

    def param(self, tp: Any) -> str:
        """A parameter's type as the caller passes it (no twins; private types as Any)."""
        return self._render(tp, value=False)

    def value(self, tp: Any) -> str:
        """A returned type, with twins for the objects that have them."""
        return self._render(tp, value=True)

    def _render(self, tp: Any, *, value: bool) -> str:
        if tp is None or tp is type(None):
            return "None"
        if tp is Any:
            self.typing.add("Any")
            return "Any"
        if tp is Ellipsis:
            return "..."
        if isinstance(tp, list):
            return "[" + ", ".join(self._render(t, value=value) for t in tp) + "]"
        if isinstance(tp, typing.TypeVar):
            # twins are not generic: a generic class's values (SharedState[T]) are Any
            self.typing.add("Any")
            return "Any"
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if value and origin in self.twins:  # SharedState[T]: its twin, which is not generic
            return self.twin(origin)
        if origin is typing.Union or origin is types.UnionType:
            parts = [self._member(a, value=value) for a in args]
            if any(p is None for p in parts):
                return self._any(tp, value)
            return " | ".join(dict.fromkeys(p for p in parts if p is not None))
        if origin is typing.Literal:
            self.typing.add("Literal")
            return "Literal[" + ", ".join(repr(a) for a in args) + "]"
        if origin is typing.ClassVar:
            self.typing.add("ClassVar")
            return f"ClassVar[{self._render(args[0], value=value)}]"
        if origin is MemoryObjectReceiveStream:
            if not value:
                raise GenError("a stream parameter")
            self.handles.add("Receiver")
            return f"Receiver[{self._render(args[0], value=True)}]"
        if origin is not None:
            head = self._class(origin, value=value)
            if head is None:
                return self._any(tp, value)
            return f"{head}[{', '.join(self._render(a, value=value) for a in args)}]"
        if isinstance(tp, type):
            head = self._class(tp, value=value)
            return head if head is not None else self._any(tp, value)
        raise GenError(f"cannot write the type {tp!r}")

    def _member(self, tp: Any, *, value: bool) -> str | None:
        if tp is type(None):
            return "None"
        try:
            if isinstance(tp, type) and typing.get_origin(tp) is None:
                return self._class(tp, value=value)
            return self._render(tp, value=value)
        except GenError:
            if value:
                raise
            return None

    def _any(self, tp: Any, value: bool) -> str:
        if value:
            raise GenError(f"the returned type {tp!r} is not public")
        self.typing.add("Any")
        return "Any"  # a parameter of a type the public API does not name (e.g. RangeOp)

    def _class(self, cls: type, *, value: bool) -> str | None:
        if cls.__module__ == "builtins":
            return cls.__name__
        if cls.__module__ == "collections.abc":
            self.abc.add(cls.__name__)
            return cls.__name__
        if value and cls in self.twins:
            return self.twin(cls)
        if not value and cls in self.twins:
            raise GenError(f"a parameter of type {cls.__name__}, which has a twin")
        path = self.public(cls)
        if path is not None and value and has_async_members(cls):
            raise GenError(f"it returns {cls.__name__}, an async object with no twin")
        return path


# writing -------------------------------------------------------------------------------------
def doc_literal(doc: str, indent: str) -> str:
    """A docstring literal at ``indent``."""
    if '"""' in doc:
        raise GenError("a docstring holding triple quotes")
    prefix = "r" if "\\" in doc else ""
    lines = doc.splitlines()
    if len(lines) == 1:
        return f'{indent}{prefix}"""{lines[0]}"""\n'
    body = "\n".join((indent + line) if line else "" for line in lines[1:])
    return f'{indent}{prefix}"""{lines[0]}\n{body}\n{indent}"""\n'


def signature(fn: Any, r: Renderer, *, method: bool = True) -> tuple[str, str]:
    """The twin's parameter list (with ``self``) and the call's arguments."""
    sig = inspect.signature(fn)
    types_ = hints(fn)
    params: list[str] = []
    args: list[str] = []
    star = False
    for i, p in enumerate(sig.parameters.values()):
        if method and i == 0:
            params.append("self")
            continue
        ann = f": {r.param(types_[p.name])}" if p.name in types_ else ""
        if p.kind is p.VAR_POSITIONAL:
            params.append(f"*{p.name}{ann}")
            args.append(f"*{p.name}")
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            params.append(f"**{p.name}{ann}")
            args.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        default = ""
        if p.default is not p.empty:
            text = repr(p.default)
            try:
                ok = eval(text, {}, {}) == p.default
            except Exception:
                ok = False
            if not ok:
                raise GenError(f"cannot write the default of {p.name!r}: {text}")
            default = f" = {text}"
        params.append(f"{p.name}{ann}{default}")
        if p.kind is p.POSITIONAL_ONLY:
            raise GenError("positional-only parameters")
        args.append(f"{p.name}={p.name}" if p.kind is p.KEYWORD_ONLY else p.name)
    return ", ".join(params), ", ".join(args)


def wrapper(tp: Any, r: Renderer, expr: str, *, copy: bool = False) -> str:
    """``expr`` as the twin returns it (wrapped in its twin, or copied for a sync caller)."""
    if typing.get_origin(tp) in r.twins:  # a generic class with a twin: SharedState[T]
        tp = typing.get_origin(tp)
    if isinstance(tp, type) and tp in r.twins:
        return f"{r.twin(tp)}(self._portal, {expr})"
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and inner[0] in r.twins and len(args) == 2:
            r.handles.add("maybe")
            return f"maybe({r.twin(inner[0])}, self._portal, {expr})"
    if origin is MemoryObjectReceiveStream:
        r.handles.add("Receiver")
        return f"Receiver(self._portal, {expr})"
    if copy and origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return f"dict({expr})"  # a snapshot: the loop thread keeps changing the original
    if copy and origin is list:
        return f"list({expr})"
    return expr


def write_member(m: Member, r: Renderer, twin: Any) -> str:
    """One member of a twin class."""
    call = ""
    if m.fn is not None and m.kind not in ("property",):
        params, args = signature(m.fn, r)
        call = f"self._obj.{m.name}({args})"
    if m.kind == "attribute":
        ann = r.value(m.type)
        doc = f"The ``{m.name}`` attribute of the async object."
        body = f"return {wrapper(m.type, r, f'self._obj.{m.name}')}"
        return f'@property\ndef {m.name}(self) -> {ann}:\n    """{doc}"""\n    {body}\n'
    if m.kind == "classvar":
        path = r.public(twin.cls) or r.public(twin.of)
        return f"{m.name}: {r.value(m.type)} = {path}.{m.name}\n"
    if m.kind == "property":
        ann = r.value(m.type)
        read = f"self._portal.run(lambda: self._obj.{m.name})"
        body = f"return {wrapper(m.type, r, read, copy=True)}"
        return f"@property\ndef {m.name}(self) -> {ann}:\n{doc_literal(m.doc, '    ')}    {body}\n"
    if m.kind == "context":
        ann = r.value(m.type)
        wrapped = wrapper(m.type, r, "value")
        r.context = True
        if wrapped == "value":
            body = f"return self._portal.context(lambda: {call})"
        else:
            wrapped = wrapper(m.type, r, "entered")
            body = f"return self._portal.context_as(lambda: {call}, lambda entered: {wrapped})"
        ret = f"AbstractContextManager[{ann}]"
    elif m.kind == "background":
        r.handles.add("Serving")
        ret, body = "Serving", f"return Serving(self._portal, lambda: {call})"
    else:
        ret = r.value(m.type)
        how = "call" if m.kind == "async" else "run"
        expr = wrapper(m.type, r, f"self._portal.{how}(lambda: {call})", copy=m.kind == "sync")
        body = expr if ret == "None" else f"return {expr}"
    return f"def {m.name}({params}) -> {ret}:\n{doc_literal(m.doc, '    ')}    {body}\n"


def write_class(twin: Any, r: Renderer, by_cls: dict[type, Any]) -> str:
    """One twin class."""
    # the twins of the direct bases (a class built of mixins has one each), else the
    # nearest twinned ancestor
    base_twins = [by_cls[b] for b in twin.cls.__bases__ if b in by_cls] or [
        by_cls[b] for b in twin.cls.__mro__[1:] if b in by_cls
    ][:1]
    of = r.public(twin.of)
    if of is None:
        raise GenError(f"{twin.of.__name__} is not public")
    if not base_twins:
        r.handles.add("SyncWrapper")
        params = getattr(twin.of, "__parameters__", ())
        if params:  # a generic class: the twin wraps it for any value type
            r.typing.add("Any")
        base = (
            f"SyncWrapper[{of}[{', '.join('Any' for _ in params)}]]"
            if params
            else (f"SyncWrapper[{of}]")
        )
    else:
        base = ", ".join(b.twin_name for b in base_twins)
        for b in base_twins:
            if b.module != r.module:
                r.siblings.setdefault(b.module, set()).add(b.twin_name)
    summary, _, rest = inspect.cleandoc(twin.cls.__doc__ or twin.cls.__name__).partition("\n")
    path = of.replace("_fe.", "foundation_etcd.").replace("_ll.", "foundation_etcd.lowlevel.")
    what = f":class:`{path}`" if twin.cls is twin.of else f"the members {path} has from a base"
    doc = f"{summary}\n\nThe blocking twin of {what} (generated).\n{rest}".rstrip()
    out = [f"class {twin.twin_name}({base}):\n", doc_literal(doc, "    "), "\n    __slots__ = ()\n"]
    if any(b.of is not twin.of for b in base_twins):
        out.append(f"    _obj: {of}\n")
    for m in members(twin):
        try:
            text = write_member(m, r, twin)
        except GenError as exc:
            raise GenError(f"{twin.cls.__name__}.{m.name}: {exc}") from None
        out.append("\n" + textwrap.indent(text, "    "))
    if "__len__" in vars(twin.cls):  # ``len(view)``, as on the async object
        body = "return self._portal.run(lambda: len(self._obj))"
        out.append(f"\n    def __len__(self) -> int:\n        {body}\n")
    if "__iter__" in vars(twin.cls):  # over a copy taken on the event loop
        r.abc.add("Iterator")
        r.typing.add("Any")
        body = "return iter(self._portal.run(lambda: list(self._obj)))"
        out.append(f"\n    def __iter__(self) -> Iterator[Any]:\n        {body}\n")
    return "".join(out)


def write_connect(r: Renderer) -> str:
    """The twin of ``foundation_etcd.connect``."""
    fn = SPEC.CONNECT[1]
    params, args = signature(fn, r, method=False)
    r.handles.add("Connection")
    doc = docstring(fn.__wrapped__)
    return (
        f"def connect({params}) -> Connection[Cluster]:\n{doc_literal(doc, '    ')}"
        f"    return Connection(lambda: _fe.connect({args}), Cluster)\n"
    )


def generate() -> dict[Path, str]:
    """Every generated module's text, by path."""
    by_cls = {t.cls: t for t in SPEC.TWINS}
    twins = {t.of: (t.twin_name, t.module) for t in SPEC.TWINS if t.cls is t.of}
    modules: dict[str, list[Any]] = {}
    for t in SPEC.TWINS:
        modules.setdefault(t.module, []).append(t)
    out: dict[Path, str] = {}
    for module, group in modules.items():
        r = Renderer(module, twins)
        parts = [write_class(t, r, by_cls) for t in group]
        names = [t.twin_name for t in group]
        if SPEC.CONNECT[0] == module:
            parts.append(write_connect(r))
            names.append("connect")
        out[PACKAGE / f"{module}.py"] = format_source(
            PACKAGE / f"{module}.py", header(group, r, names) + "\n\n".join(parts)
        )
    for path, text in out.items():
        if text.count("\n") > MAX_LINES:
            raise GenError(f"{path.name} would have {text.count(chr(10))} lines (> {MAX_LINES})")
    return out


def header(group: list[Any], r: Renderer, names: list[str]) -> str:
    """The module docstring and imports."""
    sources = ", ".join(f"``{t.cls.__name__}``" for t in group)
    lines = [
        '"""Blocking twins, generated by ``scripts/gen_sync.py`` from the async API: do not edit.',
        "",
        *textwrap.wrap(
            f"Twins of {sources}. Regenerate with ``python scripts/gen_sync.py``; ``make "
            "lint`` checks that this module is current.",
            92,
        ),
        '"""',
        "",
        "from __future__ import annotations",
        "",
    ]
    if r.abc:
        lines.append(f"from collections.abc import {', '.join(sorted(r.abc))}")
    if r.context:
        lines.append("from contextlib import AbstractContextManager")
    if r.typing:
        lines.append(f"from typing import {', '.join(sorted(r.typing))}")
    lines += [
        "",
        "import foundation_etcd as _fe",
        "from foundation_etcd import lowlevel as _ll",
        "",
    ]
    if r.handles:
        lines.append(f"from ._handles import {', '.join(sorted(r.handles, key=str.lower))}")
    for module in sorted(r.siblings):
        lines.append(f"from .{module} import {', '.join(sorted(r.siblings[module]))}")
    lines += ["", f"__all__ = {sorted(names)!r}", "", ""]
    return "\n".join(lines)


def format_source(path: Path, text: str) -> str:
    """Fix imports and format with ruff, as ``make lint`` checks the result."""
    for cmd in (["check", "--fix", "--select", "I,F401", "--quiet"], ["format", "--quiet"]):
        res = subprocess.run(
            [sys.executable, "-m", "ruff", *cmd, "--stdin-filename", str(path), "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if res.returncode != 0 and not res.stdout:
            raise GenError(f"ruff {cmd[0]} failed on {path.name}: {res.stderr}\n{text}")
        text = res.stdout
    return text


def main(argv: list[str] | None = None) -> int:
    """Write the twins, or with ``--check`` compare them with what is checked in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a module is not current")
    opts = parser.parse_args(argv)
    try:
        modules = generate()
    except GenError as exc:
        print(f"gen_sync: {exc}", file=sys.stderr)
        return 2
    stale = []
    for path, text in modules.items():
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        stale.append(path)
        if opts.check:
            diff = difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), str(path), "generated"
            )
            sys.stdout.writelines(diff)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if opts.check and stale:
        names = ", ".join(p.name for p in stale)
        print(f"gen_sync: {names} not current: run python scripts/gen_sync.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
