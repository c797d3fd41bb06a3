"""Reliable watches and the watched view that other modules use as their cache.

:func:`open_view` keeps an in-memory copy of every key under a prefix, equal to what a fresh
list would return at :attr:`WatchedView.revision`:

1. list the prefix with a linearizable read (paged, one snapshot) at revision ``R``;
2. watch from ``R + 1``; apply each event batch whose revision is above the last applied one
   (older or repeated events are dropped);
3. after a broken stream, resume from the last applied revision + 1;
4. when that revision has been compacted, list again and apply the difference as changes;
5. a stream silent for ``watch_progress_interval`` is asked for progress; one silent for
   twice as long is restarted. Streams carry ``hasleader``, so a member cut off from the
   raft leader cancels them and the view moves to another member.

Guarantees:
    * After the view has applied revision ``N``, its items equal a linearizable list of the
      prefix at ``N``; change callbacks see every change once, in revision order (changes
      found by a re-list after compaction are reported together, at the new revision).
    * :meth:`WatchedView.wait_for` returns once the view has caught up to a revision,
      learned from events or from progress notifications. On etcd < 3.5.8 a progress answer
      may, in a narrow race, overtake an event of the same revision; code that needs its
      own write to be visible should wait for that key's revision with
      :meth:`WatchedView.wait_for_key`.
    * The view never blocks on a slow subscriber: subscriptions buffer without bound.
    * While etcd is unreachable the view keeps its last state and retries;
      :attr:`WatchedView.connected` tells whether a stream is up. An authentication or
      permission error stops it; ``wait_for`` then raises that error.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core import metrics
from .._core.background import background_tasks
from .._core.errors import AuthError, EtcdError, FoundationEtcdError
from .._core.keys import prefix_end
from .._core.kv import EventType, KeyValue, WatchEvent
from .._transport import Transport, WatchResponse, WatchStream
from .bells import FIRST_DELAY, log_in_again
from .progress import RECHECK, Pinger, unchanged_since

__all__ = ["ChangeKind", "ViewChange", "WatchedView", "open_view"]

log = logging.getLogger("foundation_etcd.watch")


class ChangeKind(enum.Enum):
    """What happened to a key of a view."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class ViewChange:
    """One change of a view.

    Attributes:
        kind: added, updated or removed.
        key: the key.
        kv: the key as it is now (for a removal: as it was).
        revision: the revision at which the view applied the change.
    """

    kind: ChangeKind
    key: bytes
    kv: KeyValue
    revision: int


ChangeCallback = Callable[[list[ViewChange]], None]
T = TypeVar("T")


class _Compacted(Exception):
    """The resume revision was compacted away; the view must list again."""


class WatchedView:
    """An in-memory, watch-maintained copy of the keys under one prefix.

    Open with :func:`open_view`. Reading it (:meth:`get`, :meth:`items`, ``len``) costs no
    I/O.
    """

    def __init__(self, transport: Transport, prefix: bytes) -> None:
        self.transport = transport
        self.prefix = prefix
        self._end = prefix_end(prefix)
        self._items: dict[bytes, KeyValue] = {}
        self._applied = 0  # last revision whose events are in _items (dedupe and resume)
        self._known = 0  # highest revision known to be reflected (events, verified progress)
        self._progress = 0  # highest revision reported by an unverified progress answer
        self._watch_id = -2
        self._advanced: anyio.Event | None = None  # made when someone waits
        self._pinger = Pinger(prefix)  # progress requests, and the silence watchdog
        self._callbacks: list[ChangeCallback] = []
        self._subscribers: set[MemoryObjectSendStream[list[ViewChange]]] = set()
        self._error: FoundationEtcdError | None = None
        self._closed = False
        self._stop_hooks: list[Callable[[], None]] = []
        self.connected = False
        self._created = False  # the current stream's watch was created
        self.relists = 0
        self.restarts = 0

    # reading -------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The revision the view is known to reflect."""
        return self._known

    def get(self, key: bytes) -> KeyValue | None:
        """The key's current value in the view, or ``None``."""
        return self._items.get(key)

    def items(self) -> Mapping[bytes, KeyValue]:
        """A read-only mapping of key to value (do not hold it across awaits)."""
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._items)

    # waiting and subscribing -----------------------------------------------------------------
    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise anyio.ClosedResourceError("view is closed")

    async def wait_for(self, revision: int) -> None:
        """Wait until the view reflects at least ``revision`` (asks etcd for progress).

        A progress answer that etcd may have sent ahead of pending events (etcd < 3.5.8
        answers progress requests for unsynced watchers too) is verified with one
        linearizable count before it is trusted.

        Raises:
            AuthError: the view stopped on a permission error.
        """
        while self._known < revision:
            self._check()
            if self._progress >= revision:
                if await self._verify(self._progress):
                    continue
                # events are pending (the watch is catching up): give them a moment to
                # arrive, then ask again
                self._progress = 0
                with anyio.move_on_after(RECHECK):
                    await self._next_advance().wait()
                continue
            self._pinger.want()
            await self._next_advance().wait()

    async def _verify(self, progress: int) -> bool:
        """Whether the items as applied also equal the prefix at ``progress`` (if so, advance)."""
        applied, count = self._applied, len(self._items)
        unchanged = await unchanged_since(self.transport, self.prefix, applied, count, progress)
        if unchanged and self._applied == applied:
            self._advance(progress)
            return True
        return False

    async def wait_for_key(self, key: bytes, mod_revision: int) -> KeyValue | None:
        """Wait until the view has applied ``key`` at ``mod_revision`` or later.

        ``key`` must be under the view's prefix and have been written at ``mod_revision``:
        that change arrives as an event, so no progress request is needed (cheaper than
        :meth:`wait_for`, and exact on every etcd version).

        Returns the key (``None`` if it was deleted since).
        """
        while True:
            self._check()
            kv = self._items.get(key)
            if (kv is not None and kv.mod_revision >= mod_revision) or (
                self._applied >= mod_revision or self._known >= mod_revision
            ):
                return kv
            await self._next_advance().wait()

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(changes)`` synchronously for each applied batch, in order.

        Callbacks must be quick and must not raise (an exception is logged). Returns a
        function that removes the callback.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once when the view stops: closed, or stopped by an error.

        Code that sleeps until a change can use it to wake up and see the error.
        """
        self._stop_hooks.append(callback)

    def _stopped(self) -> None:
        hooks, self._stop_hooks = self._stop_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("view stop callback failed")

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemoryObjectReceiveStream[list[ViewChange]]]:
        """Receive each batch of changes applied after this call, in order."""
        send, receive = anyio.create_memory_object_stream[list[ViewChange]](math.inf)
        self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    @asynccontextmanager
    async def subscribe_converted(
        self, convert: Callable[[ViewChange], T | None]
    ) -> AsyncIterator[MemoryObjectReceiveStream[list[T]]]:
        """Like :meth:`subscribe`, each change passed through ``convert`` (``None`` drops it).

        Batches left empty by ``convert`` are not delivered.
        """
        async with self.subscribe() as raw:
            send, receive = anyio.create_memory_object_stream[list[T]](1)

            async def pump() -> None:
                async with send:
                    async for batch in raw:
                        out = [x for x in map(convert, batch) if x is not None]
                        if out:
                            await send.send(out)

            async with background_tasks() as tg, receive:
                tg.start_soon(pump)
                yield receive

    # applying ------------------------------------------------------------------------------
    def _advance(self, known: int) -> None:
        if known > self._known:
            self._known = known
        if self._advanced is not None:
            self._advanced.set()
            self._advanced = None

    def _next_advance(self) -> anyio.Event:
        """An event set at the next advance (created only when somebody waits)."""
        if self._advanced is None:
            self._advanced = anyio.Event()
        return self._advanced

    def _emit(self, changes: list[ViewChange]) -> None:
        if not changes:
            return
        for cb in list(self._callbacks):
            try:
                cb(changes)
            except Exception:
                log.exception("view change callback failed")
        for send in list(self._subscribers):
            try:
                send.send_nowait(changes)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(send)

    def _apply_events(self, events: list[WatchEvent]) -> None:
        changes: list[ViewChange] = []
        items = self._items
        applied = last = self._applied
        for ev in events:
            rev = ev.revision
            if rev <= applied:
                continue  # already reflected (resume overlap or duplicate)
            if rev > last:
                last = rev
            kv = ev.kv
            key = kv.key
            if ev.type is EventType.PUT:
                kind = ChangeKind.UPDATED if key in items else ChangeKind.ADDED
                items[key] = kv
                changes.append(ViewChange(kind, key, kv, rev))
            else:
                old = items.pop(key, None)
                if old is not None:
                    changes.append(ViewChange(ChangeKind.REMOVED, key, old, rev))
        self._applied = last
        self._emit(changes)
        self._advance(last)

    async def _relist(self) -> None:
        result = await self.transport.get_prefix(self.prefix)
        fresh = {kv.key: kv for kv in result.kvs}
        rev = result.revision
        changes: list[ViewChange] = []
        if self._applied:
            for key, old in self._items.items():
                if key not in fresh:
                    changes.append(ViewChange(ChangeKind.REMOVED, key, old, rev))
            for key, kv in fresh.items():
                old_kv = self._items.get(key)
                if old_kv is None:
                    changes.append(ViewChange(ChangeKind.ADDED, key, kv, rev))
                elif old_kv.mod_revision != kv.mod_revision:
                    changes.append(ViewChange(ChangeKind.UPDATED, key, kv, rev))
            self.relists += 1
            metrics.watch_relist(self.transport.config.tenant)
        self._items = fresh
        self._applied = rev
        self._emit(changes)
        self._advance(rev)

    # running -------------------------------------------------------------------------------
    async def _stream_once(self, interval: float) -> None:
        stream = self.transport.open_watch()
        last = [time.monotonic()]
        error: Exception | None = None
        try:
            await stream.create(self.prefix, self._end, self._applied + 1, progress_notify=True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pinger.run, stream, last, interval)
                try:
                    await self._read_loop(stream, last)
                except (EtcdError, _Compacted) as exc:
                    error = exc  # raised below, outside the task group (no exception group)
                tg.cancel_scope.cancel()
        finally:
            self.connected = False
            stream.close()
        if error is not None:
            raise error

    async def _read_loop(self, stream: WatchStream, last: list[float]) -> None:
        while True:
            resp: WatchResponse = await stream.read()
            last[0] = time.monotonic()
            if resp.compact_revision:
                raise _Compacted()
            if resp.canceled:
                reason = resp.cancel_reason or "no reason given"
                if "permission denied" in reason or "auth" in reason:
                    raise AuthError(f"watch cancelled by etcd: {reason}", details=reason)
                raise EtcdError(f"watch cancelled by etcd: {reason}")
            if resp.created:
                self._watch_id = resp.watch_id
                self.connected = self._created = True
                continue
            if resp.events:
                self._apply_events(resp.events)
            elif resp.watch_id == self._watch_id:
                # etcd notifies a watch of progress only once it is synced: trusted
                self._advance(max(self._applied, resp.revision))
            else:
                # a stream-wide answer to a progress request: verified by wait_for
                self._progress = max(self._progress, resp.revision)
                self._advance(self._known)

    async def _run(self, task_status: TaskStatus[None]) -> None:
        interval = self.transport.config.watch_progress_interval
        await self._relist()
        task_status.started()
        delay = 0.05
        refusals = 0  # permission refusals in a row (bells.AUTH_REFUSALS)
        while True:
            try:
                self._created = False
                await self._stream_once(interval)
            except _Compacted:
                at = self._applied + 1
                log.info("watch on %r: revision %d compacted; listing again", self.prefix, at)
                await self._relist_retrying()
            except AuthError as exc:
                # a token etcd no longer knows (restart, expiry, another member, a change of
                # users or roles) looks like a permission error: log in again (bells.py)
                refusals = 1 if self._created else refusals + 1
                with contextlib.suppress(EtcdError):
                    await anyio.sleep(FIRST_DELAY * (refusals - 1))  # a burst of changes
                    if await log_in_again(self.transport, refusals):
                        continue
                log.error("watch on %r stopped: %s", self.prefix, exc)
                self._error = exc
                self._advance(self._known)
                self._stopped()
                return
            except EtcdError as exc:
                self.restarts += 1
                metrics.watch_restart(self.transport.config.tenant)
                log.info(
                    "watch on %r broke (%s); resuming from %d", self.prefix, exc, self._applied + 1
                )
                await anyio.sleep(delay * (0.5 + random.random()))  # jitter: no herds
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05

    async def _relist_retrying(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._relist()
                return
            except AuthError:
                raise
            except EtcdError:
                await anyio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)


@asynccontextmanager
async def open_view(transport: Transport, prefix: bytes) -> AsyncIterator[WatchedView]:
    """Open a watched view of every key under ``prefix``; it is current when yielded.

    Args:
        transport: an open transport.
        prefix: the key prefix to mirror.

    Yields:
        The view, loaded with a linearizable list.
    """
    view = WatchedView(transport, prefix)
    async with background_tasks() as tg:
        await tg.start(view._run)
        try:
            yield view
        finally:
            view._closed = True
            view._advance(view._known)
            view._stopped()
            for send in list(view._subscribers):
                send.close()
            tg.cancel_scope.cancel()
