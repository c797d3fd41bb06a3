"""Distributed locks with fencing tokens, on the session lease.

::

    lock = Lock(session, "reports")
    async with lock.acquire() as held:          # waits, FIFO; bound it with anyio.fail_after
        await held.put(key, value)              # refused by etcd once the lock is lost
    async with lock.acquire_nowait() as held:   # LockBusyError at once if taken or queued
        ...

Waiters queue under ``locks/{name}/`` (see the ownership module for the algorithm).

Guarantees:
    * **Mutual exclusion** across processes and, through an in-process lock, across the
      tasks of one process (they share one session lease, hence one key).
    * **FIFO** by create revision; each waiter watches only its predecessor.
    * **One transaction** to acquire an uncontended lock, one to release it. The release
      compares the key's create revision with the token, so a release applied late (taken
      by a paused member, applied after the same session holds the name again under the
      same key name) deletes nothing of the later holding.
    * **No lease per acquire**: keys live under the session lease, so nothing leaks; a
      crashed holder's key goes with its lease.
    * **The body never runs without the lock**: a wait that times out, is cancelled or
      loses the session raises and deletes its key; a lost session or a deleted key cancels
      the body and raises :class:`LockLostError`.
    * **Fenced writes** through :class:`LockHandle` (``txn``, ``put``, ``delete``).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import ClassVar

from .._core.errors import LockLostError, OwnershipLostError
from .._core.keys import validate_id
from .._core.kv import Op, to_bytes
from .ownership import OwnerInfo, Ownership, owned
from .session import Session

__all__ = ["Lock", "LockHandle"]


@dataclass(frozen=True, slots=True, eq=False)
class LockHandle(Ownership):
    """This process holds a lock. See :class:`Ownership` for the fenced writes."""

    lost_error: ClassVar[type[OwnershipLostError]] = LockLostError
    _metric_kind: ClassVar[str] = "lock"


class Lock:
    """A named lock among processes of one namespace and tenant."""

    def __init__(self, session: Session, name: str) -> None:
        """Prepare a lock; nothing is sent until it is acquired.

        Raises:
            InvalidIdError: a bad name.
        """
        self.name = validate_id(name, "lock name")
        self._session = session
        self._prefix = session.config.keyspace.lock_prefix(name)

    def acquire(self, value: bytes | str = b"") -> AbstractAsyncContextManager[LockHandle]:
        """Wait for the lock (FIFO), hold it for the block, release it on exit.

        Raises:
            LeaseLostError: the session lease was lost while waiting.
            LockLostError: the lock was lost while the body ran (body cancelled).
        """
        return owned(self._session, self.name, self._prefix, to_bytes(value), kind=LockHandle)

    def acquire_nowait(self, value: bytes | str = b"") -> AbstractAsyncContextManager[LockHandle]:
        """Take the lock only if nobody holds or waits for it; otherwise write nothing.

        Raises:
            LockBusyError: the lock is held or waited for (by this process or another).
        """
        return owned(
            self._session, self.name, self._prefix, to_bytes(value), kind=LockHandle, nowait=True
        )

    async def holder(self) -> OwnerInfo | None:
        """The current holder (a linearizable read), or ``None``."""
        res = await self._session.transport.range(
            Op.get(self._prefix, prefix=True, limit=1, sort_by_create=True)
        )
        return None if res.first is None else OwnerInfo.of(res.first)
