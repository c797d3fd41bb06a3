"""The double barrier's rounds: the round record, a participant's view, and its watch.

See :mod:`.barriers` for the protocol: these are its pieces, kept apart from the class that
runs it. Nothing here writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from .._core.codec import decode
from .._core.errors import BarrierError, EtcdError, EtcdServerError, EtcdUnavailableError
from .._core.keys import prefix_end
from .._core.kv import EventType, KeyValue
from .._transport import Transport, WatchStream
from .session import Lease

__all__ = ["Feed", "Round", "Seat", "View", "verdict_of"]

log = logging.getLogger("foundation_etcd.barriers")


@dataclass(frozen=True, slots=True)
class Round:
    """The round record: the latest round formed and its last member's create revision."""

    number: int = 0
    last: int = 0
    mod: int = 0  # the record's mod revision; 0 while it does not exist

    def encode(self) -> bytes:
        return json.dumps({"round": self.number, "last": self.last}).encode()

    @classmethod
    def of(cls, kv: KeyValue | None) -> Round:
        if kv is None:
            return cls()
        try:
            data = decode(kv.value)
            number, last = data["round"], data["last"]
            # ``last`` is the create revision of a key that existed when the record was
            # put: never at or after the record's own revision (a crafted one is refused)
            if all(type(x) is int and x >= 0 for x in (number, last)) and last < kv.mod_revision:
                return cls(number, last, kv.mod_revision)
        except (ValueError, TypeError, KeyError):
            pass
        raise BarrierError(f"unreadable round record at {kv.key!r}: {kv.value!r}")


@dataclass(slots=True)
class View:
    """The barrier as of ``revision``: the record and every participant key's create revision."""

    round: Round
    waiters: dict[bytes, int]
    revision: int

    @classmethod
    def of(cls, record: Round, kvs: list[KeyValue], revision: int) -> View:
        return cls(record, {kv.key: kv.create_revision for kv in kvs}, revision)


@dataclass(frozen=True, slots=True)
class Seat:
    """A participant let through ``enter``: its key, and its round's number and last member."""

    lease: Lease
    key: bytes
    created: int
    round: int
    last: int


def verdict_of(view: View, key: bytes, created: int, count: int) -> str:
    """What a waiting participant should do: ``gone``, ``member``, ``form`` or ``wait``."""
    if view.waiters.get(key) != created:
        return "gone"
    if created <= view.round.last:
        return "member"
    revisions = sorted(view.waiters.values())
    if revisions[0] <= view.round.last:  # the current round is still inside
        return "wait"
    if len(revisions) >= count and revisions[count - 1] == created:
        return "form"  # the count-th candidate forms the round
    return "wait"


_SILENCE = 5.0  # seconds without a watch event after which a waiter reads again


class Feed:
    """A watch of a barrier's prefix, opened before the read whose view it then updates.

    It starts at etcd's current revision: a watch that starts in the past is served by
    etcd's catch-up loop, up to 100 ms late, which would cost every wait that much.
    """

    def __init__(self, transport: Transport, prefix: bytes, record: bytes) -> None:
        self._transport, self._prefix, self._record = transport, prefix, record
        self._stream: WatchStream | None = None

    async def open(self) -> None:
        """(Re)open the watch; return once etcd has acknowledged it.

        Raises:
            EtcdUnavailableError: no acknowledgement within the request timeout (a paused
                member holds the stream open and answers nothing).
        """
        self.close()
        stream = self._stream = self._transport.open_watch()
        limit, resp = self._transport.config.request_timeout, None
        with anyio.move_on_after(limit):
            await stream.create(self._prefix, prefix_end(self._prefix), 0, progress_notify=False)
            while not (resp := await stream.read()).created:
                pass
        if resp is None or not resp.created:
            raise EtcdUnavailableError(f"watch on {self._prefix!r}: no answer within {limit:g} s")
        if resp.canceled:  # refused (permission denied, ...): waiting would never end
            raise EtcdServerError(f"watch on {self._prefix!r} refused: {resp.cancel_reason}")

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def follow(self, view: View, done: Callable[[View], bool]) -> None:
        """Apply changes after ``view.revision`` until ``done(view)`` or etcd cannot tell."""
        assert self._stream is not None
        try:
            while True:
                resp = None
                with anyio.move_on_after(_SILENCE):  # quiet that long: read again, to be sure
                    resp = await self._stream.read()
                if resp is None or resp.compact_revision or resp.canceled:
                    break
                for ev in resp.events:
                    if ev.revision <= view.revision:
                        continue  # already in the view's read
                    deleted = ev.type is EventType.DELETE
                    if ev.kv.key == self._record:
                        view.round = Round() if deleted else Round.of(ev.kv)
                    elif deleted:
                        view.waiters.pop(ev.kv.key, None)
                    else:
                        view.waiters[ev.kv.key] = ev.kv.create_revision
                    view.revision = ev.revision
                if resp.events and done(view):
                    return
        except EtcdError as exc:
            log.info("watch on %r broke (%s); reading again", self._prefix, exc)
            await anyio.sleep(0.1)
        await self.open()
