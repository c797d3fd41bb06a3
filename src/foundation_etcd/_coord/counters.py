"""Sharded counters: exact totals whose throughput holds up under contention.

::

    hits = ShardedCounter(session, "hits", shards=32)   # or cluster.counter("hits")
    await hits.add()          # +1: one transaction in the common case; add(-3) subtracts
    await hits.value()        # the watched view's sum: no round trip once open
    await hits.exact()        # one linearizable read of every shard, summed

The counter is the sum of the keys under ``counters/{name}/`` (tenant prefix), one per shard
(``0000``, ``0001``, ...), not leased. A shard holds the JSON ``{"n": <total>, "op": "<id>"}``
(its running total, and the id of the add that wrote it): any etcd client reads the counter
by summing ``n``; a value that is not such an object counts as 0. An add compares one
shard's mod revision with the one this handle last saw and puts the new total; on a
conflict the failure branch reads this handle's shards back, and the add moves to one of
the coldest other shards, at random (docs/concepts/counters.md).

Guarantees:
    * **Exact.** An add that returns was applied exactly once; one that raises
      :class:`TransactionConflictError` (it lost ``max_attempts`` times),
      :class:`EtcdUnavailableError`, ``TypeError`` or ``ValueError`` was not applied.
    * **Ambiguity is resolved, not guessed.** When an add's transaction (compare the
      shard's mod revision with ``M``) gets no answer, the add sends it again (same
      compare, total and op id) until etcd answers. Success: the shard was still at ``M``,
      the lost copy had not applied and never can. Failure: had the lost copy applied, it
      would be the *first* change of the shard after ``M``, so also after ``F``, a revision
      this handle saw etcd reach before sending (``F >= M``). The current value has the
      add's op id: applied; the shard unchanged since ``F``: not applied; else a watch from
      ``F + 1`` gives the first change, whose op id decides. An add not applied is retried
      (the lost copy's compare can never hold again). Only a compacted history, or etcd
      unreachable for ``resolve_timeout``, raises :class:`AmbiguousResultError` (it may
      have been applied). A cancelled add may have been applied.
    * **Reads.** :meth:`ShardedCounter.exact` sums one linearizable range of the prefix (one
      revision): it counts every add that returned before it. :meth:`ShardedCounter.value`
      sums the watched view (no I/O once open): a total etcd had, maybe behind other
      processes' adds, never behind this handle's own. Both sum every key under the
      prefix, so handles with other ``shards`` settings count exactly.
    * :meth:`ShardedCounter.reset` adds minus the exact value: concurrent adds are kept.
    * **Lease loss** changes nothing: shards are not leased and outlive their writers.

Not promised: the resolution relies on shards never being deleted while adds run (the
library never deletes them). Cost: an uncontended add is one transaction (one compare, one
put); a conflict one more, whose answer carries this handle's shards (~60 bytes each).
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

import anyio

from .._core.amounts import MAX_AMOUNT
from .._core.codec import decode, encode
from .._core.errors import (
    AmbiguousResultError,
    EtcdUnavailableError,
    SessionClosedError,
    TransactionConflictError,
)
from .._core.kv import Compare, KeyValue, Op, RangeOp, RangeResult, TxnResult
from .session import Session
from .views import SharedViews
from .watch import WatchedView, open_view

__all__ = ["CounterStatistics", "ShardedCounter"]

MAX_SHARDS = 1000  # shard keys have four digits
MAX_ATTEMPTS, RESOLVE_TIMEOUT = 32, 30.0


@dataclass(frozen=True, slots=True)
class CounterStatistics:
    """Counters of one :class:`ShardedCounter` handle, since it was made.

    Attributes:
        adds: adds applied (returned).
        txns: transactions sent, resolution re-sends included.
        conflicts: transactions another writer beat (each retried on another shard).
        ambiguous: transactions that got no answer (each one resolved, or raised).
        resolved_applied: ambiguous transactions found applied.
        resolved_not_applied: ambiguous transactions found not applied (then retried).
    """

    adds: int = 0
    txns: int = 0
    conflicts: int = 0
    ambiguous: int = 0
    resolved_applied: int = 0
    resolved_not_applied: int = 0

    @property
    def retry_fraction(self) -> float:
        """The fraction of transactions that were conflicts (0.0 before any)."""
        return self.conflicts / self.txns if self.txns else 0.0


def _decode(kv: KeyValue) -> tuple[int, str]:
    """A shard's ``(total, op id)``; a value the library would not write is ``(0, "")``."""
    try:
        doc = decode(kv.value)
        n, op = doc["n"], doc.get("op")
    except (ValueError, TypeError, KeyError, AttributeError):
        return 0, ""
    ok = isinstance(n, int) and not isinstance(n, bool)
    return (n, op if isinstance(op, str) else "") if ok else (0, "")


class _Unresolvable(Exception):
    """An ambiguous add's outcome cannot be told (its history is compacted)."""


@dataclass(frozen=True, slots=True)
class _Try:
    """An add's transaction: compare ``key`` at ``mod``, put ``value``.

    ``floor`` is a revision this handle saw etcd reach before sending (``>= mod``).
    """

    shard: int
    key: bytes
    mod: int
    floor: int
    total: int
    op: str
    value: bytes


class ShardedCounter:
    """A named integer counter spread over ``shards`` keys, exact under contention."""

    def __init__(
        self,
        session: Session,
        name: str,
        *,
        shards: int = 32,
        views: SharedViews | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        """Prepare the counter; nothing is sent until it is used.

        Args:
            session: the session whose connection the counter uses (its lease id seeds the
                first shard choice; nothing is written under the lease).
            name: the counter's name (an id).
            shards: how many shards this handle writes, 1 to 1000. Reads sum every shard,
                whatever the setting of the handles that wrote them.
            views: the process's shared views, where ``value()`` opens the counter's view;
                without, the handle opens its own on first use, until the session closes.
            max_attempts: transactions one add may lose to other writers before it gives up.
            resolve_timeout: seconds an ambiguous add keeps trying to learn its outcome.

        Raises:
            InvalidIdError: a bad name.
            TypeError: ``shards`` is not an ``int``.
            ValueError: ``shards`` outside 1..1000, ``max_attempts < 1`` or
                ``resolve_timeout <= 0``.
        """
        ks = session.config.keyspace
        self._prefix = ks.counter_prefix(name)  # validates the name
        if isinstance(shards, bool) or not isinstance(shards, int):
            raise TypeError(f"shards must be an int, not {type(shards).__name__}")
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards must be 1 to {MAX_SHARDS}, not {shards}")
        if max_attempts < 1 or not resolve_timeout > 0:
            raise ValueError("max_attempts must be >= 1 and resolve_timeout > 0")
        self.name: str = name
        self.shards: int = shards
        self._session, self._t, self._views = session, session.transport, views
        self._max_attempts, self._resolve_timeout = max_attempts, resolve_timeout
        self._keys = [ks.counter_shard(name, i) for i in range(shards)]
        self._index = {key: i for i, key in enumerate(self._keys)}
        # every shard of this handle's range, in one read (the failure branch)
        self._read_mine = Op.get(self._keys[0], range_end=ks.counter_shard(name, shards))
        lease_id = 0 if session.closed else session.lease.id
        self._rng = random.Random(secrets.randbits(64) ^ lease_id)
        self._home = self._rng.randrange(shards)
        self._op_base, self._seq = f"{lease_id:x}.{secrets.token_hex(4)}", 0
        self._known: dict[int, tuple[int, int]] = {}  # shard -> (mod revision, total)
        self._busy: Counter[int] = Counter()  # shard -> adds of this handle in flight there
        self._last_write: tuple[bytes, int] | None = None  # (key, revision) of the newest
        self._horizon = 0  # the highest revision this handle has seen etcd at
        self._view: WatchedView | None = None
        self._opening = anyio.Lock()
        self._parsed: dict[bytes, tuple[int, int]] = {}  # key -> (mod revision, total)
        self._stats = CounterStatistics()

    def _count(self, *names: str) -> None:
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + 1 for k in names})

    def statistics(self) -> CounterStatistics:
        """This handle's counters (no I/O)."""
        return self._stats

    # writing -------------------------------------------------------------------------------
    async def add(self, n: int = 1) -> None:
        """Add ``n`` (negative to subtract; 0 writes nothing), exactly once.

        Raises:
            TypeError: ``n`` is not an ``int`` (``bool`` neither); nothing sent.
            ValueError: ``|n|`` is above 2**53 - 1; nothing sent.
            TransactionConflictError: every attempt lost to another writer; not applied.
            EtcdUnavailableError: etcd could not be reached; not applied.
            AmbiguousResultError: the outcome could not be learnt: it may have been applied.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"add() takes an int, not {type(n).__name__}")
        if abs(n) > MAX_AMOUNT:
            raise ValueError(f"add() takes at most 2**53 - 1 either way, not {n}")
        if n:
            await self._add(n)

    async def reset(self) -> int:
        """Subtract the exact value (one read) and return it. Raises as :meth:`add`.

        Concurrent adds are kept: each counts before the read (cancelled) or after it.
        """
        total = await self.exact()
        if total:
            await self._add(-total)
        return total

    async def _add(self, n: int) -> None:
        exclude = -1
        for attempt in range(1, self._max_attempts + 1):
            shard = self._pick(exclude)
            self._busy[shard] += 1
            try:
                done = await self._attempt(shard, n)
            finally:
                self._busy[shard] -= 1
                if not self._busy[shard]:
                    del self._busy[shard]
            if done:
                self._home = shard
                self._count("adds")
                return
            exclude = shard
            if attempt >= 2:
                # a small jittered pause from the second retry: up to 2, 4, ... 50 ms
                await anyio.sleep(self._rng.uniform(0, min(0.05, 0.0005 * 2**attempt)))
        raise TransactionConflictError(
            f"counter {self.name!r}: add({n})", self._max_attempts, [self._keys[exclude]]
        )

    def _pick(self, exclude: int) -> int:
        """Home if free, else one of the coldest (likeliest unwritten) free shards but exclude."""
        if self.shards == 1:
            return 0
        if exclude < 0 and self._home not in self._busy:
            return self._home
        others = [i for i in range(self.shards) if i != exclude]
        free = [i for i in others if i not in self._busy] or others
        free.sort(key=lambda i: self._known.get(i, (0, 0))[0])
        return self._rng.choice(free[: max(1, len(free) // 4)])

    def _state(self, shard: int) -> tuple[int, int, int]:
        """``(mod revision, total)`` of ``shard`` as last seen, and a floor (see _Try)."""
        mod, total = self._known.get(shard, (0, 0))
        floor, view = self._horizon, self._view
        if view is not None:
            floor = max(floor, view.revision)
            kv = view.get(self._keys[shard])
            if kv is not None and kv.mod_revision > mod:
                mod, total = kv.mod_revision, _decode(kv)[0]
        return mod, total, max(floor, mod)

    def _learn(self, shard: int, mod: int, total: int) -> None:
        self._horizon = max(self._horizon, mod)
        if mod > self._known.get(shard, (0, 0))[0]:
            self._known[shard] = (mod, total)

    def _learn_all(self, read: RangeResult) -> None:
        """Take in a read of this handle's shards (absent ones are absent at its revision)."""
        self._horizon = max(self._horizon, read.revision)
        mine = {self._index[kv.key]: kv for kv in read.kvs if kv.key in self._index}
        for shard, kv in mine.items():
            self._learn(shard, kv.mod_revision, _decode(kv)[0])
        for shard, (mod, _) in list(self._known.items()):
            if shard not in mine and mod < read.revision:
                del self._known[shard]  # deleted (by hand) since this handle saw it

    def _wrote(self, shard: int, revision: int, total: int) -> None:
        self._learn(shard, revision, total)
        if self._last_write is None or revision > self._last_write[1]:
            self._last_write = (self._keys[shard], revision)

    async def _send(self, t: _Try, failure: RangeOp) -> TxnResult:
        self._count("txns")
        when = [Compare.mod_revision(t.key) == t.mod]
        return await self._t.txn(when, [Op.put(t.key, t.value)], [failure])

    async def _attempt(self, shard: int, n: int) -> bool:
        """One transaction on ``shard``: whether the add applied (else: retry elsewhere)."""
        mod, total, floor = self._state(shard)
        self._seq += 1
        op = f"{self._op_base}.{self._seq}"
        value = encode({"n": total + n, "op": op}, "counter shard", 1024)
        t = _Try(shard, self._keys[shard], mod, floor, total + n, op, value)
        try:
            res = await self._send(t, self._read_mine)
        except AmbiguousResultError as exc:
            self._count("ambiguous")
            applied = await self._resolve(t, exc)
            self._count("resolved_applied" if applied else "resolved_not_applied")
            return applied
        if res.succeeded:
            self._wrote(shard, res.revision, t.total)
            return True
        self._count("conflicts")
        self._learn_all(res.range(0))
        return False

    # ambiguity -----------------------------------------------------------------------------
    async def _resolve(self, t: _Try, exc: Exception) -> bool:
        """Whether the unanswered ``t`` applied; AmbiguousResultError when it cannot tell."""
        what = f"counter {self.name!r}: an add's answer was lost and"
        delay, last = 0.05, exc
        with anyio.move_on_after(self._resolve_timeout):
            while True:
                try:
                    return await self._settle(t)
                except _Unresolvable as gone:
                    raise AmbiguousResultError(
                        f"{what} {gone}: it may or may not have been applied",
                        operation="txn",
                    ) from exc
                except (AmbiguousResultError, EtcdUnavailableError) as err:
                    last = err
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AmbiguousResultError(
            f"{what} etcd did not say whether it applied for {self._resolve_timeout:g} s "
            f"(last: {last})",
            operation="txn",
        ) from exc

    async def _settle(self, t: _Try) -> bool:
        res = await self._send(t, Op.get(t.key))  # the same transaction again
        if res.succeeded:  # still at mod: the lost copy never applied, and now never will
            self._wrote(t.shard, res.revision, t.total)
            return True
        self._horizon = max(self._horizon, res.revision)
        kv = res.range(0).first
        if kv is None:
            raise _Unresolvable("its shard was deleted")
        n, op = _decode(kv)
        if op == t.op:  # ours, and still the latest value
            self._wrote(t.shard, kv.mod_revision, t.total)
            return True
        self._learn(t.shard, kv.mod_revision, n)
        if kv.mod_revision <= t.floor:  # unchanged since before it was sent: never applied
            return False
        # Had the lost copy applied, it would be the first change after mod (shards are
        # never deleted: for mod 0, the creation), hence the first after floor >= mod.
        first = await self._first_change(t.key, t.floor)  # a deletion decodes to no op
        if _decode(first)[1] == t.op:
            self._wrote(t.shard, first.mod_revision, t.total)
            return True
        return False

    async def _first_change(self, key: bytes, after: int) -> KeyValue:
        """The first change of ``key`` after ``after`` (one exists); _Unresolvable if gone."""
        stream = self._t.open_watch()
        try:
            await stream.create(key, None, after + 1, progress_notify=False)
            while True:
                resp = await stream.read()
                if resp.compact_revision:
                    gone = f"compacted up to {resp.compact_revision}"
                    raise _Unresolvable(f"its shard's history after {after} is {gone}")
                if resp.canceled:
                    raise EtcdUnavailableError(f"watch cancelled: {resp.cancel_reason}")
                if resp.events:
                    return resp.events[0].kv
        finally:
            stream.close()

    # reading -------------------------------------------------------------------------------
    async def exact(self) -> int:
        """The counter's value: one linearizable read of every shard, summed (one revision)."""
        res = await self._t.get_prefix(self._prefix)
        self._learn_all(res)  # a read of every shard: the next adds know where they stand
        return self._sum(res.kvs)

    async def value(self, *, revision: int = 0) -> int:
        """The counter's value from the process's watched view (no I/O once it is open).

        It opens the view on first use, includes every add this handle made, and waits
        until the view reflects ``revision`` (for example one from a status call).
        """
        view = await self._open_view()
        if self._last_write is not None:
            await view.wait_for_key(*self._last_write)
        if revision:
            await view.wait_for(revision)
        return self._sum(view.items().values())

    @property
    def view(self) -> WatchedView | None:
        """The watched view of the counter's prefix, once :meth:`value` has opened it."""
        return self._view

    def _sum(self, kvs: Iterable[KeyValue]) -> int:
        parsed, total = self._parsed, 0
        for kv in kvs:
            hit = parsed.get(kv.key)
            if hit is None or hit[0] != kv.mod_revision:
                hit = parsed[kv.key] = (kv.mod_revision, _decode(kv)[0])
            total += hit[1]
        return total

    async def _open_view(self) -> WatchedView:
        async with self._opening:
            if self._view is None:
                views = self._views
                self._view = await (self._own_view() if views is None else views(self._prefix))
        return self._view

    async def _own_view(self) -> WatchedView:
        """Open a view of the prefix in the session's task group (it ends with the session)."""
        if self._session.closed:
            raise SessionClosedError("session is closed")
        got: list[WatchedView | Exception] = []
        ready = anyio.Event()

        async def run() -> None:
            try:
                async with open_view(self._t, self._prefix) as view:
                    got.append(view)
                    ready.set()
                    await anyio.sleep_forever()
            except Exception as exc:  # given to the caller (a later call tries again)
                got.append(exc)
            finally:
                got.append(SessionClosedError("session closed"))
                ready.set()

        self._session.start_background(run)
        await ready.wait()
        if isinstance(got[0], Exception):
            raise got[0]
        return got[0]
