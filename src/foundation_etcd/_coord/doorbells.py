"""Doorbells: many watches on one etcd watch stream, one bell per watch.

A node hosting many agents watches each agent's inbox. etcd multiplexes watches by watch id
on one gRPC ``Watch`` stream, so :class:`Doorbells` carries every :class:`Bell` on a single
stream, with watch ids of its own choosing (etcd >= 3.4). A bell is a doorbell, not a cache:
it hands its consumer the events since the last call, or says that some may be missed.

1. :meth:`Doorbells.watch` returns at once; one writer task sends the creates back to back,
   never waiting for answers (etcd answers a stream's creates in order).
2. One reader routes responses by watch id. A bell drops events at or below its revision
   (duplicates after a resume). Progress notifications of its own watch advance its revision
   (etcd sends them once the watch caught up); so do answers to the stream's progress
   requests (watch id -1) for bells created before the request, on etcd >= 3.5.8 only:
   older ones may answer ahead of pending events (etcd issue 15220).
3. After any stream error a new stream follows (jittered backoff from 0.05 s doubling to
   1 s, reset by a stream that worked for over 1 s) and every watch is re-created from its
   revision + 1.
4. A watch whose start was compacted is re-created from the current revision and its bell
   rung as *missed* once the new watch is in place. One cancelled for another reason is
   re-created from revision + 1 after a backoff (nothing lost, no ring); a permission
   refusal is retried on a new stream after a new login (``AUTH_REFUSALS`` in a row at most,
   counted since the bell's last create), then fails that bell alone.
5. A stream carrying watches and silent (no events, no progress) for ``silence`` seconds is
   asked for progress; silent ``silence`` more, it is broken (a SIGSTOPped member keeps the
   connection open and answers nothing): closed, and step 3 follows.

Guarantees:
    * :meth:`Bell.wait` returns events in revision order, each change at most once, only of
      the bell's range and above its ``after_revision`` (no deletions with ``no_delete``).
    * No change is lost silently: each is returned by ``wait``, or ``wait`` returns ``[]``
      with :attr:`Bell.missed` set (history compacted away) before any later event. Then
      re-read the range: later events have revisions above :attr:`Bell.revision` as it is
      then (those up to the read's revision are in the read).
    * Every change of the range up to :attr:`Bell.revision` has been handed to the bell.
    * While etcd is unreachable, bells simply wait (``connected`` is false) and streams are
      retried until :meth:`Doorbells.run` is cancelled; watches resume where they were, so an
      outage alone rings no bell. Bells buffer without bound (a slow consumer blocks nothing).
      When ``run`` ends, every bell is closed (``ClosedResourceError``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from .._core.background import background_tasks
from .._core.errors import AuthError, EtcdError, EtcdUnavailableError
from .._transport import Transport, WatchResponse, WatchStream, release_of
from .bells import FIRST_DELAY as _FIRST_DELAY
from .bells import Bell, log_in_again

__all__ = ["Bell", "Doorbells"]

log = logging.getLogger("foundation_etcd.doorbells")

_MAX_DELAY = 1.0


def _trusts_progress(version: str) -> bool:
    """Whether etcd ``version`` answers a progress request only once every watch caught up."""
    return release_of(version) >= (3, 5, 8)


class _Conn:
    """The state of one open stream."""

    def __init__(self, stream: WatchStream, tg: TaskGroup) -> None:
        self.stream, self.tg = stream, tg
        self.work = anyio.Event()  # set when the writer has something to send
        self.work.set()  # the creates of every bell
        self.creating: deque[int] = deque()  # ids of creates sent and not answered, in order
        self.sent = 0  # writes so far
        self.asked: int | None = None  # the position of the first unanswered progress request
        self.want_progress = False
        self.last = time.monotonic()  # when the stream last delivered anything
        self.answered = False


class Doorbells:
    """Many watches (bells) on one etcd watch stream; run it with :meth:`run` or :meth:`open`.

    Args:
        transport: an open transport.
        silence: seconds a stream carrying watches may stay silent before it is asked for
            progress; as long again and it is replaced.

    Attributes:
        connected: whether the current stream has confirmed a watch.
        reconnects: streams that broke (or were closed as silent) and were replaced.
        silences: streams closed by the silence watchdog.
    """

    def __init__(self, transport: Transport, *, silence: float = 10.0) -> None:
        if not silence > 0:
            raise ValueError(f"silence must be positive, not {silence!r}")
        self._transport = transport
        self._silence = silence
        self._bells: dict[Bell, None] = {}  # every open bell, in registration order
        self._by_id: dict[int, Bell] = {}  # the watches of the current stream
        self._to_create: dict[Bell, None] = {}  # bells whose create is still to be sent
        self._cancels: list[int] = []  # watch ids to cancel on the current stream
        self._next_id = 0
        self._conn: _Conn | None = None
        self._trust = _trusts_progress(transport.server_version)
        self._running = self._stopped = False
        self.connected = False
        self.reconnects = self.silences = 0

    def __len__(self) -> int:
        return len(self._bells)

    @classmethod
    @asynccontextmanager
    async def open(cls, transport: Transport, *, silence: float = 10.0) -> AsyncIterator[Doorbells]:
        """Run doorbells (see :class:`Doorbells`) for the block; every bell closes at its end."""
        bells = cls(transport, silence=silence)
        async with background_tasks() as tg:
            tg.start_soon(bells.run)
            yield bells

    def watch(
        self, key: bytes, range_end: bytes | None, after_revision: int, *, no_delete: bool = False
    ) -> Bell:
        """Register a watch of the changes after ``after_revision``; returns at once.

        Args:
            key: the key, or the start of the range.
            range_end: the end of the range (exclusive); ``None`` for ``key`` alone.
            after_revision: deliver the changes with a higher revision; ``-1``: those after
                the revision at which etcd creates the watch (:meth:`Bell.ready` tells it).
                A watch from the past is served by etcd's slower sync loop (up to 100 ms
                behind); one from now is not.
            no_delete: leave deletions out.

        Raises:
            anyio.ClosedResourceError: the doorbells have stopped.
        """
        if self._stopped:
            raise anyio.ClosedResourceError("the doorbells have stopped")
        bell = Bell(self, key, range_end, after_revision, no_delete)
        self._bells[bell] = None
        self._recreate(bell)
        return bell

    # running -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Carry every bell's watch on one stream until cancelled; then close every bell."""
        if self._running:
            raise RuntimeError("Doorbells.run() runs once")
        self._running = True
        delay = _FIRST_DELAY
        try:
            while True:
                began = time.monotonic()
                if await self._stream_once() and time.monotonic() - began > _MAX_DELAY:
                    delay = _FIRST_DELAY
                await anyio.sleep(delay * (0.5 + random.random()))  # jitter: no herds
                delay = min(delay * 2, _MAX_DELAY)
        finally:
            self._stopped = True
            self.connected = False
            bells, self._bells = list(self._bells), {}
            for bell in bells:
                bell._closed = True
                bell._wake()

    async def _stream_once(self) -> bool:
        """Run one stream until it breaks; whether it delivered anything."""
        stream = self._transport.open_watch()
        self._by_id, self._cancels, self._to_create = {}, [], dict.fromkeys(self._bells)
        for bell in self._bells:
            bell._id, bell._created = 0, False
        error: EtcdError | None = None
        try:
            async with anyio.create_task_group() as tg:
                conn = self._conn = _Conn(stream, tg)
                tg.start_soon(self._writer, conn)
                tg.start_soon(self._watchdog, conn)
                try:
                    await self._reader(conn)
                except EtcdError as exc:
                    error = exc
                tg.cancel_scope.cancel()
        finally:
            self._conn = None
            self.connected = False
            stream.close()
        self.reconnects += 1
        log.info("doorbell stream broke (%s); reconnecting %d watches", error, len(self._bells))
        return conn.answered

    async def _writer(self, conn: _Conn) -> None:
        """Send the creates, cancels and progress requests, one at a time, never waiting."""
        stream = conn.stream
        try:
            while True:
                await conn.work.wait()
                conn.work = anyio.Event()
                while self._cancels:
                    await stream.cancel(self._cancels.pop())
                while self._to_create:
                    bell = next(iter(self._to_create))
                    del self._to_create[bell]
                    self._next_id += 1
                    bell._id, bell._seq, bell._created = self._next_id, conn.sent, False
                    self._by_id[bell._id] = bell
                    conn.creating.append(bell._id)
                    conn.sent += 1
                    start = 0 if bell._from_now else bell._revision + 1  # 0: after the current
                    await stream.create(
                        bell.key, bell.range_end, start, watch_id=bell._id, no_delete=bell.no_delete
                    )
                if conn.want_progress:
                    conn.want_progress = False
                    if conn.asked is None:
                        conn.asked = conn.sent
                    conn.sent += 1
                    await stream.request_progress()
        except EtcdError as exc:
            log.info("doorbell stream: write failed (%s)", exc)
            stream.close()  # the reader sees the broken stream

    async def _watchdog(self, conn: _Conn) -> None:
        """Ask a silent stream for progress; close it when that brings nothing either."""
        silence = self._silence
        asked_at: float | None = None
        while True:
            now = time.monotonic()
            if not (self._by_id or self._to_create):
                # nothing watched, nothing to lose (and etcd >= 3.5.8 answers nothing then)
                conn.last = now
            if asked_at is not None and conn.last > asked_at:
                asked_at = None
            if asked_at is None:
                due = conn.last + silence
                if now >= due:
                    asked_at, due = now, now + silence
                    conn.want_progress = True
                    conn.work.set()
            else:
                due = asked_at + silence
                if now >= due:
                    self.silences += 1
                    log.warning("doorbell stream silent for %.1fs; replacing it", now - conn.last)
                    conn.stream.close()  # the reader sees the broken stream
                    return
            await anyio.sleep(due - now)

    async def _reader(self, conn: _Conn) -> None:
        while True:
            resp = await conn.stream.read()
            conn.last = time.monotonic()
            conn.answered = True
            if resp.created:
                await self._on_created(conn, resp)
                continue
            bell = self._by_id.get(resp.watch_id)
            if resp.canceled:
                if bell is not None:  # else: a closed bell's cancel was confirmed
                    await self._on_canceled(conn, bell, resp)
            elif resp.events:
                if bell is not None:
                    bell._deliver(resp.events)
            elif resp.watch_id == -1:
                self._on_stream_progress(conn, resp.revision)
            elif bell is not None and bell._created:
                bell._advance(resp.revision)  # its own progress: sent once it caught up

    async def _on_created(self, conn: _Conn, resp: WatchResponse) -> None:
        wid = conn.creating.popleft() if conn.creating else resp.watch_id
        if resp.watch_id not in (wid, -1):
            log.error("etcd gave watch %d the id %d: etcd >= 3.4 is needed", wid, resp.watch_id)
        bell = self._by_id.get(wid)
        if bell is None:
            return  # closed since; its cancel is on the way
        if resp.canceled:  # refused outright (etcd answers -1 as the id)
            return await self._on_canceled(conn, bell, resp)
        bell._created, bell._auth_refusals = True, 0
        self.connected = True
        if not bell._ready.is_set():
            bell.created_revision = resp.revision
            if bell._revision < 0:  # from now: nothing before the creation is delivered
                bell._advance(resp.revision)
            bell._ready.set()
        if bell._from_now:
            bell._from_now = False
            bell._ring(resp.revision)  # the watch delivers what follows the header revision

    async def _on_canceled(self, conn: _Conn, bell: Bell, resp: WatchResponse) -> None:
        self._by_id.pop(bell._id, None)
        bell._id, bell._created = 0, False
        reason = resp.cancel_reason or "no reason given"
        if resp.compact_revision:
            log.debug("%r: revision %d compacted; watching from now", bell, bell._revision + 1)
            bell._from_now = True
            self._recreate(bell)
        elif "permission denied" in reason or "auth" in reason:
            bell._auth_refusals += 1  # the stream's token may be stale: log in again
            try:
                again = await log_in_again(self._transport, bell._auth_refusals)
            except AuthError as exc:
                return self._fail(bell, exc)
            except EtcdError:
                bell._auth_refusals -= 1
                raise
            if not again:
                return self._fail(bell, AuthError(f"watch refused: {reason}", details=reason))
            raise EtcdUnavailableError("watch: reconnecting after a new login")
        else:
            log.warning("%r cancelled by etcd (%s); re-creating it", bell, reason)
            conn.tg.start_soon(self._recreate_later, bell, bell._delay)
            bell._delay = min(bell._delay * 2, _MAX_DELAY)

    def _on_stream_progress(self, conn: _Conn, revision: int) -> None:
        asked, conn.asked = conn.asked, None
        if asked is None or not self._trust:
            return  # only proves the stream alive
        for bell in self._by_id.values():
            if bell._created and bell._seq < asked:
                bell._advance(revision)

    # bookkeeping -----------------------------------------------------------------------------
    def _wake_writer(self) -> None:
        if self._conn is not None:
            self._conn.work.set()

    def _recreate(self, bell: Bell) -> None:
        if bell in self._bells and not bell._id:
            self._to_create[bell] = None
            self._wake_writer()

    async def _recreate_later(self, bell: Bell, delay: float) -> None:
        await anyio.sleep(delay * (0.5 + random.random()))
        self._recreate(bell)

    def _forget(self, bell: Bell) -> None:
        self._bells.pop(bell, None)
        self._to_create.pop(bell, None)
        if bell._id:
            self._by_id.pop(bell._id, None)
            self._cancels.append(bell._id)
            bell._id = 0
            self._wake_writer()

    def _fail(self, bell: Bell, error: AuthError) -> None:
        log.error("%r stopped: %s", bell, error)
        bell._error = error
        bell.close()
