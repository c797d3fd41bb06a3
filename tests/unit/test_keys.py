import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation_etcd import InvalidIdError, validate_id
from foundation_etcd._core.keys import pool_name, split_pool
from foundation_etcd.lowlevel import Keyspace, prefix_end


@pytest.mark.parametrize("good", ["a", "agent-1", "x.y:z_w", "A" * 128])
def test_valid_ids(good: str) -> None:
    assert validate_id(good) == good


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("a\nb", "control character"),
        ("a\x00b", "control character"),
        ("A" * 129, "longer than 128"),
        ("é", "allowed are"),
        ("a b", "allowed are"),
        ("..", "reserved"),
        (7, "must be a str"),
    ],
)
def test_invalid_ids(bad: object, reason: str) -> None:
    with pytest.raises(InvalidIdError, match=reason) as info:
        validate_id(bad, "agent id")
    assert isinstance(info.value, ValueError)
    assert "agent id" in str(info.value)


def test_key_layout() -> None:
    ks = Keyspace("ns", "t1")
    assert ks.prefix == b"/ns/t1/"
    assert ks.node("n1") == b"/ns/t1/nodes/n1"
    assert ks.agent_live("a") == b"/ns/t1/agents/live/a"
    assert ks.agent_spec("a") == b"/ns/t1/agents/spec/a"
    assert ks.election_prefix("e") == b"/ns/t1/elections/e/"
    assert ks.quotas_prefix() == b"/ns/_system/quotas/t1/"
    assert ks.quota_queue_prefix("gpu") == b"/ns/_system/quotas/t1/queue/gpu/"
    assert ks.quota_limit("gpu") == b"/ns/_system/quotas/t1/limits/gpu"
    assert not ks.quota_limit("gpu").startswith(ks.prefix)
    assert ks.relative(ks.node("n1")) == "nodes/n1"
    with pytest.raises(ValueError, match="outside"):
        ks.relative(b"/other/x")
    with pytest.raises(InvalidIdError):
        ks.agent_live("a/../../x")


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=4))
def test_prefix_end_bounds_exactly_the_prefix(prefix: bytes, suffix: bytes) -> None:
    end = prefix_end(prefix)
    assert prefix + suffix < end or end == b"\0"
    assert prefix <= prefix + suffix


def test_prefix_end_carries() -> None:
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


# -- the reserved leading '_' ------------------------------------------------------------------

RESERVED = ["_system", "_", "_x", "__init__", "_System", "_system.quotas"]


@pytest.mark.parametrize("bad", RESERVED)
@pytest.mark.parametrize("kind", ["tenant", "namespace", "node id", "agent id", "resource"])
def test_leading_underscore_is_reserved_for_every_kind(bad: str, kind: str) -> None:
    with pytest.raises(InvalidIdError, match="reserved for the library") as info:
        validate_id(bad, kind)
    assert kind in str(info.value)


@pytest.mark.parametrize("good", ["a_b", "tenant_1", "x.y:z_w", "a__", "-_-", "9_"])
def test_underscore_inside_an_id_is_fine(good: str) -> None:
    assert validate_id(good) == good


def test_no_keyspace_reaches_the_system_prefix() -> None:
    with pytest.raises(InvalidIdError, match="tenant"):
        Keyspace("ns", "_system")
    with pytest.raises(InvalidIdError, match="namespace"):
        Keyspace("_system", "t")
    ks = Keyspace("ns", "t")
    assert ks.system_prefix == b"/ns/_system/"
    with pytest.raises(InvalidIdError):
        ks.node("_system")
    with pytest.raises(InvalidIdError):
        ks.quota_limit("_x")


def _prefixes(ks: Keyspace) -> list[bytes]:
    """Every prefix the library ranges, watches or grants a role on."""
    return [
        ks.prefix,
        ks.system_prefix,
        ks.nodes_prefix(),
        ks.agents_live_prefix(),
        ks.election_prefix("e"),
        ks.lock_prefix("l"),
        ks.quotas_prefix(),
        ks.quota_queue_prefix("gpu"),
        ks.quota_queue_prefix("@n1@gpu"),
        ks.key("nodes-res", "n1", ""),
    ]


def test_the_roots_of_named_prefixes_hold_every_name() -> None:
    """A prefix method without its name is the root of all of them (listings, rotation)."""
    ks = Keyspace("ns", "t")
    for root, one in [
        (ks.election_prefix(), ks.election_prefix("e")),
        (ks.lock_prefix(), ks.lock_prefix("l")),
        (ks.signals_done_prefix(), ks.signal_done("a", "s1")),
        (ks.dead_letters_prefix(), ks.dead_letter("a", "s1")),
        (ks.agent_states_prefix(), ks.agent_state("a")),
    ]:
        assert root.endswith(b"/") and one.startswith(root) and one != root, (root, one)
    assert ks.election_prefix() == b"/ns/t/elections/" and ks.lock_prefix() == b"/ns/t/locks/"
    assert not ks.lock_prefix("l").startswith(ks.election_prefix())
    with pytest.raises(InvalidIdError):
        ks.lock_prefix("")


def test_every_prefix_ends_with_a_slash() -> None:
    for prefix in _prefixes(Keyspace("a", "b")):
        assert prefix.endswith(b"/"), prefix


def test_tenant_a_is_not_inside_tenant_ab() -> None:
    a, ab = Keyspace("ns", "a"), Keyspace("ns", "ab")
    for mine, theirs in zip(_prefixes(a), _prefixes(ab), strict=True):
        if mine == a.system_prefix:
            continue  # shared by design: the namespace's system prefix
        assert not theirs.startswith(mine) and not mine.startswith(theirs), (mine, theirs)
    assert not ab.quota_limit("gpu").startswith(a.quotas_prefix())
    assert not ab.node("n").startswith(a.prefix)


ids = st.text(alphabet="ab_.:-", min_size=1, max_size=4).filter(
    lambda s: not s.startswith("_") and s not in (".", "..")
)


@given(ids, ids, ids, ids)
def test_prefixes_of_distinct_tenants_never_nest(ns1: str, t1: str, ns2: str, t2: str) -> None:
    one, two = Keyspace(ns1, t1), Keyspace(ns2, t2)
    if (ns1, t1) == (ns2, t2):
        return
    for mine, theirs in ((one.prefix, two.prefix), (one.quotas_prefix(), two.quotas_prefix())):
        assert not mine.startswith(theirs) and not theirs.startswith(mine)
    # a tenant prefix is never in a system prefix, nor the other way round
    for ks, other in ((one, two), (two, one)):
        assert not ks.prefix.startswith(other.system_prefix)
        assert not other.system_prefix.startswith(ks.prefix)
        assert not ks.node("n").startswith(other.prefix)
        assert not ks.quota_queue_prefix("r").startswith(other.quotas_prefix())


# -- pools -------------------------------------------------------------------------------------


def test_pool_names() -> None:
    assert pool_name("gpu") == "gpu"
    assert pool_name("gpu", "n1") == "@n1@gpu"
    assert split_pool("gpu") == ("gpu", None)
    assert split_pool("@n1@gpu") == ("gpu", "n1")
    for bad in ("", "@", "@@gpu", "@n1", "@n1@", "@n1@a@b", "a@b", "_x", "@_n@gpu", "a/b", 3, None):
        assert split_pool(bad) is None, bad
    with pytest.raises(InvalidIdError):
        pool_name("a@b")  # '@' is outside the id alphabet: no resource names a node pool
    with pytest.raises(InvalidIdError):
        pool_name("gpu", "n@1")
    with pytest.raises(InvalidIdError, match="pool"):
        Keyspace("ns", "t").quota_queue_prefix("gp/u")


@given(ids, st.one_of(st.none(), ids))
def test_pool_name_round_trips(resource: str, node: str | None) -> None:
    name = pool_name(resource, node)
    assert split_pool(name) == (resource, node)
    # a node pool is never a tenant resource's pool, and (node, resource) is recoverable
    assert name.startswith("@") == (node is not None)
