"""Cordon, uncordon and drain: taking a node out of placement, and moving its agents off.

Keys (no lease: they outlive every process)::

    nodes-cordon/{node}         {"by", "at"}: the node takes no new placements
    audit/records/{seq}         a ``drain`` record once a drain is done (best effort)

Guarantees:
    * **A cordon is obeyed everywhere at once.** :meth:`Drain.cordon` creates the cordon key
      (create-only); every placement transaction compares that it is absent
      (``Scheduler.commit``), so once ``cordon`` has returned no scheduler in any process
      can place an agent on the node, whatever its views had seen; the agents already there
      keep running. :meth:`Drain.uncordon` deletes it, compared on its create revision: an
      uncordon applied late (after its caller stopped waiting, once the node was uncordoned
      and cordoned again) deletes nothing of the later cordon.
    * **Drain cordons first**, then moves the agents, so nothing lands on the node while it
      is being drained. Each move is one placement transaction that also compares the
      agent's assignment unchanged and frees its reservation on the drained node; an agent
      moved or removed meanwhile is skipped. The node stays cordoned afterwards, also when a
      move fails.
    * An unknown node (not announced, not cordoned, named by no assignment) raises
      ``NodeNotFoundError`` and writes nothing.

On lease loss: nothing here is under a lease. The cordon key survives the process that wrote
it, and of the node it names: a cordoned node that restarts stays cordoned. A drain does
not depend on this process's session; it needs only the transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._core.errors import NodeNotFoundError
from .._core.keys import validate_id
from .._core.kv import Compare, KeyValue, Op
from .._core.placement import strategy_named
from .._core.records import AgentSpec, AssignmentStatus, decode_assignment, encode_cordon
from .scheduler import ConditionFailed

if TYPE_CHECKING:
    from .._coord.session import Session
    from .._core.keys import Keyspace
    from .scheduler import Scheduler

__all__ = ["Drain"]

# the scheduler's decisions, under the logger name they have always had
log = logging.getLogger("foundation_etcd.scheduler")


class Drain:
    """Cordon, uncordon and drain of nodes for one cluster. Use through :class:`Cluster`."""

    def __init__(
        self, session: Session, keyspace: Keyspace, node_id: str, *, scheduler: Scheduler
    ) -> None:
        """Cordons and drains for ``keyspace``, acting as ``node_id``.

        Args:
            session: this process's session (its transport).
            keyspace: the key layout.
            node_id: this node's id (recorded as who cordoned).
            scheduler: the views, the cordon keys and the placement commit.
        """
        self._transport = session.transport
        self._ks = keyspace
        self._node_id = node_id
        self._scheduler = scheduler

    async def _node_state(self, node_id: str) -> tuple[KeyValue | None, int]:
        """The cordon key of ``node_id`` (``None``: not cordoned), and the revision read at.

        Raises:
            NodeNotFoundError: the node is neither announced, nor cordoned, nor named by
                any assignment.
        """
        res = await self._transport.txn(
            [], [Op.get(self._ks.node(node_id)), Op.get(self._scheduler.cordon_key(node_id))]
        )
        live = res.range(0).first is not None
        cordon = res.range(1).first
        if not live and cordon is None:
            _, assign_view, _ = await self._scheduler.views()
            await assign_view.wait_for(res.revision)
            if not any(decode_assignment(kv)[0] == node_id for kv in assign_view.items().values()):
                raise NodeNotFoundError(
                    node_id,
                    f"node {node_id!r} is unknown: not announced, not cordoned, "
                    "and no agent is assigned to it",
                )
        return cordon, res.revision

    async def _cordon(self, node_id: str) -> tuple[bool, int]:
        await self._node_state(node_id)
        key = self._scheduler.cordon_key(node_id)
        value = encode_cordon(self._node_id)
        res = await self._transport.txn([Compare.create_revision(key) == 0], [Op.put(key, value)])
        if res.succeeded:
            log.info("node %s cordoned (rev %d)", node_id, res.revision)
        return res.succeeded, res.revision

    async def cordon(self, node_id: str) -> bool:
        """Mark ``node_id`` so that no new agent is placed on it; its agents keep running.

        The mark is a key in etcd without a lease: every scheduler of every process obeys
        it, across restarts, until :meth:`uncordon`. Every placement transaction compares
        that it is absent, so no placement can commit onto the node after this returns.

        Returns:
            Whether the node was cordoned now (``False``: it was already).

        Raises:
            InvalidIdError: ``node_id`` is not a valid node id (nothing sent).
            NodeNotFoundError: no such node (not announced, not cordoned, no agent on it).
        """
        validate_id(node_id, "node id")
        return (await self._cordon(node_id))[0]

    async def uncordon(self, node_id: str) -> bool:
        """Let placement choose ``node_id`` again.

        Returns:
            Whether a cordon was removed (``False``: the node was not cordoned).

        Raises:
            InvalidIdError: ``node_id`` is not a valid node id (nothing sent).
            NodeNotFoundError: no such node (not announced, not cordoned, no agent on it).
        """
        validate_id(node_id, "node id")
        cordon, _ = await self._node_state(node_id)
        if cordon is None:
            return False
        # the cordon read, no other: applied late (after the node was uncordoned and
        # cordoned again), this deletes nothing
        mine = Compare.create_revision(cordon.key) == cordon.create_revision
        res = await self._transport.txn([mine], [Op.delete(cordon.key)])
        if res.succeeded:
            log.info("node %s uncordoned (rev %d)", node_id, res.revision)
        return res.succeeded

    async def cordoned(self) -> frozenset[str]:
        """The cordoned nodes, as etcd has them now."""
        view = await self._scheduler.cordon_view()
        await view.wait_for((await self._transport.status()).revision)
        return self._scheduler.cordoned_in(view)

    async def drain(
        self, node_id: str, *, progress: Callable[[int, int, str, str], None] | None = None
    ) -> list[tuple[str, str]]:
        """Cordon ``node_id``, then move every agent off it (it checkpoints and stops them).

        The node stays cordoned afterwards (:meth:`uncordon` lets placement use it again),
        also when moving an agent fails: nothing new is placed on it meanwhile.

        Returns:
            ``(agent_id, new_node)`` for each agent moved.

        Raises:
            InvalidIdError: ``node_id`` is not a valid node id (nothing sent).
            NodeNotFoundError: no such node (not announced, not cordoned, no agent on it).
            NoNodeFitsError: no other node can take one of its agents (those before it
                were moved; the node stays cordoned).
        """
        validate_id(node_id, "node id")
        sched = self._scheduler

        def spec_of(agent_id: str) -> KeyValue | None:
            return spec_view.get(self._ks.agent_spec(agent_id))

        spec_view, assign_view, _ = await sched.views()
        _, rev = await self._cordon(node_id)
        # every placement that committed onto the node did so before the cordon: the views
        # at its revision show them all, and none can follow
        await assign_view.wait_for(rev)
        await spec_view.wait_for(rev)
        moved = []
        on_node = []
        for kv in list(assign_view.items().values()):
            node, status, _ = decode_assignment(kv)
            if node == node_id and status is AssignmentStatus.ASSIGNED:
                on_node.append(kv)
        if progress is not None:
            progress(0, len(on_node), "", "")
        for kv in on_node:
            spec = AgentSpec.assigned(kv.key, sched.assign_prefix, spec_of)
            if spec is None:  # no spec, or not the library's (a warning): left where it is
                continue
            agent_id = spec.agent_id
            try:
                new, _ = await sched.commit(
                    spec,
                    strategy_named("least-loaded"),
                    compares=[Compare.mod_revision(kv.key) == kv.mod_revision],
                    ops=[Op.delete(self._ks.node_reservation(node_id, agent_id))],
                    exclude=frozenset({node_id}),
                )
            except ConditionFailed:
                continue
            moved.append((agent_id, new))
            if progress is not None:
                progress(len(moved), len(on_node), agent_id, new)
        await sched.audit.note("drain", {"node": node_id, "moved": dict(moved)})
        return moved
