"""Quota accounting: reservations queued in etcd, admitted by a rule that never goes back.

Each *pool* (a tenant resource such as ``gpu``, or one node's capacity of a resource) has a
queue ``/{ns}/_system/quotas/{tenant}/queue/{pool}/{reservation_id}`` of keys under their
holders' session leases, ordered by create revision. A reservation is **admitted** in a pool
when the amounts of the queue up to and including it fit the pool's limit; a reservation of
several pools is admitted when it is admitted in each. Appending keys never changes the sums
of the keys before them, and deleting keys only lowers them, so once admitted a reservation
stays admitted. A tenant's limits live beside its queues, at ``.../limits/{resource}``.

:class:`Quotas` is the public face of three parts, each with its guarantees:

* ``_core.admission``: the rule itself, pure (both judges apply it, crafted entries
  included);
* ``_coord.reservations``: the reserving protocol, one transaction that queues a reservation
  and decides it, then waits, under the session lease (admission, FIFO, bad input, crafted
  entries, lease loss);
* ``_coord.quota_view``: the process's watched view of the tenant's limits and queues (open
  while a reservation waits, or for good once usage is asked), the wake-ups of waiting
  reservations, and usage.

Guarantees:
    * :meth:`Quotas.set_limit` validates before it writes: a bad resource name or a
      negative or non-integer limit raises and writes nothing. A limit read back by
      :meth:`Quotas.get_limit` that is invalid is ``None``: no limit (nothing admitted).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core import codec as _codec
from .._core.admission import Pool
from .._core.amounts import check_limit
from .._core.errors import InvalidReservationError
from .._core.keys import validate_id
from .audit import AuditLog
from .quota_view import QuotaUsage, QuotaView
from .reservations import Reservation, Reserver
from .watch import WatchedView

if TYPE_CHECKING:
    from .._core.keys import Keyspace
    from .session import Session
    from .views import SharedViews

__all__ = ["QuotaUsage", "Quotas", "Reservation"]


class Quotas:
    """Quota limits and reservations of one tenant. Obtain it as ``cluster.quotas``."""

    def __init__(
        self,
        session: Session,
        keyspace: Keyspace,
        *,
        holder: str,
        views: SharedViews,
        node_view: WatchedView | None = None,
    ) -> None:
        """Quotas of ``keyspace``'s tenant, reserved under ``session``'s lease.

        Args:
            session: the session whose lease holds the reservations.
            keyspace: the tenant's key layout.
            holder: who reserves (the node id), written into each reservation.
            views: the process's shared views (``_coord.views``).
            node_view: the view of node announcements, for node capacity pools.
        """
        self._transport = session.transport
        self._ks = keyspace
        self._audit = AuditLog(self._transport, keyspace, actor=holder)
        self._quota_view = QuotaView(self._transport, keyspace, views=views, node_view=node_view)
        self._reserver = Reserver(session, keyspace, self._quota_view, holder=holder)

    # white-box (tests): the watched view once open, and the reservations waiting on it
    @property
    def _view(self) -> WatchedView | None:
        return self._quota_view.watched

    @property
    def _waiters(self) -> dict[int, tuple[list[Pool], anyio.Event]]:
        return self._quota_view.waiters

    # limits --------------------------------------------------------------------------------
    async def set_limit(self, resource: str, limit: int) -> None:
        """Set this tenant's limit of ``resource`` (an administrative write).

        With etcd access control, tenants can read but not write their limits. A ``limit``
        audit record follows, best effort (``audit.py``).

        Raises:
            InvalidReservationError: a negative or non-integer limit.
        """
        validate_id(resource, "resource")
        check_limit(limit, f"limit of {resource!r}", InvalidReservationError)
        await self._transport.put(
            self._ks.quota_limit(resource), _codec.encode({"limit": limit}, "limit", 1024)
        )
        await self._audit.note("limit", {"resource": resource, "limit": limit})

    async def get_limit(self, resource: str) -> int | None:
        """The tenant's limit of ``resource`` (a linearizable read), or ``None``."""
        kv = await self._transport.get(self._ks.quota_limit(resource))
        return None if kv is None else QuotaView.parse_limit(kv)

    # usage ---------------------------------------------------------------------------------
    def usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """A pool's usage from this process's view (no I/O).

        The view is open for good once :meth:`open_usage` or :meth:`watch_usage` ran;
        before that it is open only while a reservation of this process waits, and the
        usage of a pool is empty (``revision`` 0) while it is closed.
        """
        return self._quota_view.usage(resource, node=node)

    async def open_usage(self, resource: str, *, node: str | None = None) -> QuotaUsage:
        """Open the view (kept from now on), catch up with etcd, and return a pool's usage."""
        return await self._quota_view.open_usage(resource, node=node)

    @asynccontextmanager
    async def watch_usage(
        self, resource: str, *, node: str | None = None
    ) -> AsyncIterator[MemoryObjectReceiveStream[QuotaUsage]]:
        """Receive a pool's usage now and after every change."""
        async with self._quota_view.watch_usage(resource, node=node) as receive:
            yield receive

    # reserving -----------------------------------------------------------------------------
    def reserve(
        self, amounts: Mapping[str, int], *, node: str | None = None
    ) -> AbstractAsyncContextManager[Reservation]:
        """Wait until ``amounts`` are admitted; hold them for the block; release on exit.

        Use as ``async with quotas.reserve({"gpu": 1}) as reservation: ...``.

        Args:
            amounts: resource name to positive integer amount.
            node: reserve the node's announced capacity instead of tenant limits.

        Raises:
            InvalidReservationError: bad amounts, unknown resources, or an amount above
                the limit (nothing written).
            LeaseLostError: the session lease was lost (the reservation went with it).
        """
        return self._reserver.reserve(amounts, node, nowait=False)

    def reserve_nowait(
        self, amounts: Mapping[str, int], *, node: str | None = None
    ) -> AbstractAsyncContextManager[Reservation]:
        """Like :meth:`reserve`, but raise instead of waiting.

        Raises:
            QuotaExceededError: not admissible now (the queued keys were withdrawn).
        """
        return self._reserver.reserve(amounts, node, nowait=True)
