"""Every public async method and context manager has a blocking twin with the same signature.

Checked by introspection of both sides, independently of the generator: for each class with
twins (``foundation_etcd.sync._spec``), every public member (inherited ones included) is
either named in ``SKIP`` with a reason or has a twin in ``foundation_etcd.sync`` with the
same parameters (names, kinds, defaults) and the same docstring; async context managers
become sync ones, ``serve`` returns a ``Serving`` handle. The generator's ``--check`` must
also pass: the checked-in modules are what it writes now.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import foundation_etcd as fe
import foundation_etcd.sync as fs
from foundation_etcd.sync import _spec

ROOT = Path(__file__).resolve().parents[2]


def _definer(cls: type, name: str) -> type:
    return next(k for k in cls.__mro__ if name in vars(k))


def _public_members(cls: type) -> list[tuple[str, object, type]]:
    out = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        definer = _definer(cls, name)
        if definer is object or (definer, name) in _spec.SKIP:
            continue
        out.append((name, vars(definer)[name], definer))
    return out


def _is_async_cm(fn: object) -> bool:
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None and inspect.isasyncgenfunction(wrapped):
        return True
    ret = inspect.get_annotations(fn, eval_str=False).get("return", "")  # type: ignore[arg-type]
    return isinstance(ret, str) and ret.startswith("AbstractAsyncContextManager")


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


CASES = [(cls, *m) for cls in _spec.PUBLIC for m in _public_members(cls)]


@pytest.mark.parametrize(
    ("cls", "name", "member", "definer"), CASES, ids=[f"{c[0].__name__}.{c[1]}" for c in CASES]
)
def test_every_public_member_has_a_twin(
    cls: type, name: str, member: object, definer: type
) -> None:
    twin_cls = getattr(fs, cls.__name__)
    assert hasattr(twin_cls, name), f"foundation_etcd.sync.{cls.__name__} has no {name}"
    twin = inspect.getattr_static(twin_cls, name)
    if isinstance(member, property | functools.cached_property):
        fget = member.fget if isinstance(member, property) else member.func
        assert isinstance(twin, property)
        assert inspect.getdoc(twin.fget) == inspect.getdoc(fget)
        return
    if not callable(member) or isinstance(member, type):  # dataclass fields, class variables
        return
    assert inspect.isfunction(twin), (name, twin)
    assert _params(twin) == _params(member), "parameters or defaults differ"
    assert inspect.getdoc(twin) == inspect.getdoc(member), "docstrings differ"
    ret = str(inspect.get_annotations(twin).get("return", ""))
    if _is_async_cm(member):
        assert ret.startswith("AbstractContextManager["), ret
    elif (definer, name) in _spec.BACKGROUND:
        assert ret == "Serving"
    else:
        assert not inspect.iscoroutinefunction(twin)


@pytest.mark.parametrize("cls", _spec.PUBLIC, ids=lambda c: c.__name__)
def test_attributes_have_twins(cls: type) -> None:
    twin_cls = getattr(fs, cls.__name__)
    names = set()
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    for klass in cls.__mro__[:-1]:
        for name, ann in inspect.get_annotations(klass).items():
            if not name.startswith("_") and "ClassVar" not in str(ann):
                names.add(name)
    for name in sorted(names):
        if any((k, name) in _spec.SKIP for k in cls.__mro__):
            continue
        assert isinstance(inspect.getattr_static(twin_cls, name, None), property), name


def test_skips_name_members_that_exist() -> None:
    for (cls, name), reason in _spec.SKIP.items():
        assert reason
        assert (
            name in vars(cls)
            or any(name in inspect.get_annotations(k) for k in cls.__mro__)
            or f"self.{name}" in inspect.getsource(cls.__init__)
        ), f"stale skip: {cls.__name__}.{name}"


def test_connect_twin() -> None:
    assert _params(fs.connect) == _params(fe.connect)
    assert inspect.getdoc(fs.connect) == inspect.getdoc(fe.connect)
    assert str(inspect.get_annotations(fs.connect)["return"]) == "Connection[Cluster]"


def test_returned_async_objects_come_back_as_twins() -> None:
    hints = typing.get_type_hints(fs.Cluster.lock)
    assert hints["return"] is fs.Lock
    assert typing.get_type_hints(fs.Cluster.election)["return"] is fs.Election
    assert typing.get_type_hints(fs.Cluster.quotas.fget)["return"] is fs.Quotas
    assert fs.Cluster.__mro__[1] is fs.SignalMethods and issubclass(fs.LockHandle, fs.Ownership)
    assert issubclass(fs.Ownership, fs.SyncWrapper)
    assert contextlib.AbstractContextManager in fs.Connection.__mro__


def test_generated_modules_are_current() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff (a dev dependency, the generator formats with it) is not installed")
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_sync.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
