"""Keys a write may have left under this process's lease: deleted until they are gone.

Two ways a key outlives its use:

* **A write whose answer never came** (a timeout, a cancellation, a member that stopped
  answering) may have been applied, and the caller deletes what it may have created at
  once (``ownership.owned``, ``Registry.register``, ``Quotas.reserve``). It may also be
  applied *later*: a paused raft leader forwards a proposal it buffered once it resumes,
  after the caller gave up, tried again and went on. A lock candidacy created that way is
  a ghost: queued under a live lease, held by nobody, blocking the name until the lease
  ends; a registration made that way shows an agent live that nobody runs; a reservation,
  quota used by nobody.
* **A delete that failed** (a release, a resign, an unregister while etcd did not answer):
  the key stays under the live lease, for as long as the process lives, not just until a
  lease would expire.

:func:`delete_left_key` hands such a key to a watcher in the session's task group. It
deletes the key (retried, with backoff, while the lease lives) unless the process uses it
again, and with ``late=True`` it then watches the key for the rest of the lease: each time
a write applies it under that lease while the process does not use it, it is deleted,
compared on its create revision. Like Curator's guaranteed delete, the caller's exit is not
held up by it.

Guarantees:
    * The watcher deletes only a key of this process's own lease, and only while the
      process does not use it: ``in_use`` is either the key's in-process lock (taken for
      each attempt: no task holds the key meanwhile) or a test of whether the process
      holds it (asked after the read, just before the compared delete, so a key the
      process made its own since is never deleted).
    * One watcher per key and session; it ends when its lease is lost or the session
      closes (the key goes with the lease then). The watches of all of a session's keys
      share one etcd watch stream (:class:`~foundation_etcd._coord.doorbells.Doorbells`,
      opened with the first key watched): many keys left at once (a batch of registrations
      without an answer) cost a watch id each, not a stream each.

On lease loss: the watcher ends; nothing else to do.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from .._core.background import cleanup_scope, unless_set
from .._core.errors import AmbiguousResultError, EtcdError, FoundationEtcdError, LeaseLostError
from .._core.kv import Compare, Op, WatchEvent
from .._transport import Transport
from .doorbells import Bell, Doorbells
from .session import Lease, Session

__all__ = ["LATE_WATCHED", "delete_left_key", "may_be_applied", "note_candidacy", "resign"]

log = logging.getLogger("foundation_etcd.ownership")

InUse = anyio.Lock | Callable[[], bool]


@dataclass(slots=True)
class _Watched:
    token: int = 0  # the last candidacy (create revision) this process made of the key
    late: bool = False  # watched for the rest of the lease (a write had no answer)
    wake: anyio.Event = field(default_factory=anyio.Event)  # handed on again: look again


# per session, each key a watcher looks after
LATE_WATCHED: weakref.WeakKeyDictionary[Session, dict[bytes, _Watched]] = (
    weakref.WeakKeyDictionary()
)
# per session, the one watch stream that carries the watches of all its keys left behind
_BELLS: weakref.WeakKeyDictionary[Session, Doorbells] = weakref.WeakKeyDictionary()


def may_be_applied(exc: BaseException) -> bool:
    """Whether a write that raised ``exc`` may have been applied (now or later).

    Refusals (unavailable, denied, too large, conflicts) were not; an ambiguous answer, a
    cancellation or any other interruption may have been.
    """
    return isinstance(exc, AmbiguousResultError) or not isinstance(exc, FoundationEtcdError)


def note_candidacy(session: Session, key: bytes, token: int) -> None:
    """Tell a watcher of ``key`` (if any) that ``token`` is a candidacy this process made.

    Its writes are then not looked into: a name used often after a fault costs nothing.
    """
    watched = LATE_WATCHED.get(session)
    if watched is not None and (entry := watched.get(key)) is not None:
        entry.token = token


def delete_left_key(
    session: Session, key: bytes, lease: Lease, in_use: InUse, *, late: bool = True
) -> None:
    """Delete ``key`` while it exists under ``lease`` and the process does not use it.

    Args:
        session: whose task group runs the watcher.
        key: the key left behind, or that a write with no answer may create.
        lease: the lease that write put it under.
        in_use: the key's in-process lock, or a test of whether the process holds it.
        late: watch for writes applied late for the rest of the lease (a write had no
            answer); else end once the key is gone.
    """
    if session.closed or lease.lost:
        return
    watched = LATE_WATCHED.setdefault(session, {})
    entry = watched.get(key)
    if entry is not None:  # its watcher looks again (the last candidacy is over)
        entry.late, entry.token = entry.late or late, 0
        entry.wake.set()
        return
    watched[key] = entry = _Watched(late=late)
    session.start_background(_watch, session, key, lease, in_use, watched, entry)


async def resign(
    session: Session, key: bytes, mine: Compare, lease: Lease, in_use: InUse, *, late: bool = False
) -> bool | None:
    """Delete the own ``key`` if ``mine`` holds; shielded, bounded, handed on if unanswered.

    Without an answer (or with ``late``: the key's write had none), the key is handed to
    :func:`delete_left_key`, which deletes it in the background.

    Returns:
        Whether ``mine`` held (``False``: the key was not this candidacy's any more);
        ``None`` without an answer.
    """
    answer = None
    with cleanup_scope(session.config.request_timeout):
        try:
            answer = (await session.transport.txn([mine], [Op.delete(key)])).succeeded
            if not late:
                return answer
        except EtcdError as exc:
            log.warning("could not delete %r (%s); deleting it in the background", key, exc)
    delete_left_key(session, key, lease, in_use, late=late)
    return answer


def _bell(session: Session, key: bytes, after: int) -> Bell:
    """A watch of ``key``'s puts after ``after``, on the session's one stream for such keys."""
    bells = _BELLS.get(session)
    if bells is not None:
        try:
            return bells.watch(key, None, after, no_delete=True)
        except anyio.ClosedResourceError:
            pass  # stopped (its task ended): a new one
    bells = _BELLS[session] = Doorbells(session.transport)
    session.start_background(bells.run)
    return bells.watch(key, None, after, no_delete=True)


async def _watch(
    session: Session,
    key: bytes,
    lease: Lease,
    in_use: InUse,
    watched: dict[bytes, _Watched],
    entry: _Watched,
) -> None:
    transport = session.transport
    bell: Bell | None = None
    try:
        with lease.guard():
            delay = 0.05
            while True:  # from a revision etcd answered with (it may not answer now)
                try:
                    after = await transport.revision()
                    break
                except EtcdError:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 1.0)
            while True:  # what was applied until ``after`` is checked first, then each write
                entry.wake = anyio.Event()  # a hand-off from now on makes it look again
                after = max(after, await _delete_if_left(transport, key, lease, in_use))
                if entry.wake.is_set():
                    continue
                if not entry.late:
                    return
                bell = bell or _bell(session, key, after)
                while True:  # candidacies this process made are not looked into
                    events = await _events_or_wake(bell, entry.wake)  # puts only
                    if not events or any(e.kv.create_revision != entry.token for e in events):
                        break  # (None: handed on again; []: some may be missed)
    except (LeaseLostError, anyio.ClosedResourceError):
        pass  # the key, if any, goes with the lease (or the session closed)
    finally:
        if bell is not None:
            bell.close()
        if watched.get(key) is entry:
            del watched[key]


async def _events_or_wake(bell: Bell, wake: anyio.Event) -> list[WatchEvent] | None:
    """The bell's next events (``[]``: some may be missed); ``None`` once ``wake`` is set."""
    got: list[WatchEvent] | None = None

    async def take() -> None:
        nonlocal got
        got = await bell.wait()

    await unless_set(wake, take)
    return got


async def _delete_if_left(transport: Transport, key: bytes, lease: Lease, in_use: InUse) -> int:
    """Delete ``key`` if it exists under ``lease`` unused, retrying; the revision seen."""
    delay, told = 0.05, False
    while True:
        try:
            if isinstance(in_use, anyio.Lock):
                async with in_use:  # no task of this process uses the key now
                    return await _delete_once(transport, key, lease, None)
            return await _delete_once(transport, key, lease, in_use)
        except EtcdError as exc:  # tried again while the lease lives
            (log.debug if told else log.warning)(
                "could not delete %r yet (%s); trying again while its lease lives", key, exc
            )
            told = True
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _delete_once(
    transport: Transport, key: bytes, lease: Lease, held: Callable[[], bool] | None
) -> int:
    kv = await transport.get(key)
    if kv is None or kv.lease != lease.id or (held is not None and held()):
        return 0
    mine = Compare.create_revision(key) == kv.create_revision
    res = await transport.txn([mine], [Op.delete(key)])
    if res.succeeded:
        log.warning("deleted %r: a key this process left under its lease", key)
    return res.revision
