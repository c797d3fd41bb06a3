"""Spawning and placement commits: where each agent should run.

Keys (no lease: they outlive every process)::

    agents/spec/{id}            {"class", "args", "critical", "placement", "resources", "requires"}
    agents/assign/{id}          {"node": id | null, "status": "assigned" | "failed", "reason"}
    nodes-res/{node}/{id}       {"resources": {...}}: capacity the agent takes on its node
    nodes-cordon/{node}         read here, written by ``drain.py``: no new placements there

Failover off dead nodes is ``failover.py``; cordon, uncordon and drain are ``drain.py``.
Both move agents through :meth:`Scheduler.commit`, so every guarantee below holds for them.

Guarantees:
    * **No over-commit.** A placement is one transaction that writes the assignment and the
      node reservation together, comparing that the node is still announced and that no
      reservation on it changed after the loads were read (a range compare on
      ``nodes-res/{node}/``): concurrent spawners never exceed a node's capacity; a loser
      re-reads and chooses again.
    * **Spawn is create-only**: a second spawn of a live spec raises ``AgentExistsError``.
    * **Despawn frees what the agent holds**: its spec, assignment and node reservation go
      in one transaction that compares the assignment read (a drain or a failover moving
      it meanwhile makes it read again), so no reservation is left on any node.
    * **A cordoned node gets no new agent.** Every placement transaction also compares that
      the chosen node's cordon key is absent, so once ``Drain.cordon`` has returned, no
      scheduler in any process can place an agent there, whatever its views had seen; the
      agents already there keep running.

On lease loss: nothing the scheduler writes is under a lease, and it writes through the
transport, not the session: spawn, despawn and placement keep working across a lost lease.
A node whose lease expired has lost its node key, which every placement onto it compares,
so no agent is committed onto a dead node; the views catch up and placement chooses again.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._coord.audit import AuditLog
from .._coord.ownership import Ownership
from .._coord.watch import ChangeKind, ViewChange, WatchedView
from .._core import codec as _codec
from .._core.amounts import ANY_RESOURCE, BLOCKING, check_amounts
from .._core.errors import AgentExistsError, AgentNotFoundError, NoNodeFitsError
from .._core.keys import prefix_end, validate_id
from .._core.kv import AnyOp, Compare, KeyValue, Op, RangeResult
from .._core.placement import NodeLoad, PlacementStrategy, place, strategy_named
from .._core.records import (
    AgentSpec,
    AssignmentStatus,
    decode_assignment,
    decode_node_reservation,
    encode_assignment,
    encode_node_reservation,
)
from .._core.schema import tool_definition
from .agent import actions_of, cluster_spec

if TYPE_CHECKING:
    from .._coord.session import Session
    from .._core.keys import Keyspace
    from .membership import Membership
    from .registry import Registry

__all__ = ["AgentRef", "AgentSpec", "AgentStatus", "Scheduler"]

_PLACE_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class AgentRef:
    """A spawned agent: its id and the node it was placed on."""

    agent_id: str
    node_id: str
    revision: int


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """An agent's state: ``pending`` (placed, not running yet), ``running`` or ``failed``."""

    agent_id: str
    class_name: str
    state: str
    node_id: str | None
    critical: bool
    incarnation: int
    reason: str = ""


class Scheduler:
    """Spawning and placement for one cluster. Use through :class:`Cluster`."""

    def __init__(
        self,
        session: Session,
        keyspace: Keyspace,
        node_id: str,
        *,
        views: Callable[[bytes], Awaitable[WatchedView]],
        membership: Membership,
        registry: Registry,
    ) -> None:
        """Spawning and placement for ``keyspace``, acting as ``node_id``.

        Args:
            session: this process's session (its transport).
            keyspace: the key layout.
            node_id: this node's id (who spawns).
            views: opens (or shares) the watched view of a prefix.
            membership: the live nodes.
            registry: the live agents.
        """
        self._session = session
        self._transport = session.transport
        self._node_id = node_id
        self._views_of = views
        self._membership = membership
        self._registry = registry
        self._ks = keyspace
        self.audit = AuditLog(session.transport, keyspace, actor=node_id)  # failover, drain
        self.spec_prefix = self._ks.agent_specs_prefix()
        self.assign_prefix = self._ks.agent_assigns_prefix()
        self.res_prefix = self._ks.node_reservations_prefix()
        self.cordon_prefix = self._ks.cordons_prefix()
        self._cordons: WatchedView | None = None
        self._res_index: dict[tuple[str, str], dict[str, int]] = {}
        self._res_index_of: WatchedView | None = None

    async def _wait_for(self, revision: int) -> None:
        """Wait until the node and agent views reflect ``revision``."""
        await self._membership.wait_for(revision)
        await self._registry.wait_for(revision)

    # views ---------------------------------------------------------------------------------
    async def views(self) -> tuple[WatchedView, WatchedView, WatchedView]:
        """The spec, assignment and node-reservation views (opened once)."""
        return (
            await self._views_of(self.spec_prefix),
            await self._views_of(self.assign_prefix),
            await self._views_of(self.res_prefix),
        )

    async def cordon_view(self) -> WatchedView:
        """The view of cordoned nodes (opened once)."""
        if self._cordons is None:
            self._cordons = await self._views_of(self.cordon_prefix)
        return self._cordons

    def cordon_key(self, node_id: str) -> bytes:
        """The key that marks ``node_id`` cordoned (no lease: it outlives every process)."""
        return self._ks.cordon(node_id)

    def cordoned_in(self, view: WatchedView) -> frozenset[str]:
        """The nodes cordoned in ``view`` (the cordon view; no I/O)."""
        n = len(self.cordon_prefix)
        return frozenset(key[n:].decode() for key in view.items())

    def node_res_prefix(self, node: str) -> bytes:
        """The prefix of ``node``'s reservations, ``nodes-res/{node}/``."""
        return self._ks.node_reservations_of(node)

    def loads(
        self, res_view: WatchedView, cordoned: frozenset[str] | None = None
    ) -> list[NodeLoad]:
        """Every live node that hosts agents, with what is placed on it (no I/O).

        Node reservations are indexed as the view changes, so a spawn costs no decoding
        of every placed agent.

        Args:
            res_view: the node-reservation view.
            cordoned: the cordoned nodes; by default those of the cordon view, once open.
        """
        if cordoned is None:
            cordoned = frozenset() if self._cordons is None else self.cordoned_in(self._cordons)
        if self._res_index_of is not res_view:
            self._res_index_of = res_view
            self._res_index.clear()
            for kv in res_view.items().values():
                self._res_add(kv)
            res_view.on_change(self._res_changed)
        used: dict[str, dict[str, int]] = {}
        count: dict[str, int] = {}
        for (node, _agent), amounts in self._res_index.items():
            count[node] = count.get(node, 0) + 1
            bucket = used.setdefault(node, {})
            for r, a in amounts.items():
                bucket[r] = bucket.get(r, 0) + a
        return [
            NodeLoad(
                n.node_id,
                n.capacity,
                _full(used.get(n.node_id, {}), n.capacity),
                n.capabilities,
                count.get(n.node_id, 0),
                n.node_id in cordoned,
            )
            for n in self._membership.nodes().values()
            if n.hosts_agents
        ]

    def _res_add(self, kv: KeyValue) -> None:
        node, _, agent = kv.key[len(self.res_prefix) :].decode(errors="replace").partition("/")
        self._res_index[(node, agent)] = decode_node_reservation(kv.value)

    def _res_changed(self, changes: list[ViewChange]) -> None:
        for c in changes:
            if c.kind is ChangeKind.REMOVED:
                node, _, agent = c.key[len(self.res_prefix) :].decode().partition("/")
                self._res_index.pop((node, agent), None)
            else:
                self._res_add(c.kv)

    # placement commit ----------------------------------------------------------------------
    async def commit(
        self,
        spec: AgentSpec,
        strategy: PlacementStrategy,
        *,
        compares: Sequence[Compare] = (),
        ops: Sequence[AnyOp] = (),
        exclude: frozenset[str] = frozenset(),
        guard: Ownership | None = None,
    ) -> tuple[str, int]:
        """Choose a node and commit the assignment and the node reservation in one txn.

        Args:
            spec: the agent.
            strategy: how to choose.
            compares: extra conditions (e.g. the spec is absent, the assignment unchanged).
            ops: extra writes in the same transaction.
            exclude: nodes not to choose.
            guard: a leadership whose fencing compare the transaction must also carry.

        Returns:
            The chosen node and the transaction's revision.

        Raises:
            NoNodeFitsError: no live node fits (a cordoned node never does).
            OwnershipLostError: ``guard`` is no longer current.
            ConditionFailed: one of ``compares`` does not hold.
        """
        _, _, res_view = await self.views()
        cordon_view = await self.cordon_view()
        for _attempt in range(_PLACE_ATTEMPTS):
            seen = res_view.revision
            cordoned = self.cordoned_in(cordon_view)
            node = place(spec.request(exclude), self.loads(res_view, cordoned), strategy)
            if node in cordoned:  # a custom strategy that ignored the loads' ``cordoned``
                raise NoNodeFitsError(spec.agent_id, {node: "cordoned"})
            node_kv = self._membership.node_kv(node)
            if node_kv is None:  # gone between the two reads of the same view
                continue
            rp = self.node_res_prefix(node)
            checks = [
                Compare.mod_revision(node_kv.key) == node_kv.mod_revision,
                Compare.mod_revision(rp, range_end=prefix_end(rp)) < seen + 1,
                # cordoned after our views were read: fail, catch up, choose again
                Compare.create_revision(self.cordon_key(node)) == 0,
            ]
            writes: list[AnyOp] = [
                Op.put(
                    self._ks.agent_assign(spec.agent_id),
                    encode_assignment(node, AssignmentStatus.ASSIGNED),
                ),
                Op.put(
                    self._ks.node_reservation(node, spec.agent_id),
                    encode_node_reservation(spec.resources),
                ),
                *ops,
            ]
            all_compares = [*checks, *compares]
            if guard is not None:
                res = await guard.txn(all_compares, writes, [Op.get(k.key) for k in compares])
            else:
                res = await self._transport.txn(
                    all_compares, writes, [Op.get(k.key) for k in compares]
                )
            if res.succeeded:
                return node, res.revision
            for c, read in zip(compares, res.responses, strict=True):
                kv = read.kvs[0] if isinstance(read, RangeResult) and read.kvs else None
                if not _holds(c, kv):
                    raise ConditionFailed(c, kv)
            # the node's load changed under us, or it was cordoned: catch up, choose again
            await res_view.wait_for(res.revision)
            await cordon_view.wait_for(res.revision)
            await self._wait_for(res.revision)
        raise NoNodeFitsError(spec.agent_id, {"*": "placement kept conflicting; try again"})

    # spawn and despawn ---------------------------------------------------------------------
    async def spawn(
        self,
        agent_class: type,
        agent_id: str,
        *,
        args: Mapping[str, Any] | None = None,
        critical: bool | None = None,
        placement: str | PlacementStrategy | None = None,
        resources: Mapping[str, int] | None = None,
        requires: Sequence[str] = (),
    ) -> AgentRef:
        """Write the desired agent and place it, in one transaction.

        Raises:
            TypeError: the class is not ``@clustered``.
            InvalidIdError, SerializationError, RequestTooLargeError, ValueError: bad input.
            AgentExistsError: an agent of that id is already spawned.
            NoNodeFitsError: no live node fits (nothing written).
        """
        cs = cluster_spec(agent_class)
        if cs is None:
            raise TypeError(f"{agent_class!r} is not decorated with @clustered")
        validate_id(agent_id, "agent id")
        res = check_amounts(cs.resources if resources is None else resources, "resource amount")
        chosen = placement if placement is not None else cs.placement
        strategy = strategy_named(chosen)
        spec = AgentSpec(
            agent_id,
            cs.name,
            dict(args or {}),
            cs.critical if critical is None else critical,
            chosen if isinstance(chosen, str) else "custom",
            res,
            frozenset(validate_id(c, "capability") for c in requires),
            {name: tool_definition(name, fn) for name, fn in actions_of(agent_class).items()},
        )
        value = spec.encode()
        spec_key = self._ks.agent_spec(agent_id)
        ops: list[AnyOp] = [Op.put(spec_key, value)]
        if cs.subscribe:
            subs = {"patterns": list(cs.subscribe)}
            ops.append(
                Op.put(self._ks.subscription(agent_id), _codec.encode(subs, "subscriptions", 65536))
            )
        try:
            node, rev = await self.commit(
                spec,
                strategy,
                compares=[Compare.create_revision(spec_key) == 0],
                ops=ops,
            )
        except ConditionFailed:
            assign = await self._transport.get(self._ks.agent_assign(agent_id))
            held, status, _ = decode_assignment(assign)
            where = f"on node {held!r}" if held else "(not placed)"
            raise AgentExistsError(
                agent_id,
                node_id=held,
                lease_id=0,
                message=f"agent {agent_id!r} is already spawned, {status.value} {where}: "
                "despawn it first, or spawn another id",
            ) from None
        await self.audit.note("spawn", {"agent": agent_id, "node": node, "rev": rev})
        return AgentRef(agent_id, node, rev)

    async def despawn(self, agent_id: str) -> None:
        """Remove an agent: its spec, assignment and node reservation (its node stops it).

        Raises:
            AgentNotFoundError: no such spawned agent.
        """
        spec_key, assign_key = self._ks.agent_spec(agent_id), self._ks.agent_assign(agent_id)
        while True:  # the node read must still be the one assigned (a drain may move it)
            assign = await self._transport.get(assign_key)
            node, _, _ = decode_assignment(assign)
            ops: list[AnyOp] = [Op.delete(spec_key), Op.delete(assign_key)]
            if node:
                ops.append(Op.delete(self._ks.node_reservation(node, agent_id)))
            # its signals go with it: waiting ones, dedupe records, dead letters, counters
            ops += [Op.delete(k, range_end=end) for k, end in self._ks.agent_signal_keys(agent_id)]
            moved = Compare.mod_revision(assign_key) == (assign.mod_revision if assign else 0)
            res = await self._transport.txn([Compare.create_revision(spec_key) > 0, moved], ops)
            if res.succeeded or not await self._transport.get(spec_key):
                break
        if not res.succeeded:
            raise AgentNotFoundError(agent_id, f"agent {agent_id!r} is not spawned")
        await self.audit.note("despawn", {"agent": agent_id, "node": node, "rev": res.revision})

    async def agents(self) -> list[AgentStatus]:
        """Every spawned agent with its state and node, from the views."""
        spec_view, assign_view, _ = await self.views()
        rev = (await self._transport.status()).revision
        await spec_view.wait_for(rev)
        await assign_view.wait_for(rev)
        await self._wait_for(rev)
        out = []
        specs = (
            AgentSpec.read(kv.key[len(self.spec_prefix) :], kv.value)
            for kv in spec_view.items().values()
        )
        for spec in filter(None, specs):  # unreadable ones: left out, with a warning
            agent_id = spec.agent_id
            node, status, reason = decode_assignment(
                assign_view.get(self._ks.agent_assign(agent_id))
            )
            live = self._registry.get(agent_id)
            state = "pending"
            if status is AssignmentStatus.FAILED:
                state = "failed"
            elif live is not None and live.node_id == node:
                state = "running"
            out.append(
                AgentStatus(
                    agent_id,
                    spec.class_name,
                    state,
                    node,
                    spec.critical,
                    live.incarnation if live and state == "running" else 0,
                    reason,
                )
            )
        return sorted(out, key=lambda s: s.agent_id)


class ConditionFailed(Exception):
    """A caller's compare did not hold."""

    def __init__(self, compare: Compare, kv: KeyValue | None) -> None:
        super().__init__(f"condition on {compare.key!r} failed")
        self.compare, self.kv = compare, kv


_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}


def _holds(c: Compare, kv: KeyValue | None) -> bool:
    """Evaluate a create/mod-revision compare against a key as read."""
    actual = 0
    if kv is not None:
        actual = kv.create_revision if c.target == "create" else kv.mod_revision
    if c.target not in ("create", "mod"):
        return True
    want = c.operand
    assert isinstance(want, int)
    return bool(_COMPARE[c.op](actual, want))


def _full(used: dict[str, int], capacity: Mapping[str, int]) -> dict[str, int]:
    """``used``, with every resource of ``capacity`` taken when a reservation was malformed."""
    if ANY_RESOURCE not in used:
        return used
    return {**used, **dict.fromkeys(capacity, BLOCKING)}
