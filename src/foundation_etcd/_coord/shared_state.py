"""Named shared state: one JSON value per name, read from a watched view, written by CAS.

::

    config = cluster.state("rollout")
    await config.set({"percent": 10})
    now = await config.get()                      # from the view: no round trip
    await config.update(lambda v: {**(v or {}), "percent": 20})
    async with lock.acquire() as held:
        await config.fenced(held).set({"percent": 50})   # refused once the lock is lost

The value lives at ``state/{name}`` under the tenant prefix (readable by any etcd client:
``etcdctl get /{namespace}/{tenant}/state/rollout``), with no lease.

Guarantees:
    * :meth:`SharedState.get` reads the process's watched view of the key: no I/O once it
      is open, and it never goes back behind what this handle wrote or read: it waits for
      the view to apply the handle's last write and what its last linearizable read or
      delete found (a value, or none). ``get(linearizable=True)`` reads etcd instead: it
      sees every write committed before the call.
    * :meth:`SharedState.compare_and_set` writes only if the key's mod revision is the one
      given (0: only if absent) — one transaction, decided by etcd.
    * :meth:`SharedState.update` applies a function with compare-and-set, retrying on
      conflict within a bounded budget; a conflict's failure branch returns the current
      value, so the first two retries cost one round trip each; later ones pause (jittered)
      and read afresh. The function may run several times and must have no other effects.
    * :meth:`SharedState.watch` yields each value in revision order (a re-list after
      compaction yields the latest value once), starting from the view's value once it
      has caught up with this handle's last write or linearizable read, as ``get``.
    * **Fenced** (:meth:`SharedState.fenced`): every write also requires a lock or
      leadership handle to be current; a stale holder writes nothing and gets the handle's
      lost error (:class:`LockLostError`, :class:`LeadershipLostError`).
    * **Lease loss**: states are not leased and survive their writers; a fenced state stops
      accepting writes once the fencing handle's session lease is lost.
    * Values are JSON (``load``/``dump`` convert to and from your own types); one value is
      at most 1 MiB (:class:`RequestTooLargeError` before anything is sent).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.codec import decode, encode
from .._core.errors import TransactionConflictError
from .._core.keys import Keyspace
from .._core.kv import AnyOp, Compare, DeleteResult, KeyValue, Op, TxnResult
from .._transport import Transport
from .ownership import Ownership
from .stm import MAX_STATE_BYTES, _backoff, check_attempts
from .views import SharedViews
from .watch import ChangeKind, ViewChange, WatchedView

__all__ = ["SharedState", "Versioned"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A state's value with its etcd revisions.

    Attributes:
        value: the decoded value.
        revision: the key's mod revision: pass it to :meth:`SharedState.compare_and_set`.
        version: how many times the key was written since it was created.
        created: the key's create revision.
    """

    value: T
    revision: int
    version: int
    created: int


def _identity(value: Any) -> Any:
    return value


class SharedState(Generic[T]):
    """One named shared state of the tenant. Get one with ``cluster.state(name)``."""

    def __init__(
        self,
        transport: Transport,
        keyspace: Keyspace,
        name: str,
        *,
        views: SharedViews | None = None,
        load: Callable[[Any], T] | None = None,
        dump: Callable[[T], Any] | None = None,
        fence: Ownership | None = None,
    ) -> None:
        """Prepare the state; nothing is sent until it is used.

        Args:
            transport: the connection.
            keyspace: the tenant's keys.
            name: the state's name (an id).
            views: where to open the watched view (``None``: linearizable reads only; the
                view-backed methods then read etcd).
            load: turns the stored JSON value into ``T`` (a dataclass constructor, ...).
            dump: turns a ``T`` into a JSON value.
            fence: a lock or leadership handle every write must hold (see :meth:`fenced`).

        Raises:
            InvalidIdError: a bad name.
        """
        self.key: bytes = keyspace.state(name)
        self.name: str = name
        self._t = transport
        self._ks = keyspace
        self._views = views
        self._load: Callable[[Any], T] = load if load is not None else _identity
        self._dump: Callable[[T], Any] = dump if dump is not None else _identity
        self._fence = fence
        self._written = 0  # the newest revision of the key this handle wrote or read
        self._absent = 0  # the newest revision at which this handle found it absent

    def fenced(self, handle: Ownership) -> SharedState[T]:
        """The same state, written only while ``handle`` (a lock or leadership) is current."""
        twin = SharedState(
            self._t,
            self._ks,
            self.name,
            views=self._views,
            load=self._load,
            dump=self._dump,
            fence=handle,
        )
        twin._written, twin._absent = self._written, self._absent
        return twin

    # reading -------------------------------------------------------------------------------
    async def _view(self) -> WatchedView | None:
        if self._views is None:
            return None
        view = await self._views(self.key)
        if self._written:
            await view.wait_for_key(self.key, self._written)
        if self._absent > self._written and view.get(self.key) is not None:
            await view.wait_for(self._absent)  # found absent since: no event marks that
        return view

    def _versioned(self, kv: KeyValue | None) -> Versioned[T] | None:
        if kv is None:
            return None
        return Versioned(
            self._load(decode(kv.value)), kv.mod_revision, kv.version, kv.create_revision
        )

    async def get(self, *, linearizable: bool = False) -> Versioned[T] | None:
        """The current value with its revision, or ``None`` when the state is absent.

        Args:
            linearizable: read etcd (one round trip) instead of the watched view.
        """
        view = None if linearizable else await self._view()
        if view is not None:
            return self._versioned(view.get(self.key))
        read = await self._t.range(Op.get(self.key))
        kv = read.first  # later view reads wait for what it saw: never older
        if kv is None:
            self._absent = max(self._absent, read.revision)
        elif kv.mod_revision > self._written:
            self._written = kv.mod_revision
        return self._versioned(kv)

    async def value(self, default: T | None = None) -> T | None:
        """The current value from the view, or ``default`` when absent."""
        got = await self.get()
        return default if got is None else got.value

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[MemoryObjectReceiveStream[Versioned[T] | None]]:
        """Receive the state's values in revision order from now on (``None``: deleted).

        The current value is delivered first, so a subscriber never misses the state it
        starts from.

        Raises:
            ValueError: the state has no views to watch (constructed without ``views``).
        """
        if self._views is None:
            raise ValueError("watch() needs a state opened with views (cluster.state(...))")
        view = await self._view()
        assert view is not None
        send, receive = anyio.create_memory_object_stream[Versioned[T] | None](math.inf)

        def convert(change: ViewChange) -> Versioned[T] | None:
            if change.kind is ChangeKind.REMOVED:
                return None
            return self._versioned(change.kv)

        async with view.subscribe() as changes, anyio.create_task_group() as tg:
            send.send_nowait(self._versioned(view.get(self.key)))

            async def pump() -> None:
                async for batch in changes:
                    for change in batch:
                        if change.key == self.key:
                            send.send_nowait(convert(change))

            tg.start_soon(pump)
            try:
                async with receive:
                    yield receive
            finally:
                tg.cancel_scope.cancel()
                send.close()

    # writing -------------------------------------------------------------------------------
    def _encode(self, value: T) -> bytes:
        return encode(self._dump(value), f"state {self.name!r}", MAX_STATE_BYTES)

    async def _txn(
        self, compare: list[Compare], success: list[AnyOp], failure: list[AnyOp]
    ) -> TxnResult:
        if self._fence is not None:
            res = await self._fence.txn(compare, success, failure)
        else:
            res = await self._t.txn(compare, success, failure)
        if res.succeeded and success:
            if isinstance(res.responses[0], DeleteResult) and not res.responses[0].deleted:
                self._absent = res.revision  # deleted nothing: no event will mark it
            else:
                self._written = res.revision
        return res

    async def set(self, value: T) -> int:
        """Write ``value`` unconditionally; return the write's revision."""
        res = await self._txn([], [Op.put(self.key, self._encode(value))], [])
        return res.revision

    async def compare_and_set(self, value: T, *, revision: int) -> int | None:
        """Write ``value`` only if the state's mod revision is ``revision`` (0: absent).

        Returns:
            The new revision, or ``None`` when the state had changed (nothing written).

        Raises:
            ValueError: a negative or non-int ``revision``.
        """
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise ValueError(f"revision must be an int >= 0, not {revision!r}")
        res = await self._txn(
            [Compare.mod_revision(self.key) == revision],
            [Op.put(self.key, self._encode(value))],
            [],
        )
        return res.revision if res.succeeded else None

    async def delete(self, *, revision: int | None = None) -> bool:
        """Delete the state (only at ``revision`` when given); whether a key was deleted."""
        compare = [] if revision is None else [Compare.mod_revision(self.key) == revision]
        res = await self._txn(compare, [Op.delete(self.key)], [])
        if not res.succeeded:
            return False
        first = res.responses[0]
        return isinstance(first, DeleteResult) and first.deleted > 0

    async def update(self, fn: Callable[[T | None], T], *, max_attempts: int = 64) -> Versioned[T]:
        """Set the state to ``fn(current)`` by compare-and-set, retrying on conflict.

        ``fn`` gets ``None`` when the state is absent. The first attempt starts from the
        view (no read); each conflict returns the current value in the same round trip.

        Returns:
            The value written, with its revision.

        Raises:
            TransactionConflictError: every attempt lost to another writer; nothing written.
            ValueError: a bad ``max_attempts``.
        """
        check_attempts(max_attempts)
        view = await self._view()
        kv = await self._t.get(self.key) if view is None else view.get(self.key)
        for attempt in range(1, max_attempts + 1):
            current = self._versioned(kv)
            new = fn(None if current is None else current.value)
            data = self._encode(new)
            res = await self._txn(
                [Compare.mod_revision(self.key) == (0 if kv is None else kv.mod_revision)],
                [Op.put(self.key, data)],
                [Op.get(self.key)],
            )
            if res.succeeded:
                version = 1 if kv is None else kv.version + 1
                created = res.revision if kv is None else kv.create_revision
                return Versioned(self._load(decode(data)), res.revision, version, created)
            kv = res.range(0).first
            if attempt < max_attempts and await _backoff(attempt):
                kv = await self._t.get(self.key)  # stale after the pause: read afresh
        raise TransactionConflictError(f"update of state {self.name!r}", max_attempts, [self.key])
