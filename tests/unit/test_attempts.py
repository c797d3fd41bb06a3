"""The attempt accounting of ``_agents.attempts``: what each marker says about the head."""

import pytest

from foundation_etcd._agents.attempts import attempt_of, covers_next, explicit, standing

INC = 500  # the delivering incarnation
OLD = 300  # an incarnation before it


@pytest.mark.parametrize(
    ("marker", "rev", "failures", "expected"),
    [
        ({}, 400, 0, (1, True)),  # no marker: a first attempt, marked before it runs
        ({}, 400, 2, (3, True)),  # failures are counted in the entry itself
        ({"rev": "x", "attempt": "many"}, 400, 0, (1, True)),  # another client's doing
        ({"inc": OLD, "attempt": 1}, 400, 0, (1, True)),  # no rev, no after: not standing
        (explicit(400, INC, 2), 400, 1, (2, False)),  # ours, already marked
        (explicit(400, OLD, 1), 400, 0, (2, True)),  # started by a crashed incarnation
        (explicit(400, OLD, 3), 400, 1, (4, True)),  # the marker's count wins over failures
        (explicit(400, OLD, 1), 400, 4, (5, True)),  # failures win when higher
        (explicit(399, OLD, 1), 400, 0, (1, True)),  # it started another signal
        (standing(350, INC), 400, 0, (1, False)),  # our own standing marker: no write
        (standing(350, OLD), 400, 0, (2, True)),  # sent while OLD was live: it may have run
        (standing(350, OLD), 600, 0, (1, True)),  # sent after this incarnation came live
    ],
)
def test_attempt_of(
    marker: dict[str, object], rev: int, failures: int, expected: tuple[int, bool]
) -> None:
    assert attempt_of(marker, rev, failures, INC) == expected


def test_a_signal_that_kills_every_incarnation_keeps_counting_up() -> None:
    """Whatever form the marker had when a handler crashed, the next count is higher."""
    inc, marker = 100, standing(90, 100)  # an idle agent: the head is taken unmarked
    attempts = []
    for _ in range(5):
        attempt, must_mark = attempt_of(marker, 95, 0, inc)
        attempts.append(attempt)
        if must_mark:
            marker = explicit(95, inc, attempt)
        inc += 10  # the process dies in the handler; the agent comes back elsewhere
    assert attempts == [1, 2, 3, 4, 5]


def test_covers_next() -> None:
    assert covers_next(standing(1, INC), INC)
    assert not covers_next(standing(1, OLD), INC)
    assert not covers_next(explicit(1, INC, 1), INC)
    assert not covers_next({}, INC)
