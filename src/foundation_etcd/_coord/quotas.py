"""Quota accounting: reservations queued in etcd, admitted by a rule that never goes back.

Each *pool* (a tenant resource such as ``gpu``, or one node's capacity of a resource) has a
queue ``/{ns}/_system/quotas/{tenant}/queue/{pool}/{reservation_id}`` of keys under their
holders' session leases, ordered by create revision. A reservation is **admitted** in a pool
when the amounts of the queue up to and including it fit the pool's limit; a reservation of
several pools is admitted when it is admitted in each. Appending keys never changes the sums
of the keys before them, and deleting keys only lowers them, so once admitted a reservation
stays admitted.

``reserve`` is **one transaction**: it creates the reservation's keys (one per pool), checks
that the limits it judged against are unchanged (mod revisions), and reads the first
``min(QUEUE_READ, limit)`` keys of each queue at that revision (amounts are at least 1, so a
key behind the first ``limit`` keys cannot be admitted). The decision is exact at once: no
retry under contention, no second round trip. A reservation that must wait, or whose queue
was longer than what was read, waits on the process's watched view (kept incrementally, so
the cost per reservation stays bounded by ``QUEUE_READ`` keys on the wire and by the queue
position in memory).

A tenant's limits (``.../limits/{resource}``) and queues share one prefix, so one watch sees
both in revision order: the view is a real state of etcd after each batch of events, and a
waiter found admitted there *is* admitted at that revision, with no confirming round trip.
Waiters wake on changes of that view (a release ahead of them, a raised limit), never by
polling; each change computes every touched pool's admitted frontier once and wakes exactly
the waiters behind it. A node pool's limit (its announced capacity) comes from the node view,
a different stream, so a node-pool waiter confirms it with one compare of the node key.

Guarantees:
    * At any revision, a reservation newly admitted at that revision fits the pool's limit
      at that revision together with everything queued before it.
    * A crashed holder's reservations vanish with its lease; the next in line is admitted.
    * FIFO per pool: a reservation is admitted only after every earlier one in that pool
      fits (no starvation of large requests by small ones).
    * Lowering a limit admits nothing new until usage is under it; holders keep theirs.
    * Bad input (zero, negative or non-integer amounts, unknown resources, amounts above
      the limit, which could never be admitted) raises at once and writes nothing.
    * **Crafted queue entries never admit more.** A tenant's role may write its ``queue/``,
      so entries the library did not write can appear there. An entry counts at its amount
      only if it is exactly what ``reserve`` writes: a JSON object whose ``amounts`` maps
      valid pool names to valid amounts (``_amounts``: ``int``, 1 to ``MAX_AMOUNT``),
      naming the pool of its key, never rewritten (version 1: the transport never retries
      a write, so ``reserve`` puts each key once). Any other entry (negative, zero,
      fractional, boolean, string or oversized amounts, unparsable or oversized values, no
      ``amounts``, amounts for other pools only, a rewritten key) counts as
      :data:`~foundation_etcd._amounts.BLOCKING`, more than any limit: it is never
      admitted, and nothing queued behind it in that pool is admitted until it is deleted.
      Both judges, the reserving transaction's read and the view, apply this one rule, and
      each entry still counts at least 1, so a key behind the first ``limit`` keys is still
      never admitted. Keys in a queue no pool has (a bad pool name) are ignored by both.
      Limits and node capacities read back follow the same rule: an invalid one is no limit
      (nothing admitted). ``reserve`` creates its keys create-only: a key of its name that
      another writer put first is left alone and the reservation takes a fresh name.
    * The body of ``reserve`` runs under the session lease: when the lease is lost the
      reservation is gone, so the body is cancelled (``LeaseLostError``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core import codec as _codec
from .._core.admission import (
    CACHE_SIZE,
    EMPTY,
    MAX_RESERVATION_BYTES,
    QUEUE_READ,
    Pool,
    Queue,
    decode_or_none,
    entry_amount,
    judge_read,
    node_capacity,
    queue_pool,
)
from .._core.amounts import (
    check_amounts,
    check_limit,
    stored_limit,
)
from .._core.background import background_tasks
from .._core.errors import EtcdError, InvalidReservationError, QuotaExceededError
from .._core.keys import pool_name, validate_id
from .._core.kv import Compare, KeyValue, Op, RangeResult
from .watch import ChangeKind, ViewChange, WatchedView

if TYPE_CHECKING:
    from .._core.keys import Keyspace
    from .session import Session

__all__ = ["QuotaUsage", "Quotas", "Reservation"]

log = logging.getLogger("foundation_etcd.quotas")


@dataclass(frozen=True, slots=True)
class Reservation:
    """An admitted reservation.

    Attributes:
        reservation_id: its id, ``{lease_hex}-{n}`` (reused by this process once released).
        amounts: pool name to amount (node pools are named ``@{node_id}@{resource}``).
        keys: its queue keys, one per pool.
        token: the create revision of its keys (its place in every queue, and its
            identity: unique, where the id is not).
        lease_id: the lease the keys live under.
    """

    reservation_id: str
    amounts: Mapping[str, int]
    keys: tuple[bytes, ...]
    token: int
    lease_id: int

    @property
    def guard(self) -> list[Compare]:
        """Compares that hold while this reservation exists."""
        return [Compare.create_revision(k) == self.token for k in self.keys]


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """A pool's usage as this process's view sees it.

    Attributes:
        pool: the pool.
        limit: its limit (``None``: no limit set).
        used: amounts of the admitted prefix of the queue (held capacity).
        queued: amounts waiting behind it.
        reservations: number of keys in the queue.
        revision: the view's revision.
        malformed: entries the library did not write (see the module's guarantees); each
            blocks the queue behind it and is counted in ``used``/``queued`` as the whole
            limit.
    """

    pool: str
    limit: int | None
    used: int
    queued: int
    reservations: int
    revision: int
    malformed: int = 0


class Quotas:
    """Quota limits and reservations of one tenant. Obtain it as ``cluster.quotas``."""

    def __init__(
        self,
        session: Session,
        keyspace: Keyspace,
        *,
        holder: str,
        views: Callable[[bytes], Awaitable[WatchedView]],
        node_view: WatchedView | None = None,
    ) -> None:
        """Quotas of ``keyspace``'s tenant, reserved under ``session``'s lease.

        Args:
            session: the session whose lease holds the reservations.
            keyspace: the tenant's key layout.
            holder: who reserves (the node id), written into each reservation.
            views: opens (or shares) the watched view of a prefix.
            node_view: the view of node announcements, for node capacity pools.
        """
        self._session = session
        self._transport = session.transport
        self._holder = holder
        self._views_of = views
        self._node_view = node_view
        self._ks = keyspace
        self._prefix = self._ks.quotas_prefix()
        self._queue_prefix = self._prefix + b"queue/"
        self._limits_prefix = self._prefix + b"limits/"
        self._view: WatchedView | None = None
        self._opening = anyio.Lock()
        self._queues: dict[str, Queue] = {}
        self._limits: dict[str, tuple[int, int | None]] = {}  # resource -> (mod, limit)
        self._limit_keys: dict[str, bytes] = {}
        # node key -> (mod revision, capacity): a node pool parses an announcement once
        self._capacities: dict[bytes, tuple[int, Mapping[str, int] | None]] = {}
        self._encoded: dict[tuple[tuple[str, int], ...], bytes] = {}  # amounts -> value
        self._changed: anyio.Event | None = None  # made when a usage watcher waits
        self._waiters: dict[int, tuple[list[Pool], anyio.Event]] = {}
        self._names: list[tuple[int, int]] = []  # released reservation ids: (lease, n)
        self._slots = 0

    async def _wait_nodes(self, revision: int) -> None:
        """Wait until the node view (node capacity pools) reflects ``revision``."""
        if self._node_view is not None:
            await self._node_view.wait_for(revision)

    # the view ------------------------------------------------------------------------------
    async def _open(self) -> WatchedView:
        async with self._opening:
            if self._view is None:
                view = await self._views_of(self._prefix)
                now = view.items().values()
                self._on_change([ViewChange(ChangeKind.ADDED, kv.key, kv, 0) for kv in now])
                view.on_change(self._on_change)
                view.on_stop(self._wake_all)
                if self._node_view is not None:  # node capacity: limits of node pools
                    self._node_view.on_change(lambda _: self._wake())
                self._view = view
        return self._view

    def _on_change(self, changes: list[ViewChange]) -> None:
        qp, lp = self._queue_prefix, self._limits_prefix
        waiters = self._waiters
        admits = False  # whether a change can admit a waiter (appends behind them cannot)
        # nothing here may raise: a change skipped would be an entry missing from a queue
        for c in changes:
            kv = c.kv
            key = kv.key
            if key.startswith(qp):
                name = queue_pool(key, len(qp))
                if name is None:
                    continue  # in no pool's queue: no reservation is judged against it
                q = self._queues.get(name)
                if c.kind is ChangeKind.REMOVED:
                    if q is not None:
                        q.remove(key)
                        if not q.revs:
                            del self._queues[name]
                    admits = True
                else:
                    if q is None:
                        q = self._queues[name] = Queue()
                    q.add(kv.create_revision, key, entry_amount(kv, name))
                    # an append behind every waiter cannot admit one; a waiter's own key
                    # or a rewritten amount can
                    admits = admits or c.kind is ChangeKind.UPDATED or kv.create_revision in waiters
            elif key.startswith(lp):
                resource = key[len(lp) :].decode("utf-8", "replace")
                if c.kind is ChangeKind.REMOVED:
                    self._limits.pop(resource, None)
                else:
                    self._limits[resource] = (kv.mod_revision, self._parse_limit(kv))
                admits = True
        if admits:
            self._wake()
        else:
            self._notify_usage()

    def _notify_usage(self) -> None:
        """Wake the ``watch_usage`` pumps (the event exists only while one waits)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @staticmethod
    def _parse_limit(kv: KeyValue) -> int | None:
        """A stored limit; ``None`` (no limit: nothing admitted) when malformed."""
        limit = stored_limit(decode_or_none(kv.value))
        if limit is None:
            log.warning("ignoring malformed quota limit at %r", kv.key)
        return limit

    def _wake(self) -> None:
        """Wake the waiters that the view now admits (each pool's frontier computed once)."""
        self._notify_usage()
        if not self._waiters:
            return
        frontiers: dict[str, int] = {}
        for token, (pools, admitted) in list(self._waiters.items()):
            for p in pools:
                f = frontiers.get(p.name)
                if f is None:
                    limit = self._current_limit(p.name, p.node)[0]
                    q = self._queues.get(p.name, EMPTY)
                    f = frontiers[p.name] = -1 if limit is None else q.frontier(limit)
                if token > f:
                    break
            else:
                admitted.set()

    def _wake_all(self) -> None:
        """Wake every waiter (the view stopped: they see its error when they look)."""
        for _, admitted in self._waiters.values():
            admitted.set()

    # limits --------------------------------------------------------------------------------
    async def set_limit(self, resource: str, limit: int) -> None:
        """Set this tenant's limit of ``resource`` (an administrative write).

        With etcd access control, tenants can read but not write their limits.

        Raises:
            InvalidReservationError: a negative or non-integer limit.
        """
        validate_id(resource, "resource")
        check_limit(limit, f"limit of {resource!r}", InvalidReservationError)
        await self._transport.put(
            self._ks.quota_limit(resource), _codec.encode({"limit": limit}, "limit", 1024)
        )

    async def get_limit(self, resource: str) -> int | None:
        """The tenant's limit of ``resource`` (a linearizable read), or ``None``."""
        kv = await self._transport.get(self._ks.quota_limit(resource))
        return None if kv is None else self._parse_limit(kv)

    def _limit_key(self, resource: str) -> bytes:
        key = self._limit_keys.get(resource)
        if key is None:
            key = self._limit_keys[resource] = self._ks.quota_limit(resource)
        return key

    def _current_limit(self, pool: str, node: str | None) -> tuple[int | None, bytes, int]:
        """A pool's limit now, the key it comes from, and that key's mod revision."""
        if node is not None:
            resource = pool.rpartition("@")[2]
            kv = None if self._node_view is None else self._node_view.get(self._ks.node(node))
            if kv is None:
                return None, self._ks.node(node), 0
            cached = self._capacities.get(kv.key)
            if cached is None or cached[0] != kv.mod_revision:  # parsed once per announcement
                cached = (kv.mod_revision, node_capacity(kv.value))
                self._capacities[kv.key] = cached
            capacity = cached[1]
            if capacity is None:
                return None, kv.key, 0
            return capacity.get(resource), kv.key, kv.mod_revision
        mod, limit = self._limits.get(pool, (0, None))
        return limit, self._limit_key(pool), mod

    def usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """A pool's usage from this process's view (no I/O once the view is open)."""
        pool = pool_name(resource, node)
        q = self._queues.get(pool, EMPTY)
        limit = None
        rev = 0
        if self._view is not None:
            limit = self._current_limit(pool, node)[0]
            rev = self._view.revision
        used, queued, malformed = q.usage(limit)
        return QuotaUsage(pool, limit, used, queued, len(q.amounts), rev, malformed)

    async def open_usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """Open the view if needed, catch up with etcd, and return a pool's usage."""
        view = await self._open()
        rev = (await self._transport.status()).revision
        await view.wait_for(rev)
        if node is not None:
            await self._wait_nodes(rev)
        return self.usage(resource, node=node)

    @asynccontextmanager
    async def watch_usage(
        self, resource: str, *, node: str | None = None
    ) -> AsyncIterator[MemoryObjectReceiveStream[QuotaUsage]]:
        """Receive a pool's usage now and after every change."""
        await self._open()
        send, receive = anyio.create_memory_object_stream[QuotaUsage](16)

        async def pump() -> None:
            last = None
            async with send:
                while True:
                    if self._changed is None:
                        self._changed = anyio.Event()
                    changed = self._changed
                    now = self.usage(resource, node=node)
                    key = (now.limit, now.used, now.queued, now.reservations, now.malformed)
                    if key != last:
                        last = key
                        await send.send(now)
                    await changed.wait()

        async with background_tasks() as tg, receive:
            tg.start_soon(pump)
            yield receive

    # reserving -----------------------------------------------------------------------------
    def _check(
        self, amounts: Mapping[str, int], node: str | None, *, final: bool = True
    ) -> list[Pool] | None:
        """Validate a request and pair it with the limits it is judged against.

        With ``final=False``, returns ``None`` instead of raising when a limit is missing or
        too low for an amount: the view may not have seen a limit written just now.
        """
        checked = check_amounts(amounts, "amount", InvalidReservationError, allow_empty=False)
        if node is not None:
            validate_id(node, "node id")
        pools = []
        for resource, amount in checked.items():
            pool = pool_name(resource, node)
            limit, key, mod = self._current_limit(pool, node)
            if limit is None or amount > limit:
                if not final:
                    return None
                if limit is None:
                    where = f"node {node!r}" if node else f"tenant {self._ks.tenant!r}"
                    raise InvalidReservationError(f"{where} has no limit for resource {resource!r}")
                raise InvalidReservationError(
                    f"{amount} {resource} can never be admitted: the limit is {limit}"
                )
            pools.append(Pool(pool, amount, limit, key, mod, node))
        return pools

    async def _check_caught_up(
        self, amounts: Mapping[str, int], node: str | None, view: WatchedView
    ) -> list[Pool]:
        """Catch up with etcd, then ``_check`` for good (the view lacked a fitting limit)."""
        rev = await self._transport.revision()  # linearizable (a read: no txn)
        await view.wait_for(rev)
        if node is not None:
            await self._wait_nodes(rev)
        pools = self._check(amounts, node)
        assert pools is not None
        return pools

    def _take_name(self, lease_id: int, *, fresh: bool = False) -> tuple[str, int]:
        """A reservation id: ``{lease:x}-{n}``, reusing the names of released reservations.

        Fresh names would leave etcd a deleted key per reservation in its index until the
        next compaction, and every queue read scans them: reads slow down with churn. The
        ids of one process's lease are reused once their keys are known to be deleted, so
        a queue's index holds at most the peak number of concurrent reservations per lease.
        With ``fresh``, a name never used by this process (the last one was taken by
        another writer).
        """
        while self._names and not fresh:
            owner, slot = self._names.pop()
            if owner == lease_id:
                return f"{lease_id:x}-{slot}", slot
        self._slots += 1
        return f"{lease_id:x}-{self._slots}", self._slots

    def _value(self, pools: list[Pool]) -> bytes:
        """The reservation's value (cached: the same amounts give the same bytes)."""
        shape = tuple((p.name, p.amount) for p in pools)
        value = self._encoded.get(shape)
        if value is None:
            value = _codec.encode(
                {"amounts": dict(shape), "holder": self._holder},
                "reservation",
                MAX_RESERVATION_BYTES,
            )
            if len(self._encoded) >= CACHE_SIZE:
                self._encoded.clear()
            self._encoded[shape] = value
        return value

    def reserve(
        self, amounts: Mapping[str, int], *, node: str | None = None
    ) -> AbstractAsyncContextManager[Reservation]:
        """Wait until ``amounts`` are admitted; hold them for the block; release on exit.

        Use as ``async with quotas.reserve({"gpu": 1}) as reservation: ...``.

        Args:
            amounts: resource name to positive integer amount.
            node: reserve the node's announced capacity instead of tenant limits.

        Raises:
            InvalidReservationError: bad amounts, unknown resources, or an amount above
                the limit (nothing written).
            LeaseLostError: the session lease was lost (the reservation went with it).
        """
        return self._reserve(amounts, node, nowait=False)

    def reserve_nowait(
        self, amounts: Mapping[str, int], *, node: str | None = None
    ) -> AbstractAsyncContextManager[Reservation]:
        """Like :meth:`reserve`, but raise instead of waiting.

        Raises:
            QuotaExceededError: not admissible now (the queued keys were withdrawn).
        """
        return self._reserve(amounts, node, nowait=True)

    @asynccontextmanager
    async def _reserve(
        self, amounts: Mapping[str, int], node: str | None, *, nowait: bool
    ) -> AsyncIterator[Reservation]:
        view = self._view or await self._open()
        transport = self._transport
        pools = self._check(amounts, node, final=False) or await self._check_caught_up(
            amounts, node, view
        )
        lease = await self._session.wait_lease()
        rid, slot = self._take_name(lease.id)
        value = self._value(pools)
        qp = self._queue_prefix
        keys = tuple(b"%s%s/%s" % (qp, p.name.encode(), rid.encode()) for p in pools)
        token = 0
        attempted = False
        try:
            with lease.guard():
                for _attempt in range(10):
                    attempted = True
                    res = await transport.txn(
                        [Compare.mod_revision(p.limit_key) == p.limit_mod for p in pools]
                        # create-only: a key is never overwritten, so every key reserve
                        # writes has version 1 (``entry_amount`` relies on it)
                        + [Compare.create_revision(k) == 0 for k in keys],
                        [Op.put(k, value, lease=lease.id) for k in keys]
                        + [
                            Op.get(
                                b"%s%s/" % (qp, p.name.encode()),
                                prefix=True,
                                limit=min(QUEUE_READ, p.limit),
                                sort_by_create=True,
                            )
                            for p in pools
                        ],
                        [Op.get(k) for k in keys],
                    )
                    if res.succeeded:
                        token = res.revision
                        break
                    if any(isinstance(r, RangeResult) and r.kvs for r in res.responses):
                        # another writer took the name (this process's keys are deleted
                        # before it reuses a name): leave that key alone, drop the name
                        rid, slot = self._take_name(lease.id, fresh=True)
                        keys = tuple(
                            b"%s%s/%s" % (qp, p.name.encode(), rid.encode()) for p in pools
                        )
                        continue
                    # a limit changed since the view saw it: catch up and judge again
                    await view.wait_for(res.revision)
                    if node is not None:
                        await self._wait_nodes(res.revision)
                    pools = self._check(amounts, node, final=False) or await self._check_caught_up(
                        amounts, node, view
                    )
                else:
                    raise EtcdError("limits or names kept changing; reservation not attempted")
                admitted = self._admitted_from_reads(res.responses[len(keys) :], pools, keys)
                reservation = Reservation(
                    rid, {p.name: p.amount for p in pools}, keys, token, lease.id
                )
                if admitted is not True:
                    if nowait and isinstance(admitted, QuotaExceededError):
                        raise admitted
                    if nowait:  # judge once the view has the own write (an event comes)
                        await view.wait_for_key(keys[0], token)
                    await self._wait_admitted(pools, token, nowait=nowait)
                yield reservation
        finally:
            released = False
            if attempted:
                deadline = anyio.current_time() + self._session.config.request_timeout
                with anyio.CancelScope(shield=True, deadline=deadline):  # one scope: cheaper
                    try:
                        # without an answer the put may have been applied all the same
                        guard = [Compare.create_revision(k) == token for k in keys if token]
                        await transport.txn(guard, [Op.delete(k) for k in keys])
                        released = True
                    except EtcdError as exc:
                        log.warning(
                            "release of %s failed (%s); it expires with its lease", rid, exc
                        )
            if (released and token) or not attempted:
                self._names.append((lease.id, slot))  # its keys are gone: the name is free

    def _exceeded(self, pools: list[Pool], token: int) -> QuotaExceededError:
        """The error for the first pool where the reservation (queued at ``token``) has no room."""
        for p in pools:
            limit = self._current_limit(p.name, p.node)[0]
            limit = p.limit if limit is None else limit
            through = self._queues.get(p.name, EMPTY).sum_through(token) or p.amount
            if through > limit:  # a malformed entry ahead shows as the whole limit used
                used = min(through - p.amount, limit)
                return QuotaExceededError(p.name, requested=p.amount, used=used, limit=limit)
        p = pools[0]
        return QuotaExceededError(p.name, requested=p.amount, used=p.limit, limit=p.limit)

    def _admitted_from_reads(
        self, reads: Sequence[object], pools: list[Pool], keys: tuple[bytes, ...]
    ) -> bool | QuotaExceededError | None:
        """Decide from the transaction's own reads (exact at its revision, see ``judge_read``).

        Returns ``True`` when admitted, the error to raise when not admitted now, and
        ``None`` when a queue was longer than what the transaction read.
        """
        refused: QuotaExceededError | None = None
        for read, p, key in zip(reads, pools, keys, strict=True):
            assert isinstance(read, RangeResult)
            admitted, used = judge_read(read.kvs, p.name, key, p.limit)
            if admitted is None:
                return None
            if not admitted and refused is None:
                refused = QuotaExceededError(p.name, requested=p.amount, used=used, limit=p.limit)
        return True if refused is None else refused

    def _admitted_now(self, pools: list[Pool], token: int) -> bool:
        for p in pools:
            limit = self._current_limit(p.name, p.node)[0]
            through = self._queues.get(p.name, EMPTY).sum_through(token)
            if limit is None or through is None or through > limit:
                return False
        return True

    async def _wait_admitted(self, pools: list[Pool], token: int, *, nowait: bool) -> None:
        node_pools = [p for p in pools if p.node is not None]
        assert self._view is not None
        while True:
            self._view._check()  # a view stopped by an error (permissions) raises it here
            if self._admitted_now(pools, token):
                if not node_pools:
                    return  # limits and queues come from one stream: exact as seen
                # a node's capacity comes from the node view, another stream: confirm that
                # the capacity judged against is still current (one compare)
                checks = [self._current_limit(p.name, p.node) for p in node_pools]
                ok = await self._transport.txn(
                    [Compare.mod_revision(key) == mod for _, key, mod in checks], []
                )
                if ok.succeeded:
                    return
                await self._wait_nodes(ok.revision)
                continue
            if nowait:
                raise self._exceeded(pools, token)
            # sleep until a change admits this reservation: each view change computes the
            # touched pools' frontiers once and wakes only the waiters now admitted
            admitted = anyio.Event()
            self._waiters[token] = (pools, admitted)
            try:
                await admitted.wait()
            finally:
                self._waiters.pop(token, None)
