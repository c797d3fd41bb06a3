"""One watch of a :class:`Doorbells` stream, as its consumer sees it (see ``doorbells.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from .._core.errors import AuthError
from .._core.kv import WatchEvent

if TYPE_CHECKING:
    from .._transport import Transport
    from .doorbells import Doorbells

__all__ = ["Bell"]

FIRST_DELAY = 0.05  # seconds before the first retry (a new stream, a re-created watch)
# a watch's permission refusals in a row, each followed by a new login, before the refusal is
# taken as real: etcd refuses a JWT token issued before any change of users or roles, and a
# burst of such changes (a tenant provisioned) can make the new token stale again at once
AUTH_REFUSALS = 3


async def log_in_again(transport: Transport, refusals: int) -> bool:
    """After a watch's ``refusals``-th permission refusal in a row: log in, and say retry.

    ``False`` (the refusal is real) without a user or past :data:`AUTH_REFUSALS` refusals.

    Raises:
        AuthError: the new login was refused.
        EtcdError: etcd could not be reached for it.
    """
    if transport.config.user is None or refusals > AUTH_REFUSALS:
        return False
    await transport.refresh_auth()
    return True


class Bell:
    """One watch carried by a :class:`Doorbells` stream. Made by :meth:`Doorbells.watch`.

    Attributes:
        key: the watched key, or the start of the range.
        range_end: the end of the range (exclusive); ``None`` for ``key`` alone.
        no_delete: whether deletions are left out.
        missed: whether the last :meth:`wait` returned because changes may have been missed.
    """

    def __init__(
        self, owner: Doorbells, key: bytes, range_end: bytes | None, after: int, no_delete: bool
    ) -> None:
        self._owner = owner
        self.key, self.range_end, self.no_delete = key, range_end, no_delete
        self.missed = False
        self._revision = after  # every change up to it has been handed over
        self._events: list[WatchEvent] = []
        self._rung = False
        self._wakeup: asyncio.Event | None = None  # (anyio's costs a backend lookup each)
        self._closed = False
        self._error: AuthError | None = None
        # the watch on the current stream
        self._id = 0  # its watch id; 0 while it has none
        self._seq = 0  # the position of its create among the stream's writes
        self._created = False  # etcd confirmed the create
        self._from_now = False  # re-create at the current revision (the start was compacted)
        self._delay = FIRST_DELAY  # before re-creating it after an unexpected cancel
        self._auth_refusals = 0  # in a row, since its last create (AUTH_REFUSALS)
        self._ready = anyio.Event()
        self.created_revision = 0  # the header revision of the first create's answer
        # called (in the doorbells' reader: it must not block or raise) whenever ``take``
        # may have something new: events, a missed wake-up, an error or the close
        self.notify: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Bell {self.key!r} revision={self._revision}>"

    @property
    def revision(self) -> int:
        """The highest revision up to which every change of the range has been handed over."""
        return self._revision

    @property
    def closed(self) -> bool:
        """Whether the bell is closed (:meth:`close`, a refusal, or its doorbells' end)."""
        return self._closed

    async def wait(self) -> list[WatchEvent]:
        """Wait for the events received since the last call, or for a missed wake-up.

        Returns:
            New events in revision order, at least one (:attr:`missed` false); or ``[]``
            with :attr:`missed` true: changes may have been lost, re-read the range.

        Raises:
            anyio.ClosedResourceError: the bell is closed, or its doorbells stopped.
            AuthError: etcd refused the watch, also after a new login.
        """
        while True:
            events = self.take()
            if events is not None:
                return events
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            await self._wakeup.wait()

    def take(self) -> list[WatchEvent] | None:
        """What :meth:`wait` would return now, without waiting: ``None`` if nothing yet.

        Raises:
            anyio.ClosedResourceError, AuthError: as :meth:`wait`.
        """
        if self._error is not None:
            raise self._error
        if self._closed:
            raise anyio.ClosedResourceError("the bell is closed")
        if self._rung:
            self._rung = False
            self.missed = True
            return []
        if self._events:
            events, self._events = self._events, []
            self.missed = False
            return events
        return None

    async def ready(self) -> int:
        """Wait until etcd has created the watch; return the revision it was created at."""
        if not self._ready.is_set():  # (waiting on a set event would still yield)
            await self._ready.wait()
        return self.created_revision

    def close(self) -> None:
        """Stop the watch (idempotent); a waiter gets :class:`anyio.ClosedResourceError`."""
        self._ready.set()
        if not self._closed:
            self._closed = True
            self._owner._forget(self)
            self._wake()

    # called by the doorbells ----------------------------------------------------------------
    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        if self.notify is not None:
            self.notify()

    def _deliver(self, events: list[WatchEvent]) -> None:
        fresh = [e for e in events if e.revision > self._revision]
        if fresh:
            self._revision = fresh[-1].revision
            self._events.extend(fresh)
            self._delay = FIRST_DELAY
            self._wake()

    def _advance(self, revision: int) -> None:
        if revision > self._revision:
            self._revision = revision

    def _ring(self, revision: int) -> None:
        """Report a gap: the watch now delivers the changes after ``revision``."""
        self._events.clear()  # older than the gap: the consumer re-reads anyway
        self._advance(revision)
        self._rung = True
        self._wake()
