import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation_etcd import InvalidIdError, Keyspace, prefix_end, validate_id


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
