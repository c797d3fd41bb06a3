"""Leader election with fencing tokens.

::

    election = Election(session, "scheduler")
    async with election.campaign(value=b"node-1") as leadership:
        await leadership.put(key, value)        # refused by etcd once no longer leader
        leadership.fencing_token                # for systems outside etcd

Candidates queue under ``elections/{name}/`` (see the ownership module for the algorithm);
the leader is the candidate with the lowest create revision, and its create revision is the
fencing token.

Guarantees:
    * **One leader per revision**, tokens strictly increasing across successive leaders.
    * **One transaction** to become leader when nobody else campaigns.
    * **Guarded writes**: :meth:`Leadership.txn`, :meth:`~Leadership.put`,
      :meth:`~Leadership.delete` and :meth:`~Leadership.proclaim` carry the fencing compare;
      when it fails etcd writes nothing, :class:`LeadershipLostError` is raised and the
      leadership ends.
    * **On lease loss** (including a process paused past its deadline) the campaign aborts
      or the leader's body is cancelled and :class:`LeadershipLostError` raised, before etcd
      could expire the lease; the former leader's late writes are refused by etcd anyway.
    * **On partition** the leader's session steps down at its safe deadline; a candidate
      elsewhere becomes leader only after etcd expired the old lease, with a higher token.
    * **On cancellation** of a campaign or of the leader's body, the candidacy is deleted
      (shielded, bounded by ``request_timeout``); the next candidate takes over at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import ClassVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.background import background_tasks
from .._core.errors import LeadershipLostError, OwnershipLostError
from .._core.keys import validate_id
from .._core.kv import Op, to_bytes
from .ownership import OwnerInfo, Ownership, owned
from .session import Session
from .watch import open_view

__all__ = ["Election", "Leadership"]


@dataclass(frozen=True, slots=True, eq=False)
class Leadership(Ownership):
    """This process leads an election. See :class:`Ownership` for the fenced writes."""

    lost_error: ClassVar[type[OwnershipLostError]] = LeadershipLostError

    async def proclaim(self, value: bytes | str) -> int:
        """Change the value the leader announces, only while still leader.

        Raises:
            LeadershipLostError: no longer leader; nothing written.
        """
        return (
            await self.txn((), [Op.put(self.key, to_bytes(value), lease=self.lease_id)])
        ).revision


class Election:
    """A named election among processes of one namespace and tenant."""

    def __init__(self, session: Session, name: str) -> None:
        """Prepare an election; nothing is sent until :meth:`campaign`.

        Raises:
            InvalidIdError: a bad name.
        """
        self.name = validate_id(name, "election name")
        self._session = session
        self._prefix = session.config.keyspace.election_prefix(name)

    def campaign(self, value: bytes | str = b"") -> AbstractAsyncContextManager[Leadership]:
        """Wait to become leader; lead for the duration of the block; resign on exit.

        Bound the wait with ``anyio.fail_after``; a timed-out campaign leaves no candidacy.

        Raises:
            LeaseLostError: the session lease was lost while campaigning.
            LeadershipLostError: leadership ended while the body ran (body cancelled).
        """
        return owned(self._session, self.name, self._prefix, to_bytes(value), kind=Leadership)

    async def leader(self) -> OwnerInfo | None:
        """The current leader (a linearizable read), or ``None``."""
        res = await self._session.transport.range(
            Op.get(self._prefix, prefix=True, limit=1, sort_by_create=True)
        )
        return None if res.first is None else OwnerInfo.of(res.first)

    @asynccontextmanager
    async def observe(self) -> AsyncIterator[MemoryObjectReceiveStream[OwnerInfo | None]]:
        """Receive the leader now and after every change (new leader, proclaim, none)."""
        async with open_view(self._session.transport, self._prefix) as view:
            send, receive = anyio.create_memory_object_stream[OwnerInfo | None](16)

            def current() -> OwnerInfo | None:
                kvs = view.items().values()
                first = min(kvs, key=lambda kv: kv.create_revision, default=None)
                return None if first is None else OwnerInfo.of(first)

            async def pump() -> None:
                last = current()
                async with send, view.subscribe() as changes:
                    await send.send(last)
                    async for _ in changes:
                        now = current()
                        if now != last:
                            last = now
                            await send.send(now)

            async with background_tasks() as tg, receive:
                tg.start_soon(pump)
                yield receive
