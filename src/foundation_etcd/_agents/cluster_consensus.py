"""The consensus methods of :class:`Cluster`: shared state, transactions, counters, barriers.

Each returns a primitive of ``_coord`` bound to this cluster's connection, session and
shared views; the guarantees are in those modules (``shared_state``, ``stm``, ``counters``,
``barriers``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._coord.barriers import Barrier, DoubleBarrier
from .._coord.counters import ShardedCounter
from .._coord.ownership import Ownership
from .._coord.session import Session
from .._coord.shared_state import SharedState
from .._coord.stm import Isolation, TransactStatistics, Tx, transact
from .._core.keys import Keyspace
from .._transport import Transport

if TYPE_CHECKING:
    from .._coord.views import SharedViews

__all__ = ["ConsensusMethods"]

T = TypeVar("T")
R = TypeVar("R")


class ConsensusMethods:
    """Shared state, transactions, counters and barriers of a :class:`Cluster`."""

    transport: Transport
    keyspace: Keyspace
    session: Session
    transact_statistics: TransactStatistics

    if TYPE_CHECKING:  # provided by Cluster

        @property
        def views(self) -> SharedViews: ...

    def state(
        self,
        name: str,
        *,
        load: Callable[[Any], T] | None = None,
        dump: Callable[[T], Any] | None = None,
    ) -> SharedState[T]:
        """The named shared state ``name`` of this tenant (a JSON value; see ``SharedState``).

        Args:
            name: the state's name (an id).
            load: turns the stored JSON value into your type (``Settings(**v)``, ...).
            dump: turns your type into a JSON value (``dataclasses.asdict``, ...).

        Raises:
            InvalidIdError: a bad name.
        """
        return SharedState(
            self.transport, self.keyspace, name, views=self.views, load=load, dump=dump
        )

    async def transact(
        self,
        fn: Callable[[Tx], Awaitable[R]],
        *,
        isolation: Isolation = Isolation.SERIALIZABLE_SNAPSHOT,
        max_attempts: int = 64,
        fence: Ownership | None = None,
    ) -> R:
        """Run ``fn(tx)`` as one transaction over shared states (see ``stm.transact``).

        Raises:
            TransactionConflictError: every attempt conflicted; nothing was written.
            OwnershipLostError: the fence was lost; nothing was written.
            AmbiguousResultError: the commit got no answer; it may have been applied.
        """
        return await transact(
            self.transport,
            self.keyspace,
            fn,
            isolation=isolation,
            max_attempts=max_attempts,
            fence=fence,
            statistics=self.transact_statistics,
        )

    def counter(self, name: str, *, shards: int = 32) -> ShardedCounter:
        """The sharded counter ``name`` of this tenant (see ``ShardedCounter``).

        Args:
            name: the counter's name (an id).
            shards: how many keys adds spread over; at least the number of processes (or
                tasks) adding at once, so that they rarely meet on one shard.

        Raises:
            InvalidIdError: a bad name.
            ValueError: ``shards`` outside 1..1000.
        """
        return ShardedCounter(self.session, name, shards=shards, views=self.views)

    def barrier(self, name: str) -> Barrier:
        """The barrier ``name`` of this tenant: set, remove, wait (see ``Barrier``).

        Raises:
            InvalidIdError: a bad name.
        """
        return Barrier(self.session, name)

    def double_barrier(self, name: str, count: int) -> DoubleBarrier:
        """A participant of the double barrier ``name`` for rounds of ``count`` participants.

        Each call makes a new participant (see ``DoubleBarrier``).

        Raises:
            InvalidIdError: a bad name.
            ValueError: ``count`` outside 1..1000.
        """
        return DoubleBarrier(self.session, name, count)
