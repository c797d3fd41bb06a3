"""A decorated class keeps working alone: no etcd, no wrapping."""

import inspect

import pytest

import foundation_etcd
from foundation_etcd import (
    ClusterSpec,
    InvalidIdError,
    RestartPolicy,
    agent_classes,
    cluster_spec,
    clustered,
)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def incr(self, by: int = 1) -> int:
        self.value += by
        return self.value

    async def start(self) -> str:  # a method of its own called "start"
        return "own start"


Plain = type("Plain", (Counter,), {})
Decorated = clustered("counter-test", capabilities=["count"], critical=True)(
    type("Decorated", (Counter,), {})
)


def test_decorator_returns_the_same_class_and_wraps_nothing() -> None:
    assert Decorated.incr is Counter.incr
    assert Decorated.__init__ is Counter.__init__
    assert Decorated.__mro__[1:] == (Counter, object)
    c = Decorated(5)
    assert c.incr() == 6 and c.incr(4) == 10
    assert not inspect.getmembers(c, lambda m: getattr(m, "__wrapped__", None))


async def test_own_start_method_untouched() -> None:
    assert await Decorated().start() == "own start"


def test_spec_recorded_and_catalogued() -> None:
    spec = cluster_spec(Decorated)
    assert spec == cluster_spec(Decorated())
    assert isinstance(spec, ClusterSpec)
    assert spec.name == "counter-test" and spec.critical
    assert spec.capabilities == frozenset({"count"})
    assert agent_classes()["counter-test"] is Decorated
    assert cluster_spec(Plain) is None  # a subclass of nothing decorated


def test_subclass_does_not_inherit_spec() -> None:
    Sub = type("Sub", (Decorated,), {})
    assert cluster_spec(Sub) is None


def test_bad_arguments() -> None:
    with pytest.raises(InvalidIdError):
        clustered("bad/name")
    with pytest.raises(InvalidIdError):
        clustered(capabilities=["has space"])
    with pytest.raises(ValueError, match="positive integer"):
        clustered(resources={"cpu": 0})
    with pytest.raises(ValueError, match="restart mode"):
        RestartPolicy(mode="sometimes")
    with pytest.raises(TypeError):
        clustered()(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already used"):
        clustered("counter-test")(type("Other", (), {}))


def test_package_root_only_reexports() -> None:
    for name in foundation_etcd.__all__:
        obj = getattr(foundation_etcd, name)
        module = getattr(obj, "__module__", "foundation_etcd._")
        assert module.startswith("foundation_etcd._"), (name, module)
    assert sorted(set(foundation_etcd.__all__)) == sorted(foundation_etcd.__all__)
