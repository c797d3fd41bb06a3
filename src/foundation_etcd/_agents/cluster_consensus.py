"""The consensus methods of :class:`Cluster`: shared state, transactions, counters, barriers.

Each returns a primitive of ``_coord`` bound to this cluster's connection, session and
shared views; the guarantees are in those modules (``shared_state``, ``stm``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

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
