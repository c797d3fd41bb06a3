"""Quota accounting: reservations queued in etcd, admitted by a rule that never goes back.

Each *pool* (a tenant resource such as ``gpu``, or one node's capacity of a resource) has a
queue ``quotas/{pool}/queue/{reservation_id}`` of keys under their holders' session leases,
ordered by create revision. A reservation is **admitted** in a pool when the amounts of the
queue up to and including it fit the pool's limit; a reservation of several pools is admitted
when it is admitted in each. Appending keys never changes the sums of the keys before them,
and deleting keys only lowers them, so once admitted a reservation stays admitted.

``reserve`` is **one transaction**: it creates the reservation's keys (one per pool), checks
that the limits it judged against are unchanged (mod revisions), and reads the first
``QUEUE_READ`` keys of each queue at that revision. When its own keys are among them the
decision is exact at once: no retry under contention, no second round trip. Longer queues
fall back to the process's watched view of the queues (kept incrementally, so the cost per
reservation stays bounded by ``QUEUE_READ`` keys on the wire and by the queue position in
memory). A waiting reservation wakes on changes of that view (a release ahead of it, a
raised limit), never by polling, and confirms its admission with one compare of the limits'
mod revisions.

Guarantees:
    * At any revision, the admitted reservations of a pool sum to at most its limit.
    * A crashed holder's reservations vanish with its lease; the next in line is admitted.
    * FIFO per pool: a reservation is admitted only after every earlier one in that pool
      fits (no starvation of large requests by small ones).
    * Lowering a limit admits nothing new until usage is under it; holders keep theirs.
    * Bad input (zero, negative or non-integer amounts, unknown resources, amounts above
      the limit, which could never be admitted) raises at once and writes nothing.
    * The body of ``reserve`` runs under the session lease: when the lease is lost the
      reservation is gone, so the body is cancelled (``LeaseLostError``).
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from . import _codec
from ._background import background_tasks
from ._errors import EtcdError, InvalidReservationError, QuotaExceededError
from ._keys import validate_id
from ._kv import Compare, KeyValue, Op
from ._watch import ChangeKind, ViewChange, WatchedView

if TYPE_CHECKING:
    from ._cluster import Cluster

__all__ = ["QuotaUsage", "Quotas", "Reservation"]

log = logging.getLogger("foundation_etcd.quotas")

QUEUE_READ = 64  # queue keys read with each reservation; longer queues use the view


@dataclass(frozen=True, slots=True)
class Reservation:
    """An admitted reservation.

    Attributes:
        reservation_id: its id.
        amounts: pool name to amount (node pools are named ``@{node_id}@{resource}``).
        keys: its queue keys, one per pool.
        token: the create revision of its keys (its place in every queue).
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
    """

    pool: str
    limit: int | None
    used: int
    queued: int
    reservations: int
    revision: int


@dataclass(slots=True)
class _Queue:
    """One pool's queue in create order: parallel lists, appended at the end."""

    revs: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)

    def add(self, rev: int, key: bytes, amount: int) -> None:
        i = bisect.bisect_left(self.revs, rev)
        if i < len(self.revs) and self.revs[i] == rev and self.keys[i] == key:
            self.amounts[i] = amount
            return
        self.revs.insert(i, rev)
        self.keys.insert(i, key)
        self.amounts.insert(i, amount)

    def remove(self, rev: int, key: bytes) -> None:
        i = bisect.bisect_left(self.revs, rev)
        while i < len(self.revs) and self.revs[i] == rev:
            if self.keys[i] == key:
                del self.revs[i], self.keys[i], self.amounts[i]
                return
            i += 1

    def sum_through(self, rev: int) -> int | None:
        """Sum of amounts up to and including ``rev``; ``None`` if ``rev`` is not queued."""
        i = bisect.bisect_right(self.revs, rev)
        if i == 0 or self.revs[i - 1] != rev:
            return None
        return sum(self.amounts[:i])

    def usage(self, limit: int | None) -> tuple[int, int]:
        used = 0
        for a in self.amounts:
            if limit is not None and used + a > limit:
                break
            used += a
        return used, sum(self.amounts) - used


def _pool_name(resource: str, node: str | None) -> str:
    return resource if node is None else f"@{node}@{resource}"


def _amount(kv: KeyValue, pool: str) -> int:
    try:
        return int(_codec.decode(kv.value)["amounts"][pool])
    except (ValueError, KeyError, TypeError):
        return 0


class Quotas:
    """Quota limits and reservations of one tenant. Obtain it as ``cluster.quotas``."""

    def __init__(self, cluster: Cluster) -> None:
        self._c = cluster
        self._ks = cluster.keyspace
        self._queues_prefix = self._ks.key("quotas", "")
        self._limits_prefix = self._ks.quota_limit("x")[:-1]
        self._queues: dict[str, _Queue] = {}
        self._qview: WatchedView | None = None
        self._lview: WatchedView | None = None
        self._changed = anyio.Event()
        self._parsed: dict[bytes, tuple[int, int]] = {}  # limit key -> (mod revision, limit)
        self._waiters: dict[int, tuple[list[tuple[str, int, int, bytes, int]], anyio.Event]] = {}

    # views ---------------------------------------------------------------------------------
    async def _views(self) -> tuple[WatchedView, WatchedView]:
        if self._qview is None or self._lview is None:
            lview = await self._c.view(self._limits_prefix)
            qview = await self._c.view(self._queues_prefix)
            if self._qview is None:
                for kv in qview.items().values():
                    self._index(ChangeKind.ADDED, kv)
                qview.on_change(self._on_queue_change)
                lview.on_change(lambda _: self._wake())
                self._qview, self._lview = qview, lview
        assert self._qview is not None and self._lview is not None
        return self._qview, self._lview

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        for token, (pools, admitted) in list(self._waiters.items()):
            if self._admitted_in_view(pools, token):
                admitted.set()

    def _pool_of(self, key: bytes) -> str | None:
        rest = key[len(self._queues_prefix) :].decode()
        pool, sep, _ = rest.partition("/queue/")
        return pool if sep else None

    def _index(self, kind: ChangeKind, kv: KeyValue) -> None:
        pool = self._pool_of(kv.key)
        if pool is None:
            return
        q = self._queues.setdefault(pool, _Queue())
        if kind is ChangeKind.REMOVED:
            q.remove(kv.create_revision, kv.key)
        else:
            q.add(kv.create_revision, kv.key, _amount(kv, pool))

    def _on_queue_change(self, changes: list[ViewChange]) -> None:
        for c in changes:
            self._index(c.kind, c.kv)
        self._wake()

    # limits --------------------------------------------------------------------------------
    async def set_limit(self, resource: str, limit: int) -> None:
        """Set this tenant's limit of ``resource`` (an administrative write).

        With etcd access control, tenants can read but not write their limits.

        Raises:
            InvalidReservationError: a negative or non-integer limit.
        """
        validate_id(resource, "resource")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidReservationError(f"limit of {resource!r} must be an int >= 0: {limit!r}")
        await self._c.transport.put(
            self._ks.quota_limit(resource), _codec.encode({"limit": limit}, "limit", 1024)
        )

    async def get_limit(self, resource: str) -> int | None:
        """The tenant's limit of ``resource`` (a linearizable read), or ``None``."""
        kv = await self._c.transport.get(self._ks.quota_limit(resource))
        return None if kv is None else int(_codec.decode(kv.value)["limit"])

    def _limit(self, pool: str, lview: WatchedView) -> tuple[int | None, bytes, int]:
        """The pool's limit, the key it comes from, and that key's mod revision (cached)."""
        if pool.startswith("@"):
            _, node, resource = pool.split("@")
            node_key = self._ks.node(node)
            info = self._c.node(node)
            kv = self._c._node_view.get(node_key) if self._c._node_view else None
            if info is None or kv is None:
                return None, node_key, 0
            return info.capacity.get(resource), node_key, kv.mod_revision
        key = self._ks.quota_limit(pool)
        kv = lview.get(key)
        if kv is None:
            return None, key, 0
        cached = self._parsed.get(key)
        if cached is None or cached[0] != kv.mod_revision:
            cached = self._parsed[key] = (kv.mod_revision, int(_codec.decode(kv.value)["limit"]))
        return cached[1], key, kv.mod_revision

    def usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """A pool's usage from this process's view (no I/O once the views are open)."""
        pool = _pool_name(validate_id(resource, "resource"), node)
        q = self._queues.get(pool, _Queue())
        limit = None
        rev = 0
        if self._lview is not None and self._qview is not None:
            limit = self._limit(pool, self._lview)[0]
            rev = self._qview.revision
        used, queued = q.usage(limit)
        return QuotaUsage(pool, limit, used, queued, len(q.amounts), rev)

    async def open_usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """Open the views if needed, catch up with etcd, and return a pool's usage."""
        qview, lview = await self._views()
        rev = (await self._c.transport.status()).revision
        await qview.wait_for(rev)
        await lview.wait_for(rev)
        return self.usage(resource, node=node)

    @asynccontextmanager
    async def watch_usage(
        self, resource: str, *, node: str | None = None
    ) -> AsyncIterator[MemoryObjectReceiveStream[QuotaUsage]]:
        """Receive a pool's usage now and after every change."""
        await self._views()
        send, receive = anyio.create_memory_object_stream[QuotaUsage](16)

        async def pump() -> None:
            last = None
            async with send:
                while True:
                    changed = self._changed
                    now = self.usage(resource, node=node)
                    key = (now.limit, now.used, now.queued, now.reservations)
                    if key != last:
                        last = key
                        await send.send(now)
                    await changed.wait()

        async with background_tasks() as tg, receive:
            tg.start_soon(pump)
            yield receive

    # reserving -----------------------------------------------------------------------------
    def _check(
        self, amounts: Mapping[str, int], node: str | None, lview: WatchedView
    ) -> list[tuple[str, int, int, bytes, int]]:
        if not isinstance(amounts, Mapping) or not amounts:
            raise InvalidReservationError("a reservation needs at least one resource")
        pools = []
        for resource, amount in amounts.items():
            validate_id(resource, "resource")
            if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
                raise InvalidReservationError(
                    f"amount of {resource!r} must be a positive integer, not {amount!r}"
                )
            pool = _pool_name(resource, node)
            limit, key, mod = self._limit(pool, lview)
            if limit is None:
                where = f"node {node!r}" if node else f"tenant {self._ks.tenant!r}"
                raise InvalidReservationError(f"{where} has no limit for resource {resource!r}")
            if amount > limit:
                raise InvalidReservationError(
                    f"{amount} {resource} can never be admitted: the limit is {limit}"
                )
            pools.append((pool, amount, limit, key, mod))
        return pools

    @asynccontextmanager
    async def reserve(
        self, amounts: Mapping[str, int], *, node: str | None = None
    ) -> AsyncIterator[Reservation]:
        """Wait until ``amounts`` are admitted; hold them for the block; release on exit.

        Args:
            amounts: resource name to positive integer amount.
            node: reserve the node's announced capacity instead of tenant limits.

        Raises:
            InvalidReservationError: bad amounts, unknown resources, or an amount above
                the limit (nothing written).
            LeaseLostError: the session lease was lost (the reservation went with it).
        """
        async with self._reserve(amounts, node, nowait=False) as r:
            yield r

    @asynccontextmanager
    async def reserve_nowait(
        self, amounts: Mapping[str, int], *, node: str | None = None
    ) -> AsyncIterator[Reservation]:
        """Like :meth:`reserve`, but raise instead of waiting.

        Raises:
            QuotaExceededError: not admissible now (the queued keys were withdrawn).
        """
        async with self._reserve(amounts, node, nowait=True) as r:
            yield r

    @asynccontextmanager
    async def _reserve(
        self, amounts: Mapping[str, int], node: str | None, *, nowait: bool
    ) -> AsyncIterator[Reservation]:
        qview, lview = await self._views()
        session = self._c.session
        transport = self._c.transport
        pools = self._check(amounts, node, lview)
        lease = await session.wait_lease()
        rid = uuid.uuid4().hex
        value = _codec.encode(
            {"amounts": {p: a for p, a, *_ in pools}, "holder": self._c.node_id},
            "reservation",
            64 * 1024,
        )
        keys = tuple(self._ks.key("quotas", p, "queue", rid) for p, *_ in pools)
        token = 0
        try:
            with lease.guard():
                for _attempt in range(10):
                    res = await transport.txn(
                        [Compare.mod_revision(key) == mod for _, _, _, key, mod in pools],
                        [Op.put(k, value, lease=lease.id) for k in keys]
                        + [
                            Op.get(
                                self._ks.key("quotas", p, "queue", ""),
                                prefix=True,
                                limit=QUEUE_READ,
                                sort_by_create=True,
                            )
                            for p, *_ in pools
                        ],
                    )
                    if res.succeeded:
                        token = res.revision
                        break
                    # a limit changed since the view saw it: catch up and judge again
                    await self._c.wait_for(res.revision)
                    await lview.wait_for(res.revision)
                    pools = self._check(amounts, node, lview)
                else:
                    raise EtcdError("limits kept changing; reservation not attempted")
                admitted = self._admitted_from_reads(res.responses[len(keys) :], pools, keys)
                reservation = Reservation(rid, {p: a for p, a, *_ in pools}, keys, token, lease.id)
                if admitted is not True:
                    if nowait and isinstance(admitted, QuotaExceededError):
                        raise admitted
                    await qview.wait_for_key(keys[0], token)  # own write: an event comes
                    if nowait:
                        if not self._admitted_in_view(pools, token):
                            raise self._exceeded(pools, token)
                    else:
                        await self._wait_admitted(pools, token)
                yield reservation
        finally:
            if token:
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self._c.config.request_timeout),
                ):
                    try:
                        await transport.txn(
                            [Compare.create_revision(k) == token for k in keys],
                            [Op.delete(k) for k in keys],
                        )
                    except EtcdError as exc:
                        log.warning(
                            "release of %s failed (%s); it expires with its lease", rid, exc
                        )

    def _exceeded(
        self, pools: list[tuple[str, int, int, bytes, int]], token: int
    ) -> QuotaExceededError:
        """The error for the first pool where the reservation (queued at ``token``) has no room."""
        for pool, amount, limit, _, _ in pools:
            through = self._queues.get(pool, _Queue()).sum_through(token) or amount
            if through > limit:
                return QuotaExceededError(
                    pool, requested=amount, used=through - amount, limit=limit
                )
        pool, amount, limit, _, _ = pools[0]
        return QuotaExceededError(pool, requested=amount, used=limit, limit=limit)

    @staticmethod
    def _admitted_from_reads(
        reads: Sequence[object],
        pools: list[tuple[str, int, int, bytes, int]],
        keys: tuple[bytes, ...],
    ) -> bool | QuotaExceededError | None:
        """Decide from the transaction's own reads (exact at its revision).

        Returns ``True`` when admitted, the error to raise when not admitted now, and
        ``None`` when a queue was longer than what the transaction read.
        """
        refused: QuotaExceededError | None = None
        for read, (pool, amount, limit, _, _), key in zip(reads, pools, keys, strict=True):
            total = 0
            seen = False
            for kv in getattr(read, "kvs", []):
                total += _amount(kv, pool)
                if kv.key == key:
                    seen = True
                    break
            if not seen:
                return None
            if total > limit and refused is None:
                refused = QuotaExceededError(
                    pool, requested=amount, used=total - amount, limit=limit
                )
        return True if refused is None else refused

    def _admitted_in_view(self, pools: list[tuple[str, int, int, bytes, int]], token: int) -> bool:
        assert self._lview is not None
        for pool, _, _, _, _ in pools:
            limit = self._limit(pool, self._lview)[0]
            through = self._queues.get(pool, _Queue()).sum_through(token)
            if limit is None or through is None or through > limit:
                return False
        return True

    async def _wait_admitted(
        self, pools: list[tuple[str, int, int, bytes, int]], token: int
    ) -> None:
        assert self._lview is not None
        while True:
            if self._admitted_in_view(pools, token):
                # the view of queues and of limits come from two streams: confirm that the
                # limits judged against are still current (one compare round trip)
                checks = [self._limit(p, self._lview) for p, *_ in pools]
                ok = await self._c.transport.txn(
                    [Compare.mod_revision(key) == mod for _, key, mod in checks], []
                )
                if ok.succeeded:
                    return
                await self._lview.wait_for(ok.revision)
                continue
            # sleep until a change admits this reservation: the views' callbacks judge
            # every waiter (cheap arithmetic) and wake only those now admitted
            admitted = anyio.Event()
            self._waiters[token] = (pools, admitted)
            try:
                await admitted.wait()
            finally:
                self._waiters.pop(token, None)
