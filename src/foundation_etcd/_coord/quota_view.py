"""A process's watched view of one tenant's quota limits and queues, and the waiters on it.

A tenant's limits (``.../limits/{resource}``) and queues (``.../queue/{pool}/...``) share one
prefix, so one watch sees both in revision order: the view is a real state of etcd after
each batch of events, and a waiter found admitted there *is* admitted at that revision, with
no confirming round trip. The view is kept incrementally (one :class:`Queue` per pool), so
a waiting reservation is judged in memory. A node pool's limit (its announced capacity)
comes from the node view, a different stream.

The view costs its process every queue change of the tenant, so it is open only while it is
needed: a waiting reservation opens it, and it closes once no reservation of the process
has been waiting (or reserving) for :data:`VIEW_LINGER` seconds; usage (:meth:`open_usage`,
:meth:`watch_usage`) keeps it open until the cluster closes. A reservation that its own
transaction admits needs no view: it is judged against the limits alone, a small view of
their own prefix that the transaction's compares make exact.

Guarantees:
    * Waiters wake on changes of the view (a release ahead of them, a raised limit, a node
      announcement), never by polling; each change computes every touched pool's admitted
      frontier once and wakes exactly the waiters now admitted. An append behind every
      waiter wakes none. A removal from a queue (a release, or a crashed holder's lease expiring)
      wakes the waiters it admits: the next in line.
    * When the view stops (stopped by an error such as a permission refusal, or the
      cluster closing), every waiter wakes and sees the error when it looks. The view is
      closed for idleness only when no reservation of the process waits or reserves, and
      a view stopped by an error is replaced the same way: the next waiter opens a new one.
    * Applying a change never raises: a change skipped would be an entry missing from a
      queue.
    * **Crafted entries never admit more here either**: the view counts each queue entry by
      the one rule of :func:`~foundation_etcd._core.admission.entry_amount` (anything
      ``reserve`` would not have written is
      :data:`~foundation_etcd._core.amounts.BLOCKING`), and ignores keys in a queue no pool
      has (a bad pool name). Limits and node capacities read back follow the same rule: an
      invalid one is no limit (nothing admitted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.admission import (
    EMPTY,
    Pool,
    Queue,
    decode_or_none,
    entry_amount,
    node_capacity,
    queue_pool,
)
from .._core.amounts import stored_limit
from .._core.background import background_tasks
from .._core.keys import pool_name
from .._core.kv import KeyValue
from .watch import ChangeKind, ViewChange, WatchedView

if TYPE_CHECKING:
    from .._core.keys import Keyspace
    from .._transport import Transport
    from .views import SharedViews

__all__ = ["QuotaUsage", "QuotaView"]

log = logging.getLogger("foundation_etcd.quotas")

VIEW_LINGER = 10.0  # seconds the tenant view stays open after its last waiting reservation


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


class QuotaView:
    """One tenant's quota limits and queues as this process sees them, and who waits on them.

    Args:
        transport: the connection to catch up with etcd on.
        keyspace: the tenant's key layout.
        views: the process's shared views (the limits view is shared; the tenant view is
            one of its own, closed when idle).
        node_view: the view of node announcements, for node capacity pools.

    Attributes:
        queue_prefix: the prefix of the tenant's queues (``{queue_prefix}{pool}/{id}``).
        watched: the watched view of limits and queues while it is open (:meth:`open`).
        opens: how many times it was opened.
        waiters: reservation token to its pools and the event that wakes it.
    """

    def __init__(
        self,
        transport: Transport,
        keyspace: Keyspace,
        *,
        views: SharedViews,
        node_view: WatchedView | None = None,
    ) -> None:
        self._transport = transport
        self._views = views
        self._node_view = node_view
        self._ks = keyspace
        self._prefix = self._ks.quotas_prefix()
        self.queue_prefix = self._ks.quota_queues_prefix()
        self._limits_prefix = self._ks.quota_limits_prefix()
        self.watched: WatchedView | None = None
        self._opening = anyio.Lock()
        self._queues: dict[str, Queue] = {}
        self._limits: dict[str, tuple[int, int | None]] = {}  # resource -> (mod, limit)
        self._limit_keys: dict[str, bytes] = {}
        # node key -> (mod revision, capacity): a node pool parses an announcement once
        self._capacities: dict[bytes, tuple[int, Mapping[str, int] | None]] = {}
        self._changed: anyio.Event | None = None  # made when a usage watcher waits
        self.waiters: dict[int, tuple[list[Pool], anyio.Event]] = {}
        # while the tenant view is closed: the limits alone, for the reserving transaction
        self._limits_view: WatchedView | None = None
        self._quick: dict[str, tuple[int, int | None]] = {}
        self._pinned = False  # usage was asked for: the tenant view stays open
        self._busy = 0  # reservations between their start and their admission
        self._idle_since = 0.0
        self._nodes_followed = False
        self.opens = 0

    async def wait_nodes(self, revision: int) -> None:
        """Wait until the node view (node capacity pools) reflects ``revision``."""
        if self._node_view is not None:
            await self._node_view.wait_for(revision)

    # the views -----------------------------------------------------------------------------
    async def open(self, *, keep: bool = False) -> WatchedView:
        """Open the watched view of the tenant's limits and queues (if closed), and follow it.

        Opened for a waiting reservation, it closes once no reservation of the process has
        been waiting or reserving for :data:`VIEW_LINGER` seconds; with ``keep`` (usage
        asked for) it stays open until the cluster closes.
        """
        if keep:
            self._pinned = True
        async with self._opening:
            if self.watched is None:
                view = await self._views.open_own(self._prefix, self._keep_while_used)
                self._queues.clear()
                self._limits.clear()
                now = view.items().values()
                self._on_change([ViewChange(ChangeKind.ADDED, kv.key, kv, 0) for kv in now])
                view.on_change(self._on_change)
                view.on_stop(self._wake_all)
                if self._node_view is not None and not self._nodes_followed:
                    self._nodes_followed = True  # node capacity: limits of node pools
                    self._node_view.on_change(lambda _: self._wake())
                self._idle_since = time.monotonic()
                self.opens += 1
                self.watched = view
        return self.watched

    async def _keep_while_used(self, view: WatchedView) -> None:
        """Keep the tenant view while it is used; close it (by returning) once idle."""
        await anyio.sleep(VIEW_LINGER)  # (opened for a waiter; ``open`` makes it current)
        while True:
            if self.watched is not view:
                return  # (not the current view: nothing reads it)
            if self._pinned or self._busy or self.waiters:
                await anyio.sleep(VIEW_LINGER)  # in use: look again later
                continue
            left = self._idle_since + VIEW_LINGER - time.monotonic()
            if left > 0:
                await anyio.sleep(left)
                continue
            # no await from here on: nothing can start to wait on the view while it closes
            self.watched = None
            self._queues.clear()
            self._limits.clear()
            return

    async def open_limits(self) -> WatchedView:
        """The view that limits are judged from now: the tenant view, or the limits alone."""
        if self.watched is not None:
            return self.watched
        if self._limits_view is None:  # (opened once: limits are few and change rarely)
            view = await self._views(self._limits_prefix)
            if self._limits_view is None:
                now = view.items().values()
                self._on_limits([ViewChange(ChangeKind.ADDED, kv.key, kv, 0) for kv in now])
                view.on_change(self._on_limits)
                self._limits_view = view
        return self.watched or self._limits_view

    def _on_limits(self, changes: list[ViewChange]) -> None:
        for c in changes:
            self._apply_limit(self._quick, c)

    def _apply_limit(self, limits: dict[str, tuple[int, int | None]], c: ViewChange) -> None:
        """Record a change of a limit key in ``limits`` (resource -> (mod, limit))."""
        resource = c.key[len(self._limits_prefix) :].decode("utf-8", "replace")
        if c.kind is ChangeKind.REMOVED:
            limits.pop(resource, None)
        else:
            limits[resource] = (c.kv.mod_revision, self.parse_limit(c.kv))

    def enter_reserving(self) -> None:
        """A reservation starts: the tenant view is not closed until it is admitted."""
        self._busy += 1

    def leave_reserving(self) -> None:
        """A reservation is admitted, or gave up (once per :meth:`enter_reserving`)."""
        self._busy -= 1
        self._idle_since = time.monotonic()

    def _on_change(self, changes: list[ViewChange]) -> None:
        qp, lp = self.queue_prefix, self._limits_prefix
        waiters = self.waiters
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
                self._apply_limit(self._limits, c)
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
    def parse_limit(kv: KeyValue) -> int | None:
        """A stored limit; ``None`` (no limit: nothing admitted) when malformed."""
        limit = stored_limit(decode_or_none(kv.value))
        if limit is None:
            log.warning("ignoring malformed quota limit at %r", kv.key)
        return limit

    # waiters -------------------------------------------------------------------------------
    async def sleep_until_admitted(self, pools: list[Pool], token: int) -> None:
        """Sleep until a change of the view admits the reservation queued at ``token``.

        Each view change computes the touched pools' frontiers once and wakes only the
        waiters now admitted. A stopped view wakes every waiter: the caller looks again
        (and sees the view's error).
        """
        admitted = anyio.Event()
        self.waiters[token] = (pools, admitted)
        try:
            await admitted.wait()
        finally:
            self.waiters.pop(token, None)

    def _wake(self) -> None:
        """Wake the waiters that the view now admits (each pool's frontier computed once)."""
        self._notify_usage()
        if not self.waiters:
            return
        frontiers: dict[str, int] = {}
        for token, (pools, admitted) in list(self.waiters.items()):
            for p in pools:
                f = frontiers.get(p.name)
                if f is None:
                    limit = self.current_limit(p.name, p.node)[0]
                    q = self._queues.get(p.name, EMPTY)
                    f = frontiers[p.name] = -1 if limit is None else q.frontier(limit)
                if token > f:
                    break
            else:
                admitted.set()

    def _wake_all(self) -> None:
        """Wake every waiter (the view stopped: they see its error when they look)."""
        for _, admitted in self.waiters.values():
            admitted.set()

    # limits and queues ---------------------------------------------------------------------
    def _limit_key(self, resource: str) -> bytes:
        key = self._limit_keys.get(resource)
        if key is None:
            key = self._limit_keys[resource] = self._ks.quota_limit(resource)
        return key

    def current_limit(self, pool: str, node: str | None) -> tuple[int | None, bytes, int]:
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
        limits = self._limits if self.watched is not None else self._quick
        mod, limit = limits.get(pool, (0, None))
        return limit, self._limit_key(pool), mod

    def queue(self, pool: str) -> Queue:
        """A pool's queue as the view has it (empty when it has no keys)."""
        return self._queues.get(pool, EMPTY)

    # usage ---------------------------------------------------------------------------------
    def usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """A pool's usage from this process's view (no I/O; empty while it is not open).

        The view is open for good once :meth:`open_usage` or :meth:`watch_usage` ran.
        """
        pool = pool_name(resource, node)
        q = self._queues.get(pool, EMPTY)
        limit = None
        rev = 0
        if self.watched is not None:
            limit = self.current_limit(pool, node)[0]
            rev = self.watched.revision
        used, queued, malformed = q.usage(limit)
        return QuotaUsage(pool, limit, used, queued, len(q.amounts), rev, malformed)

    async def open_usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """Open the view if needed (kept from now on), catch up, and return a pool's usage."""
        view = await self.open(keep=True)
        rev = (await self._transport.status()).revision
        await view.wait_for(rev)
        if node is not None:
            await self.wait_nodes(rev)
        return self.usage(resource, node=node)

    @asynccontextmanager
    async def watch_usage(
        self, resource: str, *, node: str | None = None
    ) -> AsyncIterator[MemoryObjectReceiveStream[QuotaUsage]]:
        """Receive a pool's usage now and after every change (the view is kept from now on)."""
        await self.open(keep=True)
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
