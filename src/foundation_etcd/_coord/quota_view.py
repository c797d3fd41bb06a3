"""A process's view of one tenant's quota limits, and of its queues for usage.

Two watched views, each opened on first use: the tenant's limits (``.../limits/{resource}``,
a few keys that rarely change), which every reservation is judged against, and the queues
(``.../queue/{pool}/...``), which only :meth:`QuotaView.usage` and its kin read: a process
that reserves without asking for usage never watches a queue's every change (waiting
reservations watch only the deletions of the pools they wait in: ``quota_waits.py``). The
queue view is kept incrementally (one :class:`Queue` per pool). A node pool's limit (its
announced capacity) comes from the node view, a third stream.

Guarantees:
    * Limits are as the limits view has them: every reservation compares the mod
      revision of each limit it was judged against, so a limit that changed since is
      seen by etcd, never acted on from memory.
    * Listeners of limit changes (:meth:`QuotaView.on_limits`: waiting reservations) are
      called on every change of a limit or of a node's announcement.
    * Applying a change never raises: a change skipped would be an entry missing from a
      queue.
    * **Crafted entries never admit more here either**: usage counts each queue entry by
      the one rule of :func:`~foundation_etcd._core.admission.entry_amount` (anything
      ``reserve`` would not have written is
      :data:`~foundation_etcd._core.amounts.BLOCKING`), and ignores keys in a queue no pool
      has (a bad pool name). Limits and node capacities read back follow the same rule: an
      invalid one is no limit (nothing admitted).
    * Usage combines two streams: a limit and a queue seen at slightly different
      revisions for a moment, never a state etcd did not pass through in each.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.admission import (
    EMPTY,
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

__all__ = ["QuotaUsage", "QuotaView"]

log = logging.getLogger("foundation_etcd.quotas")


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
    """One tenant's quota limits, and its queues for usage, as this process sees them.

    Args:
        transport: the connection to catch up with etcd on.
        keyspace: the tenant's key layout.
        views: opens (or shares) the watched view of a prefix.
        node_view: the view of node announcements, for node capacity pools.

    Attributes:
        queue_prefix: the prefix of the tenant's queues (``{queue_prefix}{pool}/{id}``).
        limits_view: the watched view of the limits, once :meth:`open_limits` has run.
        watched: the watched view of the queues, once :meth:`open` has run (usage).
    """

    def __init__(
        self,
        transport: Transport,
        keyspace: Keyspace,
        *,
        views: Callable[[bytes], Awaitable[WatchedView]],
        node_view: WatchedView | None = None,
    ) -> None:
        self._transport = transport
        self._views_of = views
        self._node_view = node_view
        self._ks = keyspace
        self.queue_prefix = self._ks.quota_queues_prefix()
        self._limits_prefix = self._ks.quota_limits_prefix()
        self.limits_view: WatchedView | None = None
        self.watched: WatchedView | None = None
        self._opening = anyio.Lock()
        self._queues: dict[str, Queue] = {}
        self._limits: dict[str, tuple[int, int | None]] = {}  # resource -> (mod, limit)
        self._limit_keys: dict[str, bytes] = {}
        # node key -> (mod revision, capacity): a node pool parses an announcement once
        self._capacities: dict[bytes, tuple[int, Mapping[str, int] | None]] = {}
        self._changed: anyio.Event | None = None  # made when a usage watcher waits
        self._limit_listeners: list[Callable[[], None]] = []
        self._stop_listeners: list[Callable[[], None]] = []

    async def wait_nodes(self, revision: int) -> None:
        """Wait until the node view (node capacity pools) reflects ``revision``."""
        if self._node_view is not None:
            await self._node_view.wait_for(revision)

    def on_limits(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (it must not block or raise) after every change of a limit."""
        self._limit_listeners.append(callback)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the limits view stops (closed, or refused)."""
        self._stop_listeners.append(callback)

    # the views -----------------------------------------------------------------------------
    async def open_limits(self) -> WatchedView:
        """Open (once) the watched view of the tenant's limits, and follow it."""
        if self.limits_view is not None:
            return self.limits_view
        async with self._opening:
            if self.limits_view is None:
                view = await self._views_of(self._limits_prefix)
                now = view.items().values()
                self._on_limits([ViewChange(ChangeKind.ADDED, kv.key, kv, 0) for kv in now])
                view.on_change(self._on_limits)
                view.on_stop(self._stopped)
                if self._node_view is not None:  # node capacity: limits of node pools
                    self._node_view.on_change(lambda _: self._limits_changed())
                self.limits_view = view
        return self.limits_view

    async def open(self) -> WatchedView:
        """Open (once) the watched views of the limits and of the queues (for usage)."""
        await self.open_limits()
        if self.watched is None:
            async with self._opening:
                if self.watched is None:
                    view = await self._views_of(self.queue_prefix)
                    now = view.items().values()
                    self._on_queues([ViewChange(ChangeKind.ADDED, kv.key, kv, 0) for kv in now])
                    view.on_change(self._on_queues)
                    self.watched = view
        return self.watched

    def _on_limits(self, changes: list[ViewChange]) -> None:
        lp = self._limits_prefix
        for c in changes:
            resource = c.key[len(lp) :].decode("utf-8", "replace")
            if c.kind is ChangeKind.REMOVED:
                self._limits.pop(resource, None)
            else:
                self._limits[resource] = (c.kv.mod_revision, self.parse_limit(c.kv))
        self._limits_changed()

    def _limits_changed(self) -> None:
        self._notify_usage()
        for callback in self._limit_listeners:
            callback()

    def _stopped(self) -> None:
        for callback in self._stop_listeners:
            callback()

    def _on_queues(self, changes: list[ViewChange]) -> None:
        qp = self.queue_prefix
        # nothing here may raise: a change skipped would be an entry missing from a queue
        for c in changes:
            kv = c.kv
            key = kv.key
            name = queue_pool(key, len(qp))
            if name is None:
                continue  # in no pool's queue: no reservation is judged against it
            q = self._queues.get(name)
            if c.kind is ChangeKind.REMOVED:
                if q is not None:
                    q.remove(key)
                    if not q.revs:
                        del self._queues[name]
            else:
                if q is None:
                    q = self._queues[name] = Queue()
                q.add(kv.create_revision, key, entry_amount(kv, name))
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

    def check(self) -> None:
        """Raise the error that stopped the limits view, if one did."""
        if self.limits_view is not None:
            self.limits_view._check()

    # limits --------------------------------------------------------------------------------
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
        mod, limit = self._limits.get(pool, (0, None))
        return limit, self._limit_key(pool), mod

    async def wait_limits(self, revision: int, node: bool) -> None:
        """Wait until the limits (and, for node pools, the node view) reflect ``revision``."""
        view = await self.open_limits()
        await view.wait_for(revision)
        if node:
            await self.wait_nodes(revision)

    # usage ---------------------------------------------------------------------------------
    def usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """A pool's usage from this process's views (no I/O once they are open)."""
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
        """Open the views if needed, catch up with etcd, and return a pool's usage."""
        view = await self.open()
        rev = (await self._transport.status()).revision
        await view.wait_for(rev)
        await self.wait_limits(rev, node is not None)
        return self.usage(resource, node=node)

    @asynccontextmanager
    async def watch_usage(
        self, resource: str, *, node: str | None = None
    ) -> AsyncIterator[MemoryObjectReceiveStream[QuotaUsage]]:
        """Receive a pool's usage now and after every change."""
        await self.open()
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
