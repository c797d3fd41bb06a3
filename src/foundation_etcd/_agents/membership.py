"""Node membership: this process's node announcement and the watched view of every node.

Guarantees:
    * The node key ``nodes/{node_id}`` exists exactly while this process's session lease
      lives: written create-if-absent under the lease, so a node id is announced by one live
      process at a time (:class:`NodeExistsError` otherwise, after waiting up to one TTL
      plus 2 s for a crashed predecessor's key to expire). After a lease loss it is
      announced again under the new lease.
    * A crashed process's node key goes with its lease, at one revision with its agents.
    * :meth:`Membership.nodes` and :meth:`Membership.node` read the watched view (no I/O):
      a state etcd had, at most one watch event behind. An announcement the library would
      not have written (unparsable, invalid capacities) is ignored, or its invalid
      capacities dropped: placement never counts on them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._coord.session import Lease
from .._coord.waits import wait_deleted
from .._coord.watch import ChangeKind, ViewChange, WatchedView
from .._core import codec as _codec
from .._core.amounts import check_amounts, stored_capacity
from .._core.errors import NodeExistsError
from .._core.keys import Keyspace, validate_id
from .._core.kv import Compare, KeyValue, Op
from .._transport import Transport

__all__ = ["MAX_NODE_INFO_BYTES", "Membership", "NodeChange", "NodeInfo", "node_value"]

log = logging.getLogger("foundation_etcd.membership")

MAX_NODE_INFO_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as announced in etcd.

    Attributes:
        node_id: the node's id.
        capacity: resource name to integer amount the node offers.
        capabilities: what the node can host.
        address: where the node can be reached (free-form, optional).
        started_at: wall-clock time the process connected (seconds since the epoch).
        pid: the process id.
        hostname: the host name.
        hosts_agents: whether placement may put agents on it (``connect(hosts_agents=)``).
        lease_id: the session lease the node key lives under.
        revision: the revision of the announcement.
    """

    node_id: str
    capacity: Mapping[str, int]
    capabilities: frozenset[str]
    address: str
    started_at: float
    pid: int
    hostname: str
    hosts_agents: bool
    lease_id: int
    revision: int


@dataclass(frozen=True, slots=True)
class NodeChange:
    """A node joined (``added``), re-announced (``updated``) or left (``removed``)."""

    kind: ChangeKind
    node: NodeInfo


def node_value(
    node_id: str,
    capacity: Mapping[str, int],
    capabilities: Iterable[str],
    address: str,
    hosts_agents: bool,
) -> bytes:
    """Encode a node announcement, validating it first (nothing is sent).

    Raises:
        InvalidIdError: a bad capability or resource name.
        ValueError: a bad capacity.
        RequestTooLargeError: over :data:`MAX_NODE_INFO_BYTES`.
    """
    caps = sorted({validate_id(c, "capability") for c in capabilities})
    cap_map = check_amounts(capacity, "capacity", minimum=0)
    return _codec.encode(
        {
            "node_id": node_id,
            "capacity": cap_map,
            "capabilities": caps,
            "address": address,
            "started_at": time.time(),
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "hosts": hosts_agents,
        },
        "node info",
        MAX_NODE_INFO_BYTES,
    )


def parse_node(kv: KeyValue) -> NodeInfo | None:
    """Decode an announcement; ``None`` (and a warning) when the library never writes it."""
    try:
        d = _codec.decode(kv.value)
        return NodeInfo(
            node_id=str(d["node_id"]),
            # a capacity the library would not write (negative, fractional, huge) is no
            # capacity: placement never counts on it
            capacity={
                str(k): c
                for k, v in d.get("capacity", {}).items()
                if (c := stored_capacity(v)) is not None
            },
            capabilities=frozenset(d.get("capabilities", ())),
            address=str(d.get("address", "")),
            started_at=float(d.get("started_at", 0.0)),
            pid=int(d.get("pid", 0)),
            hostname=str(d.get("hostname", "")),
            hosts_agents=bool(d.get("hosts", True)),
            lease_id=kv.lease,
            revision=kv.mod_revision,
        )
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        log.warning("ignoring malformed node announcement at %r", kv.key)
        return None


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
            if anyio.current_time() >= deadline:
                raise NodeExistsError(self.node_id, lease_id=holder.lease)
            log.info("node %r still announced by lease %x; waiting", self.node_id, holder.lease)
            with anyio.move_on_after(deadline - anyio.current_time()):
                await wait_deleted(self._transport, key, holder.mod_revision)

    async def reannounce(self, lease: Lease) -> None:
        """Announce again under a replacement lease (a session ``on_renewed`` hook)."""
        await self.announce(lease)

    def nodes(self) -> dict[str, NodeInfo]:
        """Live nodes by id, from the watched view (no I/O)."""
        out = {}
        for kv in self.view.items().values():
            info = parse_node(kv)
            if info is not None:
                out[info.node_id] = info
        return out

    def node_kv(self, node_id: str) -> KeyValue | None:
        """The raw announcement key of a live node from the view, or ``None``."""
        return self.view.get(self._ks.node(node_id))

    def node(self, node_id: str) -> NodeInfo | None:
        """One live node from the view, or ``None``."""
        kv = self.node_kv(node_id)
        return None if kv is None else parse_node(kv)

    async def wait_for(self, revision: int) -> None:
        """Wait until the node view reflects ``revision``."""
        await self.view.wait_for(revision)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[MemoryObjectReceiveStream[list[NodeChange]]]:
        """Receive each batch of node changes after this call, in order."""

        def convert(c: ViewChange) -> NodeChange | None:
            info = parse_node(c.kv)
            return None if info is None else NodeChange(c.kind, info)

        async with self.view.subscribe_converted(convert) as changes:
            yield changes
