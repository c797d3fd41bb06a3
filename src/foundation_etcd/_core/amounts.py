"""Resource amounts, capacities and limits: one rule, checked in one place.

Every amount the library accepts from a caller (a reservation, an agent class's or a
spawn's resources, a node's capacity, a tenant's limit) and every amount it reads back
from etcd goes through these functions:

* a **resource name** is an id (:func:`~foundation_etcd._keys.validate_id`);
* an **amount** (what a reservation or an agent takes) is an ``int`` ``>= 1``;
* a **capacity** or a **limit** (what a pool offers) is an ``int`` ``>= 0``;
* ``bool`` is not an integer here, and neither are floats such as ``1.0``;
* an integer is at most :data:`MAX_AMOUNT` (so sums stay exact in JSON and in every client).

Guarantees:
    * The ``check_*`` functions raise the caller's exception class, with a message naming
      the resource, for anything outside the rule; they never coerce (``"2"``, ``2.0`` and
      ``True`` are refused, not read as 2 or 1).
    * The ``stored_*`` functions never raise: they return ``None`` for a value the library
      would not have written. Their callers count such a value in the safe direction (an
      unknown limit or capacity admits nothing; a queue entry that is not a valid
      reservation blocks the queue behind it, :data:`BLOCKING`), never as room.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeGuard

from .keys import split_pool, validate_id

__all__ = [
    "ANY_RESOURCE",
    "BLOCKING",
    "MAX_AMOUNT",
    "check_amount",
    "check_amounts",
    "check_capacity",
    "check_limit",
    "stored_amount",
    "stored_capacity",
    "stored_limit",
    "stored_reservation",
    "stored_usage",
]

MAX_AMOUNT: Final = 2**53 - 1  # the largest integer every JSON reader keeps exact
BLOCKING: Final = MAX_AMOUNT + 1
"""What a malformed queue entry counts as: more than any valid limit, so it is never
admitted and neither is anything queued behind it, whatever the limit (even raised)."""

ErrorFactory = Callable[[str], Exception]


def _is_integer(value: object, minimum: int) -> TypeGuard[int]:
    return not isinstance(value, bool) and isinstance(value, int) and minimum <= value <= MAX_AMOUNT


def _integer(value: object, what: str, minimum: int, error: ErrorFactory) -> int:
    kind = "a positive integer" if minimum >= 1 else "an integer >= 0"
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{what} must be {kind}, not {value!r}")
    if value > MAX_AMOUNT:
        raise error(f"{what} must be at most {MAX_AMOUNT}, not {value!r}")
    return value


def check_amount(value: object, what: str, error: ErrorFactory = ValueError) -> int:
    """Return ``value`` if it is a valid amount (an ``int`` from 1 to :data:`MAX_AMOUNT`).

    Args:
        value: the candidate amount.
        what: what it is the amount of, for the message (e.g. ``"amount of 'cpu'"``).
        error: the exception class (or factory) to raise with the message.

    Returns:
        ``value``, unchanged.

    Raises:
        Exception: built by ``error`` (``ValueError`` by default) when it is not.
    """
    return _integer(value, what, 1, error)


def check_capacity(value: object, what: str, error: ErrorFactory = ValueError) -> int:
    """Return ``value`` if it is a valid capacity (an ``int`` from 0 to :data:`MAX_AMOUNT`).

    Args:
        value: the candidate capacity.
        what: what it is the capacity of, for the message (e.g. ``"capacity of 'cpu'"``).
        error: the exception class (or factory) to raise with the message.

    Returns:
        ``value``, unchanged.

    Raises:
        Exception: built by ``error`` (``ValueError`` by default) when it is not.
    """
    return _integer(value, what, 0, error)


def check_limit(value: object, what: str, error: ErrorFactory = ValueError) -> int:
    """Return ``value`` if it is a valid limit: the capacity rule (``int``, 0 to the maximum).

    Raises:
        Exception: built by ``error`` (``ValueError`` by default) when it is not.
    """
    return _integer(value, what, 0, error)


def check_amounts(
    amounts: object,
    what: str = "amount",
    error: ErrorFactory = ValueError,
    *,
    allow_empty: bool = True,
    minimum: int = 1,
) -> dict[str, int]:
    """Validate a mapping of resource name to amount and return it as a new ``dict``.

    ``None`` stands for an empty mapping.

    Args:
        amounts: the candidate mapping.
        what: what each value is, for messages: ``"amount"`` gives
            ``amount of 'cpu' must be a positive integer, not 0``.
        error: the exception class (or factory) to raise.
        allow_empty: whether an empty mapping is accepted.
        minimum: 1 for amounts, 0 for capacities and limits.

    Returns:
        A new ``dict`` of the same items, in the same order.

    Raises:
        InvalidIdError: a resource name is not an id.
        Exception: built by ``error`` for a bad value, an empty mapping when
            ``allow_empty`` is false, or something that is not a mapping.
    """
    if amounts is None:
        amounts = {}
    if not isinstance(amounts, Mapping):
        raise error(f"expected a mapping of resource name to {what}, not {amounts!r}")
    if not amounts and not allow_empty:
        raise error(f"at least one resource {what} is needed")
    out: dict[str, int] = {}
    for resource, value in amounts.items():
        validate_id(resource, "resource")
        out[resource] = _integer(value, f"{what} of {resource!r}", minimum, error)
    return out


def stored_amount(value: object) -> int | None:
    """Interpret an amount read back from etcd; ``None`` when the library never writes it.

    A value some other writer put there (negative, zero, fractional, boolean, a string,
    larger than :data:`MAX_AMOUNT`) is not a valid amount. Callers must count such an
    entry in the safe direction: it may block what queues behind it, it never frees room.
    """
    return value if _is_integer(value, 1) else None


ANY_RESOURCE: Final = "*"  # not an id: no node offers it, so what asks for it never fits


def stored_usage(value: object) -> dict[str, int]:
    """Interpret the resources an agent takes (a spec's or a node reservation's), read back.

    Fails closed: an invalid amount counts as :data:`BLOCKING`, and a value that is not a
    mapping of resource names becomes ``{ANY_RESOURCE: BLOCKING}``: an agent asking for it
    fits no node, and a node reservation holding it leaves its node no room at all.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return {ANY_RESOURCE: BLOCKING}
    out: dict[str, int] = {}
    for resource, amount in value.items():
        name = resource if isinstance(resource, str) else ANY_RESOURCE
        out[name] = out.get(name, 0) + (stored_amount(amount) or BLOCKING)
    return out


def stored_capacity(value: object) -> int | None:
    """Interpret a capacity read back from etcd; ``None`` (no capacity known) when invalid."""
    return value if _is_integer(value, 0) else None


def stored_limit(value: object) -> int | None:
    """Interpret a limit read back from etcd; ``None`` (no limit: nothing admitted) when invalid.

    ``value`` is the decoded JSON of a limit key, ``{"limit": n}``.
    """
    if not isinstance(value, dict):
        return None
    return stored_capacity(value.get("limit"))


def stored_reservation(value: object) -> dict[str, int] | None:
    """The amounts of a decoded queue entry, or ``None`` when the library never writes it.

    The library writes ``{"amounts": {pool: amount, ...}, "holder": node}`` with at least
    one pool, every pool a pool name (``resource`` or ``@node@resource``) and every amount
    valid (:func:`stored_amount`). Anything else (not an object, no ``amounts``, an empty
    or non-object ``amounts``, one bad pool name or amount) gives ``None``: the entry as a
    whole is not a reservation, and its queue must count it as :data:`BLOCKING`.
    """
    if not isinstance(value, dict):
        return None
    raw = value.get("amounts")
    if not isinstance(raw, dict) or not raw:
        return None
    out: dict[str, int] = {}
    for pool, amount in raw.items():
        checked = stored_amount(amount)
        if checked is None or split_pool(pool) is None:
            return None
        out[pool] = checked
    return out
