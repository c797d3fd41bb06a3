"""Writes applied late: a key of this process's lease that appears when nothing uses it.

A write whose answer never came (a timeout, a cancellation, a member that stopped
answering) may have been applied, and the caller deletes what it may have created at once
(``ownership.owned``). It may also be applied *later*: a paused raft leader forwards a
proposal it buffered once it resumes, after the caller gave up, tried again and went on.
A lock candidacy created that way is a ghost: queued under a live lease, held by nobody,
blocking the name until the lease ends.

:func:`watch_for_late_write` watches such a key for the rest of the lease. Each time it is
written under that lease, the watcher takes the name's in-process lock (so no task of this
process is using the key), reads it, and deletes it if it is still there under the lease,
compared on its create revision.

Guarantees:
    * Only a key of this process's own lease is ever deleted, and only while no task of
      this process holds the name's in-process lock.
    * One watcher per key and session; it ends when its lease is lost or the session
      closes (the key goes with the lease then).

On lease loss: the watcher ends; nothing else to do.
"""

from __future__ import annotations

import logging
import weakref

import anyio

from .._core.errors import EtcdError, LeaseLostError
from .._core.kv import Compare, Op
from .._transport import Transport
from .session import Lease, Session
from .waits import wait_written

__all__ = ["LATE_WATCHED", "note_candidacy", "watch_for_late_write"]

log = logging.getLogger("foundation_etcd.ownership")

# per session, each watched key and the last candidacy (create revision) this process made
LATE_WATCHED: weakref.WeakKeyDictionary[Session, dict[bytes, int]] = weakref.WeakKeyDictionary()


def note_candidacy(session: Session, key: bytes, token: int) -> None:
    """Tell a watcher of ``key`` (if any) that ``token`` is a candidacy this process made.

    Its writes are then not looked into: a name used often after a fault costs nothing.
    """
    watched = LATE_WATCHED.get(session)
    if watched is not None and key in watched:
        watched[key] = token


def watch_for_late_write(session: Session, key: bytes, lease: Lease, in_use: anyio.Lock) -> None:
    """Delete ``key`` whenever a write applies it under ``lease`` while ``in_use`` is free.

    Args:
        session: whose task group runs the watcher.
        key: the key a write that got no answer may create.
        lease: the lease that write put it under.
        in_use: the in-process lock that tasks hold while they use the key.
    """
    watched = LATE_WATCHED.setdefault(session, {})
    if key in watched or session.closed or lease.lost:
        return
    watched[key] = 0
    session.start_background(_watch, session.transport, key, lease, in_use, watched)


async def _watch(
    transport: Transport, key: bytes, lease: Lease, in_use: anyio.Lock, watched: dict[bytes, int]
) -> None:
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
                async with in_use:  # no task of this process uses the key now
                    after = max(after, await _delete_if_left(transport, key, lease))
                while True:  # candidacies this process made are not looked into
                    after, created = await wait_written(transport, key, after)
                    if not created or created != watched.get(key):
                        break
    except LeaseLostError:
        pass  # the key, if any, goes with the lease
    finally:
        watched.pop(key, None)


async def _delete_if_left(transport: Transport, key: bytes, lease: Lease) -> int:
    """Delete ``key`` if it exists under ``lease``; the revision seen (0 when unknown)."""
    try:
        kv = await transport.get(key)
        if kv is None or kv.lease != lease.id:
            return 0
        res = await transport.txn(
            [Compare.create_revision(key) == kv.create_revision], [Op.delete(key)]
        )
        if res.succeeded:
            log.warning("deleted %r: a write that got no answer was applied late", key)
        return res.revision
    except EtcdError as exc:  # looked at again at its next write
        log.info("could not check %r for a write applied late (%s)", key, exc)
        return 0
