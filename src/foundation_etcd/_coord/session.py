"""Session: one etcd lease per process, kept alive on one stream, with a local safe deadline.

A :class:`Session` owns a sequence of :class:`Lease` objects, one at a time. Work that must
stop when the lease can no longer be proven alive runs inside :meth:`Lease.guard` (or
``async with session.bind()``), and is cancelled when the lease is lost.

Guarantees:
    * **Safe deadline.** After each keepalive acknowledged with TTL ``t``, the lease is known
      to live until at least ``send_time + t`` by etcd's clock rate; the session treats it as
      alive only until ``send_time + t - step_down``. At that local deadline, whether or not
      etcd can be reached, the lease is declared *lost* and every guarded scope is cancelled,
      ``step_down`` seconds before etcd could expire it (while the client's clock runs at
      least ``(ttl - step_down) / ttl`` as fast as etcd's: see docs/concepts/session.md).
    * **Renewal** (``_coord/keepalive.py``, whose docstring states these guarantees next to
      their code): a keepalive unanswered for :meth:`Session.hedge_delay` is **hedged** on
      a fresh stream to the next endpoint, within ``Config.retry_budget``, and a TTL <= 0
      answer ends the lease only when **confirmed** by a second member.
    * **Never revived.** A lost lease is never kept alive again: the session revokes it
      (best effort, so its keys vanish now rather than at expiry), grants a new lease, and
      calls the ``on_renewed`` hooks so that owners register their keys again.
    * **Timings** are checked by :class:`Config`: ``ttl > step_down + keepalive_interval``
      and ``step_down > 1.2 * keepalive_interval``.
    * **Refusals are named.** Opening a session raises etcd's refusal of the first lease at
      once (:class:`NoSpaceError` for the space alarm, :class:`AuthError`, ...); only
      unavailability is retried, until ``connect_timeout``, and the timeout names the last
      error. A replacement lease after a loss is retried with backoff whatever the error
      (logged at ERROR when etcd refused), so the session heals once the cause is fixed.
    * **Close** revokes the lease, shielded from cancellation and bounded by
      ``request_timeout``; guarded scopes are cancelled first.

What it cannot promise: a process whose event loop is blocked (or frozen by SIGSTOP) cannot
run its watchdog. :meth:`Lease.ensure_alive` checks the deadline synchronously, and writes
made as owner should be fenced (see the election module), so that a late writer is refused
by etcd itself.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._core import metrics
from .._core.background import background_tasks, cancel_scope, loop_time
from .._core.config import Config
from .._core.errors import (
    AmbiguousResultError,
    AuthError,
    EtcdError,
    EtcdServerError,
    EtcdUnavailableError,
    LeaseLostError,
    LeaseNotFoundError,
    SessionClosedError,
)
from .._transport import Transport
from .keepalive import Renewer

__all__ = ["Lease", "Session", "SessionStatistics", "open_session"]

log = logging.getLogger("foundation_etcd.session")

RenewHook = Callable[["Lease"], Awaitable[None]]
LostHook = Callable[["Lease"], None]


class Lease:
    """One lease of a session. Lost once, never revived.

    Attributes:
        id: the etcd lease id.
        ttl: the TTL etcd granted, seconds.
        generation: 1 for the session's first lease, then 2, 3, ... after each loss.
    """

    def __init__(self, lease_id: int, ttl: int, generation: int, deadline: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.generation = generation
        self.deadline = deadline
        self.lost_reason = ""
        self._is_lost = False  # read on every guarded request; the event is for waiters
        self._lost = anyio.Event()
        self._scopes: set[anyio.CancelScope] = set()
        self._lost_hooks: list[LostHook] = []

    def __repr__(self) -> str:
        state = f"lost: {self.lost_reason}" if self.lost else "alive"
        return f"<Lease {self.id:x} gen={self.generation} {state}>"

    @property
    def lost(self) -> bool:
        """Whether the lease has been declared lost."""
        return self._is_lost

    def remaining(self) -> float:
        """Seconds until the local safe deadline (negative once past it)."""
        return self.deadline - loop_time()

    def ensure_alive(self) -> None:
        """Raise unless the lease is alive and before its deadline (no I/O).

        Raises:
            LeaseLostError: the lease is lost or past its safe deadline (it is then marked
                lost, and its guarded scopes cancelled).
        """
        if not self.lost and loop_time() >= self.deadline:
            self._fire("safe deadline passed")
        if self.lost:
            raise LeaseLostError(self.id, self.lost_reason)

    async def wait_lost(self) -> str:
        """Wait until the lease is lost; return the reason."""
        await self._lost.wait()
        return self.lost_reason

    @contextmanager
    def guard(self, scope: anyio.CancelScope | None = None) -> Iterator[Lease]:
        """Run the body only while the lease is alive; cancel it when the lease is lost.

        Args:
            scope: the cancel scope to use (so that the caller can cancel the body for
                its own reasons too); a new one by default.

        Raises:
            LeaseLostError: on entry when already lost, or on exit when the body was
                cancelled because the lease was lost.
        """
        self.ensure_alive()
        scope = scope or cancel_scope()
        with scope:
            self._scopes.add(scope)
            try:
                yield self
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught and self.lost:
            raise LeaseLostError(self.id, self.lost_reason)

    def on_lost(self, hook: LostHook) -> None:
        """Call ``hook(lease)`` (synchronously) when this lease is lost."""
        if self.lost:
            hook(self)
        else:
            self._lost_hooks.append(hook)

    def _fire(self, reason: str) -> None:
        if self.lost:
            return
        self.lost_reason = reason
        self._is_lost = True
        self._lost.set()
        if reason == "session closed":  # its owner closed it: not news at -v
            log.debug("lease %x ended: %s", self.id, reason)
        else:
            log.warning("lease %x lost: %s", self.id, reason)
        for scope in list(self._scopes):
            scope.cancel()
        for hook in self._lost_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("lease-lost hook failed")


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """Counters of a session, for health checks and metrics."""

    lease_id: int
    generation: int
    keepalives: int
    keepalive_failures: int
    leases_lost: int
    last_keepalive_rtt: float
    deadline_in: float


class Session:
    """One lease per process, renewed on loss. Open with :func:`open_session`."""

    def __init__(self, transport: Transport, config: Config) -> None:
        self.transport = transport
        self.config = config
        self._lease: Lease | None = None
        self._changed = anyio.Event()
        self._closed = False
        self._renew_hooks: list[RenewHook] = []
        self._renewer = Renewer(transport, config)
        self._losses = 0
        self._tg: TaskGroup | None = None
        self._last_grant_error: BaseException | None = None

    # public --------------------------------------------------------------------------------
    @property
    def lease(self) -> Lease:
        """The current lease (possibly just lost while its successor is being granted).

        Raises:
            SessionClosedError: the session is closed.
        """
        if self._closed or self._lease is None:
            raise SessionClosedError("session is closed")
        return self._lease

    @property
    def closed(self) -> bool:
        """Whether the session has been closed."""
        return self._closed

    async def wait_lease(self) -> Lease:
        """Return a live lease, waiting while a lost one is being replaced.

        Raises:
            SessionClosedError: the session is closed.
        """
        while True:
            if self._closed:
                raise SessionClosedError("session is closed")
            lease = self._lease
            if lease is not None and not lease.lost:
                return lease
            await self._changed.wait()

    @asynccontextmanager
    async def bind(self) -> AsyncIterator[Lease]:
        """Run the body under the current live lease; cancel it when the lease is lost.

        Raises:
            LeaseLostError: when the body was cancelled because the lease was lost.
        """
        lease = await self.wait_lease()
        with lease.guard():
            yield lease

    def on_renewed(self, hook: RenewHook) -> Callable[[], None]:
        """Call ``await hook(new_lease)`` after every replacement lease is granted.

        Hooks run concurrently in the session's task group; an exception is logged and does
        not stop the session. Returns a function that removes the hook.
        """
        self._renew_hooks.append(hook)

        def remove() -> None:
            if hook in self._renew_hooks:
                self._renew_hooks.remove(hook)

        return remove

    def start_background(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the session's task group (ended when the session closes).

        For the library's own helper tasks, which must not raise: an exception is logged.
        """
        assert self._tg is not None, "the session is not open"

        async def run() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception("background task %r failed", fn)

        self._tg.start_soon(run)

    def statistics(self) -> SessionStatistics:
        """Counters for health and metrics."""
        lease = self._lease
        return SessionStatistics(
            lease_id=lease.id if lease else 0,
            generation=lease.generation if lease else 0,
            keepalives=self._renewer.keepalives,
            keepalive_failures=self._renewer.failures,
            leases_lost=self._losses,
            last_keepalive_rtt=self._renewer.rtt,
            deadline_in=lease.remaining() if lease else math.nan,
        )

    # running -------------------------------------------------------------------------------
    def _set_lease(self, lease: Lease | None) -> None:
        self._lease = lease
        self._changed.set()
        self._changed = anyio.Event()

    async def _grant(self, generation: int, *, first: bool = False) -> Lease:
        """Grant a new lease, retrying while etcd is unreachable (an orphan expires alone).

        Args:
            generation: the new lease's generation.
            first: the session's first lease: an error that etcd answered with (space
                alarm, permission denied, overload) is raised at once, since waiting cannot
                fix it. For a replacement lease it is logged and retried with backoff, so
                that the session recovers by itself once an operator has fixed the cause.
        """
        delay = 0.1
        while True:
            sent = anyio.current_time()
            try:
                # one attempt may hang on a member whose raft leader just died: bound it
                # well under connect_timeout so that the next attempt can succeed
                with anyio.fail_after(self._attempt_limit()):
                    grant = await self.transport.lease_grant(math.ceil(self.config.ttl))
            except (EtcdUnavailableError, AmbiguousResultError, TimeoutError) as exc:
                self._last_grant_error = exc
                why = exc if str(exc) else f"no answer within {self._attempt_limit():g} s"
                log.info("lease grant failed (%s); retrying in %.1fs", why, delay)
            except EtcdError as exc:
                if first:
                    raise
                self._last_grant_error = exc
                log.error("lease grant refused by etcd (%s); retrying in %.1fs", exc, delay)
            else:
                deadline = sent + grant.ttl - self.config.safe_step_down
                return Lease(grant.id, grant.ttl, generation, deadline)
            await anyio.sleep(delay * (0.5 + random.random()))  # jitter: no herds on restart
            delay = min(delay * 2, self.config.safe_keepalive_interval)

    async def _retire(self, lease: Lease) -> None:
        """Revoke a lost lease so its keys go now; retried until etcd answers."""
        delay = 0.1
        while True:
            try:
                with anyio.fail_after(self._attempt_limit()):
                    await self.transport.lease_revoke(lease.id)
                return
            except LeaseNotFoundError:
                return
            except (AuthError, EtcdServerError) as exc:
                log.error("cannot revoke lost lease %x: %s", lease.id, exc)
                return
            except (EtcdError, TimeoutError):
                await anyio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.config.safe_keepalive_interval)

    def _attempt_limit(self) -> float:
        """How long one grant or revoke attempt may take before it is tried again."""
        return max(0.5, min(self.config.request_timeout, self.config.safe_keepalive_interval))

    def hedge_delay(self) -> float:
        """Seconds a keepalive may go unanswered before another is sent to another member.

        At most a sixth of the retry budget (``ttl - step_down - keepalive_interval``), so
        that at least six attempts, spread over the endpoints, fit between a hung keepalive
        and the safe deadline; at least 0.25 s (or four round trips) so that a slow but
        healthy etcd is not flooded. Computed by the session's renewer (``keepalive.py``).
        """
        return self._renewer.hedge_delay()

    @staticmethod
    async def _watchdog(lease: Lease) -> None:
        while not lease.lost:
            left = lease.remaining()
            if left <= 0:
                lease._fire("safe deadline passed without a keepalive answer")
                return
            with anyio.move_on_after(left):
                await lease.wait_lost()

    async def _run_hooks(self, lease: Lease) -> None:
        async def call(hook: RenewHook) -> None:
            try:
                with lease.guard():
                    await hook(lease)
            except LeaseLostError:
                pass
            except Exception:
                log.exception("session renew hook %r failed", hook)

        async with anyio.create_task_group() as tg:
            for hook in list(self._renew_hooks):
                tg.start_soon(call, hook)

    async def _run(self, first: Lease) -> None:
        lease = first
        while True:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renewer.run, lease)
                tg.start_soon(self._watchdog, lease)
                if lease.generation > 1:
                    tg.start_soon(self._run_hooks, lease)
                await lease.wait_lost()
                tg.cancel_scope.cancel()
            self._losses += 1
            metrics.session_lost(self.config.tenant)
            await self._retire(lease)
            lease = await self._grant(lease.generation + 1)
            log.info("session renewed: lease %x (generation %d)", lease.id, lease.generation)
            self._set_lease(lease)
            metrics.lease_renewed(self.config.tenant)

    async def _close(self) -> None:
        lease = self._lease
        self._closed = True
        self._changed.set()
        if lease is None:
            return
        lease._fire("session closed")
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.request_timeout):
            try:
                await self.transport.lease_revoke(lease.id)
            except EtcdError as exc:
                log.info("revoke at close failed: %s", exc)


@asynccontextmanager
async def open_session(
    transport: Transport, config: Config | None = None
) -> AsyncIterator[Session]:
    """Grant a lease and keep it alive until the block exits, renewing it when lost.

    Args:
        transport: an open transport.
        config: the timings to use; the transport's configuration by default.

    Yields:
        The open session, holding a live lease.
    """
    session = Session(transport, config or transport.config)
    transport.prepare_members()
    try:
        with anyio.fail_after(session.config.connect_timeout):
            first = await session._grant(1, first=True)
    except TimeoutError:
        last = session._last_grant_error
        why = f": {last}" if last is not None else ""
        raise EtcdUnavailableError(
            f"no lease granted within {session.config.connect_timeout:g} s{why}"
        ) from last
    session._set_lease(first)
    async with background_tasks() as tg:
        session._tg = tg
        tg.start_soon(session._run, first)
        try:
            yield session
        finally:
            tg.cancel_scope.cancel()
            await session._close()
