"""The queue behind elections and locks, and the fenced ownership it grants.

Candidates (or lock waiters) of one name each create ``{prefix}{lease_hex}`` under their
session lease; the key with the lowest create revision owns the name. That create revision
is the **fencing token**: successive owners have strictly increasing tokens, because a new
key always gets a higher revision than every key before it.

Algorithm (etcd's ``concurrency`` package, with two of its gaps closed):

1. one transaction creates the own key (if absent) and reads the first key of the queue; when
   that is the own key, the caller owns the name after **one round trip**;
2. otherwise, one transaction reads the own key and its predecessor (the newest key created
   before it); the caller watches only that predecessor's deletion (no thundering herd);
3. after each wake-up it checks that its own key **still exists** (a deleted or expired
   candidacy never becomes owner), and repeats 2 until it has no predecessor;
4. the whole wait runs under the session lease's guard: a lost session **aborts** the
   campaign instead of leaving it running; a cancelled or failed wait deletes the own key
   (compared on its lease when the creating write got no answer: it may have applied).

Guarantees:
    * At most one owner per name at any revision; tokens strictly increase.
    * Every write made through :class:`Ownership` carries ``create_revision(own_key) ==
      token``: etcd refuses it once the ownership has ended (a paused or partitioned former
      owner cannot write), and the refusal raises :class:`OwnershipLostError` and ends the
      ownership locally.
    * The owner's body is cancelled when the session lease is lost or the own key is deleted.
    * A key this process left (a resign without an answer, a candidacy applied after its
      caller gave up) is deleted in the background while the lease lives, never while a
      task of this process holds the name (``late_writes``): it never blocks the name for
      the rest of the process's life.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from .._core import metrics
from .._core.background import cancel_scope
from .._core.errors import EtcdError, LeaseLostError, LockBusyError, OwnershipLostError
from .._core.kv import AnyOp, Compare, KeyValue, Op, TxnResult
from .._core.owner_queue import predecessor, queue_ops
from .._transport import Transport
from .late_writes import LATE_WATCHED, note_candidacy, resign
from .session import Lease, Session
from .waits import wait_deleted

__all__ = ["OwnerInfo", "Ownership", "local_lock", "owned"]

log = logging.getLogger("foundation_etcd.ownership")

OwnerT = TypeVar("OwnerT", bound="Ownership")

_LOCAL: weakref.WeakKeyDictionary[Session, dict[bytes, anyio.Lock]] = weakref.WeakKeyDictionary()


def local_lock(session: Session, prefix: bytes) -> anyio.Lock:
    """The in-process lock that queues this process's own tasks for one name.

    Its tasks share one lease, hence one key per name: they take turns here, then in etcd.
    """
    locks = _LOCAL.setdefault(session, {})
    lock = locks.get(prefix)
    if lock is None:
        lock = locks[prefix] = anyio.Lock()
    return lock


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """The current owner of a name as etcd reports it.

    Attributes:
        key: the owner's key.
        token: its create revision (the fencing token).
        value: the value it proclaimed.
        lease_id: its lease.
    """

    key: bytes
    token: int
    value: bytes
    lease_id: int

    @classmethod
    def of(cls, kv: KeyValue) -> OwnerInfo:
        """Build from the owner's key."""
        return cls(kv.key, kv.create_revision, kv.value, kv.lease)


@dataclass(slots=True)
class _State:
    lost_reason: str = ""
    scope: anyio.CancelScope | None = None
    attrs: dict[str, str] = field(default_factory=dict)  # the metrics' attributes


@dataclass(frozen=True, slots=True, eq=False)
class Ownership:
    """Proof of ownership of an election or a lock, with fenced writes.

    Attributes:
        name: the election or lock name.
        key: the own key.
        fencing_token: the own key's create revision; hand it to systems outside etcd so
            they can refuse writes carrying a lower token.
        lease_id: the session lease the key lives under.
    """

    name: str
    key: bytes
    fencing_token: int
    lease_id: int
    _transport: Transport = field(repr=False)
    _lease: Lease = field(repr=False)
    _state: _State = field(default_factory=_State, repr=False)

    lost_error: ClassVar[type[OwnershipLostError]] = OwnershipLostError
    _metric_kind: ClassVar[str] = "election"  # the ``kind`` attribute of its metrics

    @property
    def token(self) -> int:
        """Alias of :attr:`fencing_token`."""
        return self.fencing_token

    @property
    def guard(self) -> Compare:
        """The compare to add to your own transactions: ``create_revision(key) == token``."""
        return Compare.create_revision(self.key) == self.fencing_token

    @property
    def lost(self) -> bool:
        """Whether this ownership is known to have ended."""
        return bool(self._state.lost_reason)

    def _end(self, reason: str) -> OwnershipLostError:
        if not self._state.lost_reason:
            self._state.lost_reason = reason
            metrics.ownership_lost(self._state.attrs)
            if self._state.scope is not None:
                self._state.scope.cancel()
        return self.lost_error(
            self.name, key=self.key, token=self.fencing_token, reason=self._state.lost_reason
        )

    def ended(self) -> OwnershipLostError | None:
        """The error this ownership ended with, if it is known to have ended (no side effect)."""
        return self._end("") if self._state.lost_reason else None

    def ensure_current(self) -> None:
        """Raise unless the ownership is still believed current (no I/O).

        Raises:
            OwnershipLostError: it ended (or the session lease is past its deadline).
        """
        if self._state.lost_reason:
            raise self._end(self._state.lost_reason)
        try:
            self._lease.ensure_alive()
        except LeaseLostError as exc:
            raise self._end(f"session lease lost ({exc.reason})") from exc

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[AnyOp] = (),
        failure: Sequence[AnyOp] = (),
    ) -> TxnResult:
        """Run a transaction only while this ownership is current.

        The caller's transaction is nested under the fencing compare, so its own compares
        decide between ``success`` and ``failure`` as usual, and the result is the nested
        one.

        Raises:
            OwnershipLostError: the fencing compare failed; etcd wrote nothing.
            AmbiguousResultError: no answer; the outcome is unknown.
        """
        self.ensure_current()
        res = await self._transport.txn(
            [self.guard], [Op.txn(compare, success, failure)], [Op.get(self.key)]
        )
        if not res.succeeded:
            metrics.ownership_fenced_refused(self._state.attrs)
            raise self._end("fencing token is no longer current (refused by etcd)")
        inner = res.responses[0]
        assert isinstance(inner, TxnResult)
        # etcd leaves a nested transaction's header empty: report the outer revision
        return TxnResult(inner.succeeded, res.revision, inner.responses)

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> int:
        """Write a key only while this ownership is current; return the revision."""
        return (await self.txn((), [Op.put(key, value, lease=lease)])).revision

    async def delete(self, key: bytes | str, *, prefix: bool = False) -> int:
        """Delete a key (or prefix) only while this ownership is current; return the revision."""
        return (await self.txn((), [Op.delete(key, prefix=prefix)])).revision


async def _enqueue(
    transport: Transport, prefix: bytes, key: bytes, value: bytes, lease: Lease
) -> tuple[int, KeyValue | None]:
    """Create the own key; return its create revision and the first key of the queue.

    A key of the own name found there is no candidacy of a task now (the name's in-process
    lock is held): one left behind, applied late, or another client's. It is deleted and
    the key made anew, so that a candidacy always gets a new token and its own value.
    """
    absent, first, own_key = queue_ops(prefix, key)
    for _ in range(3):
        lease.ensure_alive()
        res = await transport.txn(
            [absent], [Op.put(key, value, lease=lease.id), first], [own_key, first]
        )
        if res.succeeded:
            return res.revision, res.range(1).first
        await _drop_left(transport, key, res.range(0).first)
    raise EtcdError(f"{key!r} kept being written by another client; not a candidacy")


async def _drop_left(transport: Transport, key: bytes, left: KeyValue | None) -> None:
    """Delete the key left at the own name (compared on its create revision)."""
    if left is not None:
        mine = Compare.create_revision(key) == left.create_revision
        await transport.txn([mine], [Op.delete(key)])


async def _wait_turn(
    transport: Transport, prefix: bytes, key: bytes, token: int, lease: Lease
) -> None:
    """Wait until no key older than the own key remains; fail if the own key vanishes."""
    while True:
        lease.ensure_alive()
        res = await transport.txn([], [Op.get(key), predecessor(prefix, token)])
        own = res.range(0).first
        if own is None or own.create_revision != token:
            raise LeaseLostError(lease.id, "own key deleted while waiting")
        pred = res.range(1).first
        if pred is None:
            return
        await wait_deleted(transport, pred.key, res.revision)


_MONITOR_DELAY = 0.05  # seconds before an owner's key is watched (see _monitor)
_SPAWNING: set[asyncio.Task[None]] = set()


async def _monitor(
    transport: Transport, ownership: Ownership, from_revision: int, scope: anyio.CancelScope
) -> None:
    """End the ownership when the own key is deleted or replaced; runs until ``scope`` ends.

    Started by a timer after a short delay (:func:`_watch_later`); the watch opens from the
    revision the ownership began at: a deletion in between is replayed from etcd's history,
    so nothing is missed, and a lock held for less than the delay costs no task and no watch.
    """
    with scope:
        while True:
            await wait_deleted(transport, ownership.key, from_revision)
            try:
                read = await transport.range(Op.get(ownership.key))
            except EtcdError as exc:  # cannot tell now: the fenced writes still protect
                log.info("cannot re-read %r (%s); watching again", ownership.key, exc)
                await anyio.sleep(0.2)
                continue
            if read.first is None or read.first.create_revision != ownership.fencing_token:
                ownership._end("own key deleted")
                return
            from_revision = read.revision  # the watch could not tell (compaction): from now


class _Watch:
    """The monitor of one ownership: a loop timer until it starts, then a task (see below)."""

    __slots__ = ("_from", "_ownership", "_session", "_transport", "handle", "scope", "stopped")

    def __init__(
        self, session: Session, transport: Transport, ownership: Ownership, from_revision: int
    ) -> None:
        self._session, self._transport = session, transport
        self._ownership, self._from = ownership, from_revision
        self.stopped = False
        self.handle: asyncio.TimerHandle | None = None
        self.scope: anyio.CancelScope | None = None  # made when the monitor starts

    def stop(self) -> None:
        """Cancel the timer, and the monitor if it started.

        Its scope is made only when it starts (a scope's cancel formats the task's repr).
        """
        self.stopped = True
        if self.handle is not None:
            self.handle.cancel()
        if self.scope is not None:
            self.scope.cancel()

    def start(self) -> None:
        """The timer's callback: spawn the monitor from a task (anyio spawns only from one)."""
        if not self._session.closed:
            task = asyncio.get_running_loop().create_task(self._spawn())
            _SPAWNING.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(_SPAWNING.discard)

    async def _spawn(self) -> None:
        if not self._session.closed and not self.stopped:
            self.scope = cancel_scope()
            self._session.start_background(
                _monitor, self._transport, self._ownership, self._from, self.scope
            )


def _watch_later(session: Session, t: Transport, ownership: Ownership, rev: int) -> _Watch:
    """Start :func:`_monitor` in the session's task group in ``_MONITOR_DELAY`` seconds.

    A loop timer, not a sleeping task: stopping it at release costs nothing.
    """
    watch = _Watch(session, t, ownership, rev)
    watch.handle = asyncio.get_running_loop().call_later(_MONITOR_DELAY, watch.start)
    return watch


async def _take_if_free(
    transport: Transport, name: str, prefix: bytes, key: bytes, value: bytes, lease: Lease
) -> int:
    """One transaction: create the own key only if the queue is empty (else write nothing)."""
    end = Op.get(prefix, prefix=True).range_end
    for _ in range(2):  # a key left at the own name (see _enqueue) is no other's: once more
        lease.ensure_alive()
        res = await transport.txn(
            [Compare.create_revision(prefix, range_end=end) == 0],  # true only when empty
            [Op.put(key, value, lease=lease.id)],
            [Op.get(prefix, prefix=True, limit=2, sort_by_create=True)],
        )
        if res.succeeded:
            return res.revision
        kvs = res.range(0).kvs
        if len(kvs) != 1 or kvs[0].key != key:
            break
        await _drop_left(transport, key, kvs[0])
    first = res.range(0).first
    raise LockBusyError(
        name,
        holder_key=first.key if first else None,
        holder_token=first.create_revision if first else 0,
    )


@asynccontextmanager
async def owned(
    session: Session,
    name: str,
    prefix: bytes,
    value: bytes,
    *,
    kind: type[OwnerT],
    nowait: bool = False,
) -> AsyncIterator[OwnerT]:
    """Queue for ``prefix`` and hold it for the duration of the block.

    Args:
        session: whose lease the own key lives under.
        name: the election or lock name (for errors).
        prefix: the queue's key prefix.
        value: the own key's value.
        kind: the :class:`Ownership` subclass to grant.
        nowait: take the name only if nobody owns or waits for it, else raise
            :class:`LockBusyError` having written nothing.

    Raises:
        LeaseLostError: the session lease was lost before ownership was granted.
        OwnershipLostError: the ownership ended while the body ran (body cancelled).
        LockBusyError: with ``nowait``, the name was taken.
    """
    transport = session.transport
    started = metrics.now()
    local = local_lock(session, prefix)
    if nowait and local.locked():
        raise LockBusyError(name, holder_key=None, holder_token=0)
    try:  # uncontended: no extra trip through the event loop
        local.acquire_nowait()
    except anyio.WouldBlock:
        await local.acquire()
    try:
        lease = await session.wait_lease()
        key = prefix + f"{lease.id:x}".encode()
        token = 0
        ownership: OwnerT | None = None
        ended = False
        body = cancel_scope()  # cancelled on lease loss (guard) or ownership end
        try:
            with lease.guard(body):
                try:
                    if nowait:
                        token = await _take_if_free(transport, name, prefix, key, value, lease)
                    else:
                        token, first = await _enqueue(transport, prefix, key, value, lease)
                except BaseException as exc:  # no answer: the key may be written, now or late
                    if not isinstance(exc, LockBusyError):  # (busy: nothing was written)
                        mine = Compare.lease(key) == lease.id
                        await resign(session, key, mine, lease, local, late=True)
                    raise
                if session in LATE_WATCHED:  # a write had no answer: its watcher is told
                    note_candidacy(session, key, token)
                if not nowait and (first is None or first.key != key):
                    await _wait_turn(transport, prefix, key, token, lease)
                await checkpoint_if_cancelled()  # no body in a scope cancelled meanwhile
                attrs = metrics.ownership_acquired(
                    kind._metric_kind, name, session.config.tenant, started
                )
                ownership = kind(
                    name, key, token, lease.id, transport, lease, _State("", body, attrs)
                )
                watch = _watch_later(session, transport, ownership, token)
                try:
                    yield ownership
                finally:
                    # resign at once; the monitor ends in the session's task group
                    ownership._state.scope = None
                    watch.stop()
                    if lease.lost:  # known ended now, not after the (bounded) resign below
                        ownership._end(f"session lease lost ({lease.lost_reason})")
                    done, token = token, 0
                    mine = Compare.create_revision(key) == done
                    if await resign(session, key, mine, lease, local) is False:  # not ours:
                        ownership._end("own key deleted while held")  # said at the exit
                    ended = ownership.lost  # a stale handle refuses to write from now on:
                    ownership._state.lost_reason = ownership._state.lost_reason or "released"
            if ended and ownership is not None:
                raise ownership._end(ownership._state.lost_reason)
        except LeaseLostError as exc:
            if ownership is not None:
                raise ownership._end(f"session lease lost ({exc.reason})") from exc
            raise
        finally:
            if token:  # not owner yet (cancelled, failed, timed out while waiting)
                await resign(session, key, Compare.create_revision(key) == token, lease, local)
    finally:
        local.release()
