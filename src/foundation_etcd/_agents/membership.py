"""Node membership: this process's node announcement and the watched view of every node.

Guarantees:
    * The node key ``nodes/{node_id}`` exists exactly while this process's session lease
      lives: written create-if-absent under the lease, so a node id is announced by one live
      process at a time (:class:`NodeExistsError` otherwise, after waiting up to one TTL
      plus 2 s for a crashed predecessor's key to expire). After a lease loss it is
      announced again under the new lease; deleted by another client while the lease
      lives, it is announced again at once (a warning says so).
    * A crashed process's node key goes with its lease, at one revision with its agents.
    * :meth:`Membership.nodes` and :meth:`Membership.node` read the watched view (no I/O):
      a state etcd had, at most one watch event behind. An announcement the library would
      not have written (unparsable, without a lease, naming another node than its key)
      is ignored, and invalid capacities are dropped: placement never counts on them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._coord.session import Lease, Session
from .._coord.waits import wait_deleted
from .._coord.watch import ChangeKind, ViewChange, WatchedView
from .._core.errors import EtcdError, LeaseNotFoundError, NodeExistsError
from .._core.keys import Keyspace
from .._core.kv import Compare, KeyValue, Op
from .._core.records import MAX_NODE_INFO_BYTES, NodeInfo, node_value, parse_node
from .._transport import Transport

__all__ = ["MAX_NODE_INFO_BYTES", "Membership", "NodeChange", "NodeInfo", "node_value"]

log = logging.getLogger("foundation_etcd.membership")


@dataclass(frozen=True, slots=True)
class NodeChange:
    """A node joined (``added``), re-announced (``updated``) or left (``removed``)."""

    kind: ChangeKind
    node: NodeInfo


class Membership:
    """This node's announcement and the view of every announced node.

    Args:
        transport: the connection.
        keyspace: the key layout.
        node_id: this node's id.
        value: this node's encoded announcement (:func:`node_value`).
        view: the watched view of ``keyspace.nodes_prefix()``.
        ttl: the session TTL: how long a crashed predecessor's key may outlive it.
    """

    def __init__(
        self,
        transport: Transport,
        keyspace: Keyspace,
        node_id: str,
        value: bytes,
        view: WatchedView,
        ttl: float,
    ) -> None:
        self._transport = transport
        self._ks = keyspace
        self._prefix = keyspace.nodes_prefix()
        self.node_id = node_id
        self._value = value
        self.view = view
        self._ttl = ttl

    async def announce(self, lease: Lease) -> int:
        """Announce this node under ``lease``; return the revision.

        Raises:
            NodeExistsError: another live lease still holds the node id after one TTL
                (plus 2 s).
        """
        key = self._ks.node(self.node_id)
        deadline = anyio.current_time() + self._ttl + 2
        say = log.warning  # once: an operator started a second process with a live id
        while True:
            lease.ensure_alive()
            res = await self._transport.txn(
                [Compare.create_revision(key) == 0],
                [Op.put(key, self._value, lease=lease.id)],
                [Op.get(key)],
            )
            if res.succeeded:
                return res.revision
            holder = res.range(0).first
            if holder is None:
                continue
            if holder.lease == lease.id:  # an earlier attempt's, applied without an answer
                return holder.mod_revision
            if anyio.current_time() >= deadline:
                raise NodeExistsError(self.node_id, lease_id=holder.lease)
            say(
                "node %r is announced under lease %x (another process, or this one's last "
                "run): waiting up to %.0f s for it to end",
                self.node_id,
                holder.lease,
                deadline - anyio.current_time(),
            )
            say = log.info
            with anyio.move_on_after(deadline - anyio.current_time()):
                await wait_deleted(self._transport, key, holder.mod_revision)

    async def reannounce(self, lease: Lease) -> None:
        """Announce again under a replacement lease (a session ``on_renewed`` hook).

        Tried again with backoff while the lease lives: a node left unannounced would look
        dead to failover and placement for as long as the process runs.
        """
        delay = 0.05
        while not lease.lost:
            try:
                await self.announce(lease)
                return
            except LeaseNotFoundError:
                return  # the lease ended: the session announces under its next one
            except EtcdError as exc:
                log.warning("node %r not announced again yet (%s); retrying", self.node_id, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def keep_announced(self, session: Session) -> None:
        """Announce again when another client deletes this node's key while its lease lives.

        Without it the node would look dead to failover and placement while it runs.
        """
        key = self._ks.node(self.node_id)

        def deleted(changes: list[ViewChange]) -> None:
            for c in changes:
                if c.kind is ChangeKind.REMOVED and c.key == key and not session.closed:
                    lease = session.lease
                    if c.kv.lease == lease.id and not lease.lost:
                        log.warning(
                            "node key %r deleted while its lease lives (another client, or "
                            "the lease is ending): announcing again",
                            key,
                        )
                        session.start_background(self.reannounce, lease)

        self.view.on_change(deleted)

    def nodes(self) -> dict[str, NodeInfo]:
        """Live nodes by id, from the watched view (no I/O)."""
        out = {}
        for kv in self.view.items().values():
            info = parse_node(kv, self._prefix)
            if info is not None:
                out[info.node_id] = info
        return out

    def node_kv(self, node_id: str) -> KeyValue | None:
        """The raw announcement key of a live node from the view, or ``None``."""
        return self.view.get(self._ks.node(node_id))

    def node(self, node_id: str) -> NodeInfo | None:
        """One live node from the view, or ``None``."""
        kv = self.node_kv(node_id)
        return None if kv is None else parse_node(kv, self._prefix)

    async def wait_for(self, revision: int) -> None:
        """Wait until the node view reflects ``revision``."""
        await self.view.wait_for(revision)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[MemoryObjectReceiveStream[list[NodeChange]]]:
        """Receive each batch of node changes after this call, in order."""

        def convert(c: ViewChange) -> NodeChange | None:
            info = parse_node(c.kv, self._prefix)
            return None if info is None else NodeChange(c.kind, info)

        async with self.view.subscribe_converted(convert) as changes:
            yield changes
