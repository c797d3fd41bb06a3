"""Keepalive renewal of a session's lease: hedged over the endpoints, expiry confirmed.

A :class:`Renewer` belongs to one :class:`~foundation_etcd._coord.session.Session` and
renews its current lease every ``keepalive_interval`` until the lease is lost; the session
owns the lease, its watchdog and its replacement. It logs to the session's logger
(``foundation_etcd.session``).

Guarantees:
    * **Hedged renewal.** A keepalive unanswered for :meth:`Renewer.hedge_delay` (also
      :meth:`Session.hedge_delay`) is joined by another on a fresh stream to the next
      endpoint (a channel pinned to it), round the endpoints, until one answers or the
      deadline passes: a member that hangs (paused, or forwarding to a raft leader that
      hangs) costs an attempt, not the lease. The time available is ``Config.retry_budget``
      (``ttl / 2`` with the default timings).
    * **Confirmed expiry.** A keepalive answered with TTL <= 0 ends the lease only when a
      second member (with one endpoint, a second stream) says so too: a member that has
      just resumed may not know leases granted while it was frozen.
    * **Deadline only forward.** An answer with TTL ``t`` to a keepalive sent at ``s`` moves
      the lease's safe deadline to ``s + t - step_down``, never back; an answer that comes
      after the deadline revives nothing: the lease is declared lost.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from .._core import metrics
from .._core.config import Config
from .._core.errors import EtcdError
from .._transport import KeepAliveStream, Transport

if TYPE_CHECKING:
    from .session import Lease

__all__ = ["Renewer"]

log = logging.getLogger("foundation_etcd.session")


class Renewer:
    """The keepalive side of a session: renews one lease at a time, counts the answers.

    Attributes:
        keepalives: keepalives answered with a positive TTL.
        failures: keepalive attempts that failed with an error.
        rtt: the round trip of the last answered keepalive, seconds (NaN before one).
    """

    def __init__(self, transport: Transport, config: Config) -> None:
        self.transport = transport
        self.config = config
        self.keepalives = 0
        self.failures = 0
        self.rtt = math.nan
        self._member = random.randrange(max(1, transport.member_count))
        self._idle: tuple[int, KeepAliveStream] | None = None

    def hedge_delay(self) -> float:
        """Seconds a keepalive may go unanswered before another is sent to another member.

        What :meth:`Session.hedge_delay` reports: at most a sixth of the retry budget (six
        attempts fit before the safe deadline), at least 0.25 s or four round trips (a slow
        but healthy etcd is not flooded).
        """
        cfg = self.config
        budget = cfg.retry_budget
        rtt = self.rtt if math.isfinite(self.rtt) else 0.0
        return max(0.02, min(budget / 6, max(0.25, 4 * rtt)))

    async def run(self, lease: Lease) -> None:
        """Renew ``lease`` every ``keepalive_interval`` until it is lost."""
        interval = self.config.safe_keepalive_interval
        try:
            while not lease.lost:
                started = anyio.current_time()
                await self._renew_once(lease)
                await anyio.sleep_until(started + interval)
        finally:
            if self._idle is not None:
                self._idle[1].close()
                self._idle = None

    def _open_stream(self, member: int) -> KeepAliveStream:
        if self.transport.member_count > 1:
            return self.transport.open_keepalive(member)
        return self.transport.open_keepalive()

    async def _renew_once(self, lease: Lease) -> None:
        """One keepalive round: return once etcd has renewed ``lease`` or it is lost.

        The first keepalive goes on the open stream of the member that answered last,
        directly (no task group: this is every round while etcd is healthy). If it fails,
        says "gone", or stays unanswered for :meth:`hedge_delay` (a member may hang:
        frozen, or forwarding to a frozen raft leader), that stream is closed and the round
        goes on hedged (:meth:`_hedged`): a keepalive on a fresh stream to the next
        endpoint, joined by another every hedge delay round the endpoints, those still
        pending kept; the first answer wins. A TTL <= 0 answer (the lease is gone) is
        believed only when a second member (or, with one endpoint, a second stream) says so
        too: a member that has just resumed may not know leases granted while it was
        frozen. The watchdog still fires
        *lost* at the safe deadline if no answer comes.
        """
        gone: set[int] = set()  # members (or attempts, with one endpoint) that said "gone"
        idle, self._idle = self._idle, None
        if idle is not None:
            # the common round, without the hedging machinery: the open stream of the member
            # that answered last, given one hedge delay (then it is hedged like any other)
            member, stream = idle
            sent = anyio.current_time()
            with anyio.move_on_after(self.hedge_delay()):
                try:
                    ttl = await stream.keepalive(lease.id)
                except EtcdError as exc:
                    self.failures += 1
                    log.info(
                        "keepalive of lease %x via member %d failed: %r", lease.id, member, exc
                    )
                else:
                    if ttl > 0:
                        if self._accept(lease, member, stream, sent, ttl):
                            return
                        stream.close()
                        return
                    gone.add(member)
                    log.info("member %d says lease %x is gone; asking another", member, lease.id)
            stream.close()  # failed, gone, or unanswered in time: a read cancelled midway
            self._member = (member + 1) % max(1, self.transport.member_count)
            if lease.lost:
                return
        await self._hedged(lease, gone)

    def _accept(
        self, lease: Lease, member: int, stream: KeepAliveStream, sent: float, ttl: int
    ) -> bool:
        """Take a positive answer: move the deadline, keep the stream; ``False`` if too late."""
        now = anyio.current_time()
        self.keepalives += 1
        self.rtt = now - sent
        metrics.keepalive(self.config.tenant, self.rtt, lease.deadline - now)
        lease.deadline = max(lease.deadline, sent + ttl - self.config.safe_step_down)
        if now >= lease.deadline:
            lease._fire("keepalive answered after the safe deadline")
            return False
        self._member = member
        self._idle = (member, stream)
        return True

    async def _hedged(self, lease: Lease, gone: set[int]) -> None:
        """Keepalives hedged round the endpoints until one renews ``lease`` or it is lost.

        ``gone`` holds the members that already said the lease is gone in this round.
        """
        members = self.transport.member_count
        wake = anyio.Event()
        done = anyio.Event()
        pending: list[anyio.CancelScope] = []
        limit = min(12, 3 * members)

        async def attempt(member: int, stream: KeepAliveStream, tag: int) -> None:
            scope = anyio.CancelScope()
            pending.append(scope)
            kept = False
            try:
                with scope:
                    sent = anyio.current_time()
                    log.debug(
                        "keepalive of lease %x via member %d (attempt %d)", lease.id, member, tag
                    )
                    try:
                        ttl = await stream.keepalive(lease.id)
                    except EtcdError as exc:
                        self.failures += 1
                        log.info(
                            "keepalive of lease %x via member %d failed: %r", lease.id, member, exc
                        )
                        return
                    if lease.lost or done.is_set():
                        return
                    if ttl > 0:
                        kept = self._accept(lease, member, stream, sent, ttl)
                        done.set()
                        return
                    gone.add(member if members > 1 else tag)
                    if len(gone) >= 2:
                        lease._fire("etcd reports the lease expired (confirmed by two members)")
                        done.set()
                    else:
                        log.info(
                            "member %d says lease %x is gone; asking another", member, lease.id
                        )
            finally:
                if scope in pending:
                    pending.remove(scope)
                if not kept:
                    stream.close()
                if not scope.cancel_called:  # one we gave up on starts no new attempt
                    wake.set()

        member = self._member
        async with anyio.create_task_group() as tg:
            stream = self._open_stream(member)
            tag = len(gone)
            tg.start_soon(attempt, member, stream, tag)
            last_start = anyio.current_time()
            while not done.is_set() and not lease.lost:
                hedge = self.hedge_delay()
                with anyio.move_on_after(hedge):
                    await wake.wait()
                if done.is_set() or lease.lost:
                    break
                wake = anyio.Event()
                # an attempt that failed at once (connection refused) is retried at once,
                # but never more often than this: no busy loop while etcd is down
                await anyio.sleep_until(last_start + min(0.1, hedge / 2))
                if done.is_set() or lease.lost:
                    break
                last_start = anyio.current_time()
                member = (member + 1) % members
                if members > 1 and member in gone and len(gone) < members:
                    member = (member + 1) % members
                while len(pending) >= limit:
                    pending.pop(0).cancel()  # the oldest: most likely stuck for good
                tag += 1
                tg.start_soon(attempt, member, self._open_stream(member), tag)
                await anyio.lowlevel.checkpoint()  # let it register before the next hedge
            tg.cancel_scope.cancel()
