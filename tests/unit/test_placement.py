import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation_etcd import NoNodeFitsError
from foundation_etcd._core.placement import (
    NodeLoad,
    PlacementRequest,
    fit_reason,
    place,
    strategy_named,
)

A = NodeLoad("a", {"cpu": 4}, {"cpu": 1}, frozenset({"gpu"}), agents=1)
B = NodeLoad("b", {"cpu": 8}, {"cpu": 6}, frozenset(), agents=3)
C = NodeLoad("c", {"cpu": 3}, {}, frozenset(), agents=0)


def test_least_loaded_spreads() -> None:
    assert place(PlacementRequest("x"), [A, B, C], strategy_named("least-loaded")) == "c"


def test_pack_fills() -> None:
    assert place(PlacementRequest("x", {"cpu": 1}), [A, B, C], strategy_named("pack")) == "b"


def test_best_fit_leaves_least() -> None:
    req = PlacementRequest("x", {"cpu": 2})
    assert place(req, [A, B, C], strategy_named("best-fit")) == "b"  # 0 left on b


def test_capability_filter_and_pinned() -> None:
    req = PlacementRequest("x", requires=frozenset({"gpu"}))
    assert place(req, [A, B, C], strategy_named("least-loaded")) == "a"
    assert place(PlacementRequest("x"), [A, B, C], strategy_named("pinned:b")) == "b"
    with pytest.raises(NoNodeFitsError, match="b: lacks capabilities gpu"):
        place(req, [A, B, C], strategy_named("pinned:b"))


def test_no_node_fits_names_reasons() -> None:
    with pytest.raises(NoNodeFitsError) as info:
        place(PlacementRequest("x", {"cpu": 5}), [A, B, C], strategy_named("spread"))
    assert info.value.reasons == {
        "a": "cpu: needs 5, 3 free",
        "b": "cpu: needs 5, 2 free",
        "c": "cpu: needs 5, 3 free",
    }
    with pytest.raises(NoNodeFitsError, match="no live nodes"):
        place(PlacementRequest("x"), [], strategy_named("spread"))
    assert fit_reason(PlacementRequest("x", {"mem": 1}), A) == "mem: needs 1, 0 free"


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown placement strategy"):
        strategy_named("random-ish")


class Custom:
    def choose(self, request: PlacementRequest, nodes: list[NodeLoad]) -> str | None:
        return max(nodes, key=lambda n: n.node_id).node_id


def test_custom_strategy() -> None:
    assert place(PlacementRequest("x"), [A, B, C], strategy_named(Custom())) == "c"


nodes_st = st.lists(
    st.builds(
        NodeLoad,
        st.sampled_from(["n1", "n2", "n3", "n4"]),
        st.fixed_dictionaries({"cpu": st.integers(0, 8)}),
        st.fixed_dictionaries({"cpu": st.integers(0, 8)}),
        st.frozensets(st.sampled_from(["gpu", "ssd"])),
        st.integers(0, 5),
    ),
    max_size=4,
    unique_by=lambda n: n.node_id,
)


@given(
    nodes_st,
    st.integers(0, 6),
    st.frozensets(st.sampled_from(["gpu", "ssd"])),
    st.sampled_from(["least-loaded", "pack", "best-fit"]),
)
def test_chosen_node_always_fits(nodes, cpu, requires, name) -> None:
    req = PlacementRequest("x", {"cpu": cpu} if cpu else {}, requires)
    try:
        chosen = place(req, nodes, strategy_named(name))
    except NoNodeFitsError:
        assert all(fit_reason(req, n) is not None for n in nodes)
    else:
        node = next(n for n in nodes if n.node_id == chosen)
        assert fit_reason(req, node) is None
