"""Transactions over several shared states: a software transactional memory on etcd.

::

    async def transfer(tx: Tx) -> None:
        a = await tx.get("acct:alice") or 0
        b = await tx.get("acct:bob") or 0
        tx.put("acct:alice", a - 10)
        tx.put("acct:bob", b + 10)

    await cluster.transact(transfer)

``fn`` runs against a snapshot: reads go to etcd (each key once per attempt, then from the
attempt's cache), writes are buffered. At the end one transaction commits the writes if the
compares of the chosen isolation level hold; otherwise ``fn`` runs again on fresh values.
The commit's failure branch reads the whole read set back, so a retry costs no extra round
trip for the keys the last attempt read. The keys are those of :class:`SharedState`
(``state/{name}``), so both can be mixed.

Isolation levels (those of etcd's Go ``concurrency`` STM):
    * ``SERIALIZABLE_SNAPSHOT`` (default): every read at the revision of the attempt's first
      read; commits only if no key read and no key written changed after that revision.
      Serializable, and no write skew across the keys written.
    * ``SERIALIZABLE``: reads at one revision; commits only if no key read changed. Write
      skew is prevented only for keys that were also read.
    * ``REPEATABLE_READ``: each key read at the latest revision, once; commits only if no
      key read changed since its read.
    * ``READ_COMMITTED``: reads at the latest revision; commits unconditionally.

Guarantees:
    * **All or nothing**: the writes of one call commit in one etcd transaction, or not at
      all (an exception from ``fn`` writes nothing).
    * **Bounded retries**: at most ``max_attempts`` attempts; the first two retries at once
      from the failed commit's read-back, later ones after a jittered pause from fresh
      reads; then :class:`TransactionConflictError` names the keys that conflicted.
    * **Prefix reads** (:meth:`Tx.get_prefix`) are validated by one range compare (no key
      of the range changed after the read) plus one compare per key seen (none deleted):
      any write under the prefix by anyone aborts the attempt, even to a key ``fn`` did not
      look at (the false conflicts of etcd#7383), and a prefix of more keys than fit in one
      transaction (128 compares in all) is refused with :class:`TooManyOperationsError`.
    * **Fenced** with ``fence=`` (a lock or leadership handle): the commit also requires the
      handle's key, so a stale holder commits nothing and gets the handle's lost error.
    * **Lease loss**: the states are not leased; a transaction never depends on a session
      lease unless fenced (then a lost lease makes the commit fail as above).
    * An ambiguous commit (no answer) raises :class:`AmbiguousResultError`; ``fn`` is not
      run again, because the writes may have been applied.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .._core.codec import decode, encode
from .._core.errors import CompactedError, TooManyOperationsError, TransactionConflictError
from .._core.keys import Keyspace, prefix_end
from .._core.kv import AnyOp, Compare, KeyValue, Op, RangeResult, TxnResult
from .._transport import MAX_TXN_OPS, Transport
from .ownership import Ownership

__all__ = ["MAX_STATE_BYTES", "Isolation", "TransactStatistics", "Tx", "transact"]

R = TypeVar("R")

MAX_STATE_BYTES = 1024 * 1024  # one state's JSON encoding (etcd's request limit is 1.5 MiB)
_BACKOFF_FIRST = 0.002
_BACKOFF_MAX = 0.1
_IMMEDIATE = 2  # retries made at once, from the failed commit's read-back


class Isolation(enum.Enum):
    """Isolation level of :func:`transact` (see the module docstring)."""

    SERIALIZABLE_SNAPSHOT = "serializable-snapshot"
    SERIALIZABLE = "serializable"
    REPEATABLE_READ = "repeatable-read"
    READ_COMMITTED = "read-committed"


@dataclass(slots=True)
class TransactStatistics:
    """Counts over every :func:`transact` call that was given this object.

    Attributes:
        calls: calls started.
        commits: calls that committed.
        attempts: attempts made (``attempts - calls`` were retries).
        conflicts: attempts whose commit found a changed key (or a compacted snapshot).
        exhausted: calls that raised :class:`TransactionConflictError`.
    """

    calls: int = 0
    commits: int = 0
    attempts: int = 0
    conflicts: int = 0
    exhausted: int = 0


@dataclass(slots=True)
class _Range:
    end: bytes
    kvs: list[KeyValue]
    revision: int


@dataclass(slots=True)
class _Prefetch:
    revision: int
    keys: dict[bytes, KeyValue | None] = field(default_factory=dict)
    ranges: dict[bytes, _Range] = field(default_factory=dict)


class Tx:
    """One attempt of a transaction: cached reads, buffered writes.

    Attributes:
        attempt: 1 for the first run of ``fn``, 2 for the first retry, ...
    """

    def __init__(
        self,
        transport: Transport,
        keyspace: Keyspace,
        isolation: Isolation,
        attempt: int,
        prefetch: _Prefetch | None,
    ) -> None:
        self.attempt = attempt
        self._t = transport
        self._ks = keyspace
        self._iso = isolation
        self._pinned = isolation in (Isolation.SERIALIZABLE_SNAPSHOT, Isolation.SERIALIZABLE)
        self._rev = 0  # the snapshot revision (pinned levels), 0 until the first read
        self._reads: dict[bytes, KeyValue | None] = {}
        self._ranges: dict[bytes, _Range] = {}
        self._writes: dict[bytes, bytes | None] = {}  # None: delete
        self._prefetch = prefetch
        if prefetch is not None and self._pinned:
            self._rev = prefetch.revision

    @property
    def revision(self) -> int:
        """The snapshot revision of the reads (0 before the first read; latest-read levels 0)."""
        return self._rev if self._pinned else 0

    # reading -------------------------------------------------------------------------------
    async def get(self, name: str, default: Any = None) -> Any:
        """The value of state ``name`` (``default`` when absent); sees this attempt's writes."""
        return await self._value(self._ks.state(name), default)

    async def _value(self, key: bytes, default: Any) -> Any:
        if key in self._writes:  # written before being read: nothing to read or to check
            data = self._writes[key]
            return default if data is None else decode(data)
        kv = await self._key(key)
        return default if kv is None else decode(kv.value)

    async def get_kv(self, name: str) -> KeyValue | None:
        """The stored key of state ``name`` as read in this attempt (not this attempt's writes)."""
        return await self._key(self._ks.state(name))

    async def _key(self, key: bytes) -> KeyValue | None:
        if key in self._reads:
            return self._reads[key]
        pre = self._prefetch
        if pre is not None and key in pre.keys:
            kv = pre.keys[key]
        else:
            res = await self._read(Op.get(key, revision=self._rev if self._pinned else 0))
            kv = res.first
        self._reads[key] = kv
        return kv

    async def get_many(self, *names: str, default: Any = None) -> list[Any]:
        """The values of several states, read in **one** round trip (one snapshot).

        Like :meth:`get` for each name, in order; the names not read yet in this attempt
        are read together in one etcd transaction of reads.
        """
        keys = [self._ks.state(n) for n in names]
        pre = self._prefetch
        todo = [
            k
            for k in dict.fromkeys(keys)
            if k not in self._writes
            and k not in self._reads
            and not (pre is not None and k in pre.keys)
        ]
        if len(todo) > MAX_TXN_OPS:
            raise TooManyOperationsError(len(todo), MAX_TXN_OPS)
        if todo:
            rev = self._rev if self._pinned else 0
            res = await self._t.txn([], [Op.get(k, revision=rev) for k in todo])
            if self._pinned and self._rev == 0:
                self._rev = res.revision
            for k, got in zip(todo, res.responses, strict=True):
                assert isinstance(got, RangeResult)
                self._reads[k] = got.first
        return [await self._value(k, default) for k in keys]  # all read by now

    async def get_prefix(self, name_prefix: str) -> dict[str, Any]:
        """Every state whose name starts with ``name_prefix``, by name (with this attempt's writes).

        See the module docstring for the cost: any write under the prefix aborts the attempt.
        """
        start = self._ks.state_range(name_prefix)
        rng = self._ranges.get(start)
        if rng is None:
            pre = self._prefetch
            if pre is not None and start in pre.ranges:
                rng = pre.ranges[start]
            else:
                end = prefix_end(start)
                res = await self._read(
                    Op.get(start, range_end=end, revision=self._rev if self._pinned else 0)
                )
                rng = _Range(end, res.kvs, self._rev if self._pinned else res.revision)
            if len(self._ranges) + len(self._reads) + len(rng.kvs) >= MAX_TXN_OPS:
                raise TooManyOperationsError(len(rng.kvs) + 1, MAX_TXN_OPS)
            self._ranges[start] = rng
        out = {self._name(kv.key): decode(kv.value) for kv in rng.kvs}
        for key, data in self._writes.items():
            if start <= key < rng.end:
                if data is None:
                    out.pop(self._name(key), None)
                else:
                    out[self._name(key)] = decode(data)
        return dict(sorted(out.items()))

    async def _read(self, op: Any) -> RangeResult:
        res = await self._t.range(op)
        if self._pinned and self._rev == 0:
            self._rev = res.revision
        return res

    def _name(self, key: bytes) -> str:
        return self._ks.relative(key).removeprefix("state/")

    # writing -------------------------------------------------------------------------------
    def put(self, name: str, value: Any) -> None:
        """Set state ``name`` to ``value`` (a JSON value) when the transaction commits."""
        key = self._ks.state(name)
        self._writes[key] = encode(value, f"state {name!r}", MAX_STATE_BYTES)

    def delete(self, name: str) -> None:
        """Delete state ``name`` when the transaction commits."""
        self._writes[self._ks.state(name)] = None

    # committing ----------------------------------------------------------------------------
    def _compares(self) -> list[Compare]:
        if self._iso is Isolation.READ_COMMITTED:
            return []
        cmps = [
            Compare.mod_revision(k) == (0 if kv is None else kv.mod_revision)
            for k, kv in self._reads.items()
        ]
        for start, rng in self._ranges.items():
            cmps.append(Compare.mod_revision(start, range_end=rng.end) < rng.revision + 1)
            cmps.extend(Compare.mod_revision(kv.key) == kv.mod_revision for kv in rng.kvs)
        if self._iso is Isolation.SERIALIZABLE_SNAPSHOT and self._rev:
            cmps.extend(
                Compare.mod_revision(k) < self._rev + 1
                for k in self._writes
                if k not in self._reads
            )
        return cmps

    def _operations(self) -> tuple[list[AnyOp], list[AnyOp]]:
        success: list[AnyOp] = [
            Op.delete(k) if v is None else Op.put(k, v) for k, v in self._writes.items()
        ]
        failure: list[AnyOp] = [Op.get(k) for k in self._reads]
        failure.extend(Op.get(s, range_end=r.end) for s, r in self._ranges.items())
        return success, failure

    def _prefetched(self, res: TxnResult) -> _Prefetch:
        """The read set as the failed commit saw it: the next attempt's snapshot."""
        responses = res.responses
        pre = _Prefetch(res.revision)
        keys = list(self._reads)
        for i, key in enumerate(keys):
            r = responses[i]
            assert isinstance(r, RangeResult)
            pre.keys[key] = r.first
        for j, (start, rng) in enumerate(self._ranges.items()):
            r = responses[len(keys) + j]
            assert isinstance(r, RangeResult)
            pre.ranges[start] = _Range(rng.end, r.kvs, res.revision)
        return pre

    def _changed(self, pre: _Prefetch) -> list[bytes]:
        """The keys read in this attempt that the failed commit found changed."""
        out = [k for k, kv in self._reads.items() if _mod(pre.keys.get(k)) != _mod(kv)]
        for start, rng in self._ranges.items():
            now = pre.ranges[start].kvs
            if [(kv.key, kv.mod_revision) for kv in now] != [
                (kv.key, kv.mod_revision) for kv in rng.kvs
            ]:
                out.append(start)
        return out or list(self._writes)


def _mod(kv: KeyValue | None) -> int:
    return 0 if kv is None else kv.mod_revision


async def transact(
    transport: Transport,
    keyspace: Keyspace,
    fn: Callable[[Tx], Awaitable[R]],
    *,
    isolation: Isolation = Isolation.SERIALIZABLE_SNAPSHOT,
    max_attempts: int = 64,
    fence: Ownership | None = None,
    statistics: TransactStatistics | None = None,
) -> R:
    """Run ``fn`` as one transaction over shared states; return what ``fn`` returned.

    Args:
        transport: the connection.
        keyspace: the tenant's keys.
        fn: ``async def fn(tx) -> result``; it may run several times (once per attempt),
            so it must not have effects outside ``tx``.
        isolation: see :class:`Isolation`.
        max_attempts: the retry budget (1-1000).
        fence: a lock or leadership handle the commit must still hold.
        statistics: counts to update (for metrics and benchmarks).

    Raises:
        TransactionConflictError: every attempt conflicted; nothing was written.
        OwnershipLostError: the fence was lost (its own subclass); nothing was written.
        AmbiguousResultError: the commit got no answer; it may have been applied.
        TooManyOperationsError: the transaction reads or writes more keys than one etcd
            transaction holds.
        ValueError: a bad ``max_attempts``.
    """
    check_attempts(max_attempts)
    stats = statistics if statistics is not None else TransactStatistics()
    stats.calls += 1
    prefetch: _Prefetch | None = None
    conflicted: list[bytes] = []
    for attempt in range(1, max_attempts + 1):
        stats.attempts += 1
        tx = Tx(transport, keyspace, isolation, attempt, prefetch)
        try:
            result = await fn(tx)
        except CompactedError:
            # the snapshot revision was compacted away under a slow attempt: start afresh
            stats.conflicts += 1
            prefetch = None
            await _backoff(attempt)
            continue
        success, failure = tx._operations()
        compares = tx._compares()
        if not success and (isolation is not Isolation.REPEATABLE_READ or not compares):
            # read only: the reads were one snapshot already (or any latest values will
            # do); repeatable reads, taken one by one, are checked together as a commit is
            stats.commits += 1
            return result
        if len(compares) > MAX_TXN_OPS or len(success) > MAX_TXN_OPS:
            raise TooManyOperationsError(max(len(compares), len(success)), MAX_TXN_OPS)
        if fence is not None:
            res = await fence.txn(compares, success, failure)
        else:
            res = await transport.txn(compares, success, failure)
        if res.succeeded:
            stats.commits += 1
            return result
        stats.conflicts += 1
        prefetch = tx._prefetched(res)
        conflicted = tx._changed(prefetch)
        if attempt < max_attempts and await _backoff(attempt):
            prefetch = None  # stale after the pause: the next attempt reads afresh
    stats.exhausted += 1
    raise TransactionConflictError("transact", max_attempts, conflicted)


def check_attempts(max_attempts: object) -> None:
    """Refuse a retry budget that is not an int from 1 to 1000 (before anything is sent)."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise ValueError(f"max_attempts must be an int, not {type(max_attempts).__name__}")
    if not 1 <= max_attempts <= 1000:
        raise ValueError(f"max_attempts must be 1-1000, not {max_attempts}")


async def _backoff(attempt: int) -> bool:
    """After the ``attempt``-th conflict: whether to pause before the next attempt (and pause).

    The first two retries go at once, from the values the failed commit read back (fresh:
    a pause would let the winner move on and make them stale, so a writer that paused while
    another kept winning would lose every time). From the third on, full jitter, growing
    with the attempt, spreads writers that keep colliding; the caller then reads afresh.
    """
    if attempt <= _IMMEDIATE:
        await anyio.lowlevel.checkpoint()
        return False
    cap = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (attempt - _IMMEDIATE - 1))
    await anyio.sleep(random.uniform(0, cap))
    return True
