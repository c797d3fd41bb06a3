"""The one amount rule (``_amounts``): what callers may pass and what is trusted when read back."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation_etcd import InvalidIdError, InvalidReservationError, clustered
from foundation_etcd._agents.membership import node_value as _node_value
from foundation_etcd._core.amounts import (
    BLOCKING,
    MAX_AMOUNT,
    check_amount,
    check_amounts,
    check_capacity,
    check_limit,
    stored_amount,
    stored_capacity,
    stored_limit,
    stored_reservation,
)

NOT_INTEGERS = [1.0, 2.5, float("nan"), float("inf"), "2", b"2", None, [1], {"n": 1}, True, False]


@pytest.mark.parametrize("good", [1, 2, 1000, MAX_AMOUNT])
def test_amounts(good: int) -> None:
    assert check_amount(good, "amount of 'cpu'") == good
    assert check_capacity(good, "capacity of 'cpu'") == good
    assert stored_amount(good) == good


@pytest.mark.parametrize("bad", [0, -1, -(2**70), MAX_AMOUNT + 1, 2**100, *NOT_INTEGERS])
def test_bad_amounts(bad: object) -> None:
    with pytest.raises(ValueError, match="amount of 'cpu'"):
        check_amount(bad, "amount of 'cpu'")
    assert stored_amount(bad) is None


def test_capacity_and_limit_allow_zero() -> None:
    assert check_capacity(0, "capacity of 'cpu'") == 0
    assert check_limit(0, "limit of 'cpu'") == 0
    assert stored_capacity(0) == 0
    for bad in (-1, MAX_AMOUNT + 1, *NOT_INTEGERS):
        with pytest.raises(ValueError, match=r">= 0|at most"):
            check_capacity(bad, "capacity of 'cpu'")
        with pytest.raises(InvalidReservationError, match="limit of 'cpu'"):
            check_limit(bad, "limit of 'cpu'", InvalidReservationError)
        assert stored_capacity(bad) is None


def test_mappings() -> None:
    assert check_amounts({"cpu": 2, "mem": 1}) == {"cpu": 2, "mem": 1}
    assert check_amounts(None) == {}
    assert check_amounts({"cpu": 0}, "capacity", minimum=0) == {"cpu": 0}
    with pytest.raises(ValueError, match=r"amount of 'cpu' must be a positive integer, not 0"):
        check_amounts({"mem": 1, "cpu": 0})
    with pytest.raises(InvalidReservationError, match="at least one resource"):
        check_amounts({}, "amount", InvalidReservationError, allow_empty=False)
    with pytest.raises(InvalidReservationError, match="mapping"):
        check_amounts([("cpu", 1)], "amount", InvalidReservationError)
    with pytest.raises(InvalidIdError, match="resource"):
        check_amounts({"_cpu": 1})
    with pytest.raises(InvalidIdError, match="resource"):
        check_amounts({"a@b": 1})


def test_every_call_site_follows_the_one_rule() -> None:
    # @clustered resources and spawn resources: amounts (>= 1); node capacity: >= 0
    for bad in (0, -1, 1.5, True, "1", MAX_AMOUNT + 1):
        with pytest.raises(ValueError, match="'cpu'"):
            clustered(resources={"cpu": bad})  # type: ignore[dict-item]
    for bad in (-1, 1.5, True, "1", MAX_AMOUNT + 1):
        with pytest.raises(ValueError, match="capacity of 'cpu'"):
            _node_value("n", {"cpu": bad}, (), "", True)  # type: ignore[dict-item]
    assert b'"cpu":0' in _node_value("n", {"cpu": 0}, (), "", True)


def test_stored_limit() -> None:
    assert stored_limit({"limit": 3}) == 3
    assert stored_limit({"limit": 0}) == 0
    for bad in ({"limit": -1}, {"limit": 2.0}, {"limit": True}, {"limit": "3"}, {}, [3], 3, None):
        assert stored_limit(bad) is None
    assert stored_limit({"limit": MAX_AMOUNT + 1}) is None
    assert BLOCKING > MAX_AMOUNT  # a blocking entry exceeds every limit that can be read


@pytest.mark.parametrize(
    "value",
    [
        {"amounts": {"cpu": 2}, "holder": "n1"},
        {"amounts": {"cpu": 2, "@n1@gpu": 1}},
        {"amounts": {"cpu": MAX_AMOUNT}, "extra": "ignored"},
    ],
)
def test_stored_reservations(value: object) -> None:
    assert stored_reservation(value) == value["amounts"]  # type: ignore[index]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "amounts",
        ["amounts"],
        7,
        {},
        {"holder": "n1"},
        {"amounts": {}},
        {"amounts": []},
        {"amounts": [["cpu", 1]]},
        {"amounts": "cpu"},
        {"amounts": {"cpu": -100}},
        {"amounts": {"cpu": 0}},
        {"amounts": {"cpu": 1.0}},
        {"amounts": {"cpu": 1.5}},
        {"amounts": {"cpu": True}},
        {"amounts": {"cpu": "1"}},
        {"amounts": {"cpu": None}},
        {"amounts": {"cpu": 2**64}},
        {"amounts": {"cpu": 1, "mem": -1}},  # one bad amount spoils the entry
        {"amounts": {"cpu": 1, "bad pool": 1}},
        {"amounts": {"cpu": 1, "_system": 1}},
        {"amounts": {"@n1": 1}},
    ],
)
def test_crafted_reservations_are_not_reservations(value: object) -> None:
    assert stored_reservation(value) is None


@given(st.from_type(object))
def test_stored_functions_never_raise(value: object) -> None:
    stored_amount(value)
    stored_capacity(value)
    stored_limit(value)
    stored_reservation(value)
    stored_reservation({"amounts": {"cpu": value}})
