"""Barriers: a flag to wait on, and a double barrier that lets rounds of ``count`` through.

::

    gate = Barrier(session, "deploy")
    await gate.set(hold=True)          # under the session lease: the setter's crash removes it
    await gate.wait()                  # elsewhere: returns once the barrier is not set
    await gate.remove()

    phase = DoubleBarrier(session, "phase", 5)
    async with phase.entered():        # enter: 5 participants of one round are in
        ...                            # leave: all 5 of that round are out again

A :class:`Barrier` is the key ``barriers/{name}``, present while set. A
:class:`DoubleBarrier` keeps under ``double-barriers/{name}/`` one key per participant,
``w/{lease_hex}-{tag}`` (session lease), and the **round record** ``round`` (no lease),
``{"round": k, "last": T}``: ``T`` is the create revision of round ``k``'s last member.

Rounds. Round ``k``'s members are the participant keys created at or before ``T``; later
keys are **candidates** for round ``k + 1``. It is formed by a compare-and-set of the record
(its mod revision unchanged), made by the ``count``-th candidate by create revision once a
linearizable read at revision ``R`` saw no member of round ``k`` left and at least
``count`` candidates; its ``T`` is that candidate's create revision. No key can appear
later with a create revision at most ``T`` (new keys get revisions above ``R``), and round
``k``'s keys were gone at ``R``: from then on the keys at most ``T`` are exactly round
``k + 1``'s remaining members, and all others are candidates for round ``k + 2``. So a
participant that left round ``k`` and enters again at once (a new key, a higher revision)
can neither count toward round ``k`` nor be let through by its record; rounds never overlap.

Guarantees:
    * **Barrier**: ``set`` is one transaction (create if absent); ``wait`` returns only when
      a linearizable read finds the key absent (a watch only says when to read again);
      ``remove`` deletes only the setting it read (compared on its create revision), so a
      removal applied late never lifts a later setting.
    * **No early pass.** ``enter`` returns only after a read (or its own successful
      compare-and-set) shows its key among the members of a formed round: ``count`` keys of
      that round existed at the read that formed it. ``leave`` returns only after a read
      shows no key of its round left (each member left, or its lease expired). Watched
      events only say when to read again, never when to return.
    * **Late joiners.** Beyond ``count``, the first ``count`` candidates by create revision
      form the round; the others wait for the next, formed once the current one has left.
    * **Cancellation.** A cancelled or failed ``enter`` deletes its key in a transaction
      that also rewrites the record, so that a formation which had read the key fails its
      compare and reads again: a withdrawn participant never counts. If its round had
      formed already, it counted, and the deletion is its leave.
    * **Lease loss and crashes.** Keys live under the session lease: a crashed
      participant's key goes when its lease expires, which releases a ``leave`` or frees
      its place in ``enter``. A participant whose lease is lost (or key deleted) while it
      waits, or before it leaves, raises :class:`LeaseLostError`, never returns as if
      passed; one whose lease expires after the read that formed its round still counted.
    * **Cost.** A read returns every participant key: ``count`` is at most 1,000.
    * :class:`BarrierError` for misuse: ``leave`` without ``enter``, ``enter`` twice, two
      tasks in one participant at once, or a round record the library did not write.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .._core.background import cleanup_scope
from .._core.errors import (
    BarrierError,
    EtcdError,
    LeaseLostError,
)
from .._core.keys import validate_id
from .._core.kv import AnyOp, Compare, Op, TxnResult
from .barrier_rounds import Feed, Round, Seat, View, verdict_of
from .session import Lease, Session
from .waits import wait_deleted

__all__ = ["MAX_PARTICIPANTS", "Barrier", "DoubleBarrier"]

log = logging.getLogger("foundation_etcd.barriers")
MAX_PARTICIPANTS = 1000  # every read returns every participant key


class Barrier:
    """A named flag: processes :meth:`wait` while it is set."""

    def __init__(self, session: Session, name: str) -> None:
        """Prepare a barrier; nothing is sent until a method is called.

        Raises:
            InvalidIdError: a bad name.
        """
        self.name: str = validate_id(name, "barrier name")
        self.key: bytes = session.config.keyspace.barrier(name)
        self._session = session

    async def set(self, *, hold: bool = False) -> bool:
        """Set the barrier if it is not set (one transaction); return whether this call did.

        Args:
            hold: put the key under the session lease, so that it is removed when this
                process crashes, closes its session or loses its lease (it is not set again
                under a later lease). By default it stays until :meth:`remove`.

        Raises:
            SessionClosedError: with ``hold``, the session is closed.
        """
        lease_id = (await self._session.wait_lease()).id if hold else 0
        res = await self._session.transport.txn(
            [Compare.create_revision(self.key) == 0], [Op.put(self.key, b"", lease=lease_id)]
        )
        return res.succeeded

    async def remove(self) -> bool:
        """Remove the setting of the barrier found now; return whether this call removed it.

        Two requests: a read of the setting, then its deletion compared on its create
        revision. A removal applied late (after its caller stopped waiting, once the
        barrier was removed and set again) so deletes nothing of the later setting.
        ``False`` also when another process removed it between the two.
        """
        transport = self._session.transport
        found = (await transport.range(Op.get(self.key, keys_only=True))).first
        if found is None:
            return False
        mine = Compare.create_revision(self.key) == found.create_revision
        return (await transport.txn([mine], [Op.delete(self.key)])).succeeded

    async def is_set(self) -> bool:
        """Whether the barrier is set (a linearizable read)."""
        return await self._session.transport.get(self.key) is not None

    async def wait(self) -> None:
        """Return once a linearizable read finds the barrier not set (re-read on each wake-up)."""
        transport = self._session.transport
        while True:
            res = await transport.range(Op.get(self.key, keys_only=True))
            if res.first is None:
                return
            await wait_deleted(transport, self.key, res.revision)


class DoubleBarrier:
    """A barrier that lets rounds of ``count`` participants enter together and leave together.

    One object is one participant: enter, leave, enter again. Several objects (in one
    process or many, on one session or several) are several participants.
    """

    def __init__(self, session: Session, name: str, count: int) -> None:
        """Prepare a participant; nothing is sent until :meth:`enter`.

        Raises:
            InvalidIdError: a bad name.
            ValueError: ``count`` is not an int from 1 to :data:`MAX_PARTICIPANTS`.
        """
        self.name: str = validate_id(name, "barrier name")
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"count must be an int, not {type(count).__name__}")
        if not 1 <= count <= MAX_PARTICIPANTS:
            raise ValueError(f"count must be 1-{MAX_PARTICIPANTS}, not {count}")
        self.count: int = count
        self._session = session
        self._prefix = session.config.keyspace.double_barrier_prefix(name)
        self._record = self._prefix + b"round"
        self._waiters = self._prefix + b"w/"
        self._tag = secrets.token_hex(4)
        self._seat: Seat | None = None
        self._busy = False

    @property
    def round(self) -> int | None:
        """The number of the round this participant is in (1, 2, ...), or ``None``."""
        return None if self._seat is None else self._seat.round

    @property
    def key(self) -> bytes | None:
        """This participant's key while it is in a round, or ``None``."""
        return None if self._seat is None else self._seat.key

    def _claim(self, *, entering: bool) -> Seat | None:
        if self._busy:
            raise BarrierError(f"double barrier {self.name!r}: another task is in enter/leave")
        if entering == (self._seat is not None):
            what = "enter() twice without leave()" if entering else "leave() without enter()"
            raise BarrierError(f"double barrier {self.name!r}: {what}")
        self._busy = True
        return self._seat

    async def enter(self) -> None:
        """Wait until ``count`` participants of one round, this one included, have entered.

        Bound it with ``anyio.fail_after``: a timeout or cancellation deletes this
        participant's key, so it does not count, and propagates.

        Raises:
            LeaseLostError: the session lease was lost (or the key deleted) while waiting.
            BarrierError: this participant is already in a round, or busy in another task.
        """
        self._claim(entering=True)
        try:
            lease = await self._session.wait_lease()
            key = self._waiters + f"{lease.id:x}-{self._tag}".encode()
            with lease.guard():
                self._seat = await self._enter(lease, key)
        finally:
            self._busy = False

    async def leave(self) -> None:
        """Delete this participant's key, then wait until every member of its round has left.

        A cancelled ``leave`` has still left (its key is deleted, shielded); one that
        raised an :class:`EtcdError` with the key still present may be called again.

        Raises:
            LeaseLostError: the session lease was lost before or while waiting.
            BarrierError: this participant is not in a round, or busy in another task.
        """
        seat = self._claim(entering=False)
        assert seat is not None
        try:
            with seat.lease.guard():
                await self._leave(seat)
        except LeaseLostError:
            self._seat = None  # the key goes with the lease
            raise
        finally:
            self._busy = False

    @asynccontextmanager
    async def entered(self) -> AsyncIterator[DoubleBarrier]:
        """Enter, run the block, leave. A block that raises does not wait: it withdraws.

        Raises:
            LeaseLostError: the session lease was lost while entering or leaving.
        """
        await self.enter()
        try:
            yield self
        except BaseException:
            if self._seat is not None and await self._withdraw(self._seat.key):
                self._seat = None
            raise
        await self.leave()

    def _reads(self) -> list[AnyOp]:
        return [Op.get(self._record), Op.get(self._waiters, prefix=True, keys_only=True)]

    @staticmethod
    def _view(res: TxnResult, at: int) -> View:
        return View.of(Round.of(res.range(at).first), res.range(at + 1).kvs, res.revision)

    async def _enter(self, lease: Lease, key: bytes) -> Seat:
        transport = self._session.transport
        feed = Feed(transport, self._prefix, self._record)
        try:
            await feed.open()
            lease.ensure_alive()
            create = ([Compare.create_revision(key) == 0], [Op.put(key, b"", lease=lease.id)])
            res = await transport.txn(create[0], [*create[1], *self._reads()])
            if not res.succeeded and await self._withdraw(key):  # left by a failed withdraw
                res = await transport.txn(create[0], [*create[1], *self._reads()])
            if not res.succeeded:
                raise BarrierError(f"double barrier {self.name!r}: key {key!r} already present")
            created = res.revision
            view = self._view(res, 1)
            while True:
                verdict = verdict_of(view, key, created, self.count)
                if verdict == "gone":
                    raise LeaseLostError(lease.id, "own key deleted while waiting to enter")
                if verdict == "member":
                    return Seat(lease, key, created, view.round.number, view.round.last)
                if verdict == "form":
                    formed = Round(view.round.number + 1, created)
                    lease.ensure_alive()
                    res = await transport.txn(
                        [
                            Compare.mod_revision(self._record) == view.round.mod,
                            Compare.create_revision(key) == created,
                        ],
                        [Op.put(self._record, formed.encode())],
                        self._reads(),
                    )
                    if res.succeeded:
                        return Seat(lease, key, created, formed.number, created)
                    view = self._view(res, 0)
                    continue
                await feed.follow(view, lambda v: verdict_of(v, key, created, self.count) != "wait")
                view = self._view(await transport.txn([], self._reads()), 0)
        except BaseException:
            await self._withdraw(key)
            raise
        finally:
            feed.close()

    async def _leave(self, seat: Seat) -> None:
        transport = self._session.transport
        members = Op.get(self._waiters, prefix=True, keys_only=True, max_create_revision=seat.last)
        feed = Feed(transport, self._prefix, self._record)
        try:
            try:
                await feed.open()
                res = await transport.txn(
                    [Compare.create_revision(seat.key) == seat.created],
                    [Op.delete(seat.key), members],
                    [members],
                )
            except BaseException:
                if await self._withdraw(seat.key):
                    self._seat = None  # left all the same
                raise
            self._seat = None
            if not res.succeeded:
                raise LeaseLostError(seat.lease.id, "own key deleted while inside the barrier")
            view = View.of(Round(), res.range(1).kvs, res.revision)
            while view.waiters:
                await feed.follow(
                    view, lambda v: min(v.waiters.values(), default=seat.last + 1) > seat.last
                )
                got = await transport.range(members)
                view = View.of(Round(), got.kvs, got.revision)
        finally:
            feed.close()

    async def _withdraw(self, key: bytes) -> bool:
        """Delete the own key after a failed enter, leave or block; shielded. True: it is gone."""
        transport = self._session.transport
        error: Exception | None = None
        with cleanup_scope(self._session.config.request_timeout):
            try:
                for _ in range(10):
                    res = await transport.txn([], [Op.get(self._record), Op.get(key)])
                    own = res.range(1).first
                    if own is None:
                        return True
                    mine = [Compare.create_revision(key) == own.create_revision]
                    try:
                        current = Round.of(res.range(0).first)
                    except BarrierError:  # a record the library never wrote: no count to keep
                        await transport.txn(mine, [Op.delete(key)])
                        return True
                    if own.create_revision <= current.last:  # counted: this is its leave
                        await transport.txn(mine, [Op.delete(key)])
                        return True
                    res = await transport.txn(  # see Cancellation in the module docstring
                        [Compare.mod_revision(self._record) == current.mod, *mine],
                        [Op.delete(key), Op.put(self._record, current.encode())],
                    )
                    if res.succeeded:
                        return True
            except (EtcdError, BarrierError) as exc:
                error = exc
        log.warning("could not delete %r (%s); it goes with its lease", key, error or "timeout")
        return False
