"""Admission math of quota pools: pure, no I/O, the one rule both judges apply.

A pool's queue is its reservation keys in create-revision order. A reservation is admitted
when the amounts of the queue up to and including it fit the pool's limit (the
longest-fitting-prefix rule); releasing a key admits whoever then fits. Two judges apply the
rule, and must agree: the reserving transaction's own read of the first
``min(QUEUE_READ, limit)`` keys (:func:`judge_read`), and a process's watched view of the
whole queue (:class:`Queue`).

Guarantees:
    * **Crafted entries never admit more.** An entry counts at its amount only if it is
      exactly what ``reserve`` writes (a JSON object whose ``amounts`` maps valid pool names
      to valid amounts, naming the key's own pool, never rewritten: version 1). Anything
      else counts as :data:`~foundation_etcd._core.amounts.BLOCKING`, above every limit: it
      is never admitted and blocks what queues behind it, until it is deleted.
    * Every entry counts at least 1, so a key behind the first ``limit`` keys of a queue is
      never admitted, and a read of ``min(QUEUE_READ, limit)`` keys decides whenever the
      reservation is among them.
    * Nothing here raises on a stored value: every parse fails closed.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from . import codec as _codec
from .amounts import BLOCKING, stored_capacity, stored_reservation
from .keys import split_pool
from .kv import KeyValue

__all__ = [
    "CACHE_SIZE",
    "EMPTY",
    "MAX_RESERVATION_BYTES",
    "QUEUE_READ",
    "Pool",
    "Queue",
    "decode_or_none",
    "encode_reservation",
    "entry_amount",
    "judge_read",
    "node_capacity",
    "queue_pool",
    "reservation_amounts",
]

QUEUE_READ = 64  # queue keys read with each reservation; longer queues use the view
CACHE_SIZE = 1024  # parsed reservation values and encoded ones kept per process
MAX_RESERVATION_BYTES = 64 * 1024  # the largest value ``reserve`` writes
_CACHED_BYTES = 1024  # values parsed once per distinct value up to this size


@dataclass(slots=True)
class Queue:
    """One pool's queue in create order: parallel lists, and each key's create revision.

    Amounts are those of :func:`entry_amount`: a malformed entry is ``BLOCKING``.
    """

    revs: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    where: dict[bytes, int] = field(default_factory=dict)  # key -> its create revision

    def _index(self, rev: int, key: bytes) -> int | None:
        i = bisect.bisect_left(self.revs, rev)
        while i < len(self.revs) and self.revs[i] == rev:
            if self.keys[i] == key:
                return i
            i += 1
        return None

    def add(self, rev: int, key: bytes, amount: int) -> None:
        """Record ``key`` created at ``rev``; a rewrite updates it, a re-creation moves it.

        Keys created at one revision (only a crafted transaction writes two in one pool)
        are kept blocking ones first, then in key order, so that a view that listed them
        and one that saw their events (in the transaction's order) show the same usage.
        """
        if key in self.where:  # a rewrite, or a re-creation seen as one change: placed anew
            self.remove(key)
        i = bisect.bisect_right(self.revs, rev)
        if i and self.revs[i - 1] == rev:  # a tie: place it among the keys of its revision
            rank = (amount != BLOCKING, key)
            while i and self.revs[i - 1] == rev:
                if (self.amounts[i - 1] != BLOCKING, self.keys[i - 1]) <= rank:
                    break
                i -= 1
        self.revs.insert(i, rev)
        self.keys.insert(i, key)
        self.amounts.insert(i, amount)
        self.where[key] = rev

    def remove(self, key: bytes) -> None:
        rev = self.where.pop(key, None)
        if rev is None:
            return
        i = self._index(rev, key)
        if i is not None:
            del self.revs[i], self.keys[i], self.amounts[i]

    def sum_through(self, rev: int) -> int | None:
        """Sum of amounts up to and including ``rev``; ``None`` if ``rev`` is not queued."""
        i = bisect.bisect_right(self.revs, rev)
        if i == 0 or self.revs[i - 1] != rev:
            return None
        return sum(self.amounts[:i])

    def frontier(self, limit: int) -> int:
        """Create revision of the last admitted key (0: none), for ``limit``.

        A ``BLOCKING`` entry exceeds every limit: the frontier stops before it.
        """
        total = 0
        last = 0
        for rev, amount in zip(self.revs, self.amounts, strict=True):
            total += amount
            if total > limit:
                break
            last = rev
        return last

    def usage(self, limit: int | None) -> tuple[int, int, int]:
        """``(used, queued, malformed)``: a malformed entry shown as the whole limit."""
        used = queued = malformed = 0
        admitting = True
        for a in self.amounts:
            if a == BLOCKING:
                malformed += 1
                a = limit or 0
            if admitting and (limit is None or used + a <= limit):
                used += a
            else:
                admitting = False
                queued += a
        return used, queued, malformed


@dataclass(slots=True)
class Pool:
    """One pool of a reservation, with the limit it was judged against.

    ``node`` is set for node pools, whose limit comes from the node view (another stream).
    """

    name: str
    amount: int
    limit: int
    limit_key: bytes
    limit_mod: int
    node: str | None


EMPTY = Queue()


def encode_reservation(amounts: Mapping[str, int], holder: str) -> bytes:
    """A queue entry's value: the amount per pool and who holds it (amounts checked).

    Raises:
        RequestTooLargeError: over :data:`MAX_RESERVATION_BYTES`.
    """
    return _codec.encode(
        {"amounts": dict(amounts), "holder": holder}, "reservation", MAX_RESERVATION_BYTES
    )


def decode_or_none(value: bytes) -> object:
    """Decoded JSON, or ``None`` when ``value`` is not JSON (never raises)."""
    try:
        return _codec.decode(value)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


@lru_cache(maxsize=CACHE_SIZE)
def _cached_reservation(value: bytes) -> Mapping[str, int] | None:
    amounts = stored_reservation(decode_or_none(value))
    return None if amounts is None else MappingProxyType(amounts)


def reservation_amounts(value: bytes) -> Mapping[str, int] | None:
    """The amounts of a queue entry's value, ``None`` when ``reserve`` never writes it."""
    if len(value) > MAX_RESERVATION_BYTES:
        return None
    if len(value) <= _CACHED_BYTES:  # the common values, parsed once
        return _cached_reservation(value)
    return stored_reservation(decode_or_none(value))


def entry_amount(kv: KeyValue, pool: str) -> int:
    """What a queue entry of ``pool`` counts: its amount, or ``BLOCKING`` when malformed.

    ``reserve`` puts each key once (version 1) with a value naming the key's pool; any
    other entry is someone else's doing and must not make room.
    """
    if kv.version != 1:
        return BLOCKING
    amounts = reservation_amounts(kv.value)
    if amounts is None:
        return BLOCKING
    return amounts.get(pool, BLOCKING)


def queue_pool(key: bytes, start: int) -> str | None:
    """The pool of a queue key (``key[start:]`` is ``{pool}/...``); ``None``: no pool's."""
    segment, sep, _ = key[start:].partition(b"/")
    if not sep:
        return None
    try:
        name = segment.decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if split_pool(name) is not None else None


def node_capacity(value: bytes) -> Mapping[str, int] | None:
    """A node announcement's valid capacities (an invalid one is left out: no limit)."""
    info = decode_or_none(value)
    if not isinstance(info, dict):
        return None
    raw = info.get("capacity", {})
    if not isinstance(raw, dict):
        return None
    out: dict[str, int] = {}
    for resource, amount in raw.items():
        capacity = stored_capacity(amount)
        if capacity is not None and isinstance(resource, str):
            out[resource] = capacity
    return out


def judge_read(
    kvs: Sequence[KeyValue], pool: str, key: bytes, limit: int
) -> tuple[bool | None, int]:
    """Judge the reservation at ``key`` from the first keys of its queue, in create order.

    ``kvs`` is what the reserving transaction read: the first ``min(QUEUE_READ, limit)``
    keys of the queue of ``pool`` at its revision, ``key`` (just written) among them unless
    the queue was longer. Every entry counts at least 1 (``entry_amount``), so when
    ``key`` is not among the first ``limit`` keys it cannot fit.

    Returns:
        ``(admitted, used)``: ``admitted`` is ``True`` or ``False``, or ``None`` when the
        read was too short to say (``limit > QUEUE_READ`` and ``key`` not read); ``used``
        is the admitted use ahead of ``key`` (a malformed entry shown as the whole limit).
    """
    total = used = 0
    admitting = True
    for kv in kvs:
        amount = entry_amount(kv, pool)
        if kv.key == key:
            return total + amount <= limit, used
        total += amount
        shown = limit if amount == BLOCKING else amount
        if admitting and used + shown <= limit:
            used += shown
        else:
            admitting = False
    if len(kvs) < min(QUEUE_READ, limit) or limit > QUEUE_READ:
        return None, used  # the queue went on beyond the read (or the read was short)
    return False, used
