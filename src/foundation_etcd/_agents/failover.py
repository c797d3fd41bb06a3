"""Failover: the elected leader that moves agents off dead nodes.

Keys: the election ``scheduler`` (see the election module); the leader writes only the
scheduler's keys (``agents/assign/{id}``, ``nodes-res/{node}/{id}``, see ``scheduler.py``),
and, best effort after each decision, an audit record (``leader``, ``failover``: ``audit.py``).

Guarantees:
    * **Failover by one elected scheduler**: when a node's key is gone (its lease expired or
      was revoked), the leader of election ``scheduler`` reassigns that node's *critical*
      agents in one transaction guarded by its fencing token, the dead node's key being
      absent and the assignment unchanged; non-critical agents are marked ``failed``. A
      stale scheduler can change nothing.
    * A moved agent keeps its spec's placement strategy, unless that cannot apply once its
      node died (``pinned:...``, a custom strategy): then it is placed least-loaded. Its
      move obeys cordons and capacity like every placement (``Scheduler.commit``).
    * Detection takes at least one TTL; reassignment follows within a watch round trip.

On lease loss: leadership lives under this process's session lease. When the lease is lost
(or the candidacy deleted) the leader's body is cancelled, ``OwnershipLostError`` or
``LeaseLostError`` ends it, and :meth:`Failover.run` campaigns again; a write attempted
meanwhile is refused by etcd (the fencing compare fails), so a former leader, even a paused
one, changes nothing. Any other etcd error ends the round too, and the campaign starts again
after half a second; an unexpected error (a bug, a record no check foresaw) is logged and
the campaign starts again after 5 s: it never ends ``serve()``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from .._coord.election import Election
from .._core import metrics
from .._core.errors import EtcdError, LeaseLostError, NoNodeFitsError, OwnershipLostError
from .._core.kv import Compare, KeyValue, Op
from .._core.placement import STRATEGIES, PlacementStrategy, strategy_named
from .._core.records import AgentSpec, AssignmentStatus, decode_assignment, encode_assignment
from .scheduler import ConditionFailed

if TYPE_CHECKING:
    from .._coord.ownership import Ownership
    from .._coord.session import Session
    from .._coord.watch import WatchedView
    from .._core.keys import Keyspace
    from .membership import Membership
    from .scheduler import Scheduler

__all__ = ["Failover"]

# the scheduler's decisions, under the logger name they have always had
log = logging.getLogger("foundation_etcd.scheduler")


class Failover:
    """The failover leader for one cluster. Started by :meth:`Cluster.serve`."""

    def __init__(
        self,
        session: Session,
        keyspace: Keyspace,
        node_id: str,
        *,
        views: Callable[[bytes], Awaitable[WatchedView]],
        membership: Membership,
        scheduler: Scheduler,
    ) -> None:
        """Failover for ``keyspace``, campaigning as ``node_id``.

        Args:
            session: this process's session (the election's lease).
            keyspace: the key layout.
            node_id: this node's id (the candidacy's value).
            views: opens (or shares) the watched view of a prefix.
            membership: the live nodes.
            scheduler: the views of specs and assignments, and the placement commit.
        """
        self._session = session
        self._ks = keyspace
        self._node_id = node_id
        self._views_of = views
        self._membership = membership
        self._scheduler = scheduler

    async def run(self) -> None:
        """Campaign for ``scheduler``; as leader, move agents off dead nodes. Runs forever."""
        spec_view, assign_view, _ = await self._scheduler.views()
        sched_audit = self._scheduler.audit
        while True:
            try:
                async with Election(self._session, "scheduler").campaign(self._node_id) as lead:
                    log.info(
                        "node %s leads the scheduler (token %d)",
                        self._node_id,
                        lead.fencing_token,
                    )
                    await sched_audit.note("leader", {"token": lead.fencing_token})
                    await self._lead(lead, spec_view, assign_view)
            except (OwnershipLostError, LeaseLostError) as exc:
                log.info("scheduler leadership ended: %s", exc)
            except EtcdError as exc:
                log.warning("scheduler: %s; campaigning again", exc)
                await anyio.sleep(0.5)
            except Exception:  # a record no check foresaw: this round ends, the node runs on
                log.exception("scheduler round failed; campaigning again")
                await anyio.sleep(5.0)

    async def _lead(
        self, lead: Ownership, spec_view: WatchedView, assign_view: WatchedView
    ) -> None:
        changed = anyio.Event()

        def wake(_: object) -> None:
            nonlocal changed
            changed.set()
            changed = anyio.Event()

        node_view = await self._views_of(self._ks.nodes_prefix())
        cordon_view = await self._scheduler.cordon_view()  # an uncordon may let a stuck agent move
        removers = [
            assign_view.on_change(wake),
            node_view.on_change(wake),
            cordon_view.on_change(wake),
        ]
        try:
            while True:
                waiting = changed
                await self._fail_over(lead, spec_view, assign_view)
                await waiting.wait()
        finally:
            for remove in removers:
                remove()

    async def _fail_over(
        self, lead: Ownership, spec_view: WatchedView, assign_view: WatchedView
    ) -> None:
        sched = self._scheduler

        def spec_of(agent_id: str) -> KeyValue | None:
            return spec_view.get(self._ks.agent_spec(agent_id))

        live = set(self._membership.nodes())
        for kv in list(assign_view.items().values()):
            node, status, _ = decode_assignment(kv)
            if status is not AssignmentStatus.ASSIGNED or node is None or node in live:
                continue
            spec = AgentSpec.assigned(kv.key, sched.assign_prefix, spec_of)
            if spec is None:  # no spec, or not the library's (a warning): left where it is
                continue
            agent_id = spec.agent_id
            dead = [
                Compare.create_revision(self._ks.node(node)) == 0,
                Compare.mod_revision(kv.key) == kv.mod_revision,
            ]
            free_old = Op.delete(self._ks.node_reservation(node, agent_id))
            try:
                if spec.critical:
                    new, rev = await sched.commit(
                        spec,
                        _failover_strategy(spec.placement),
                        compares=dead,
                        ops=[free_old],
                        exclude=frozenset({node}),
                        guard=lead,
                    )
                    metrics.agents_failed_over(self._ks.tenant, self._node_id)
                    moved = {"agent": agent_id, "from": node, "to": new, "rev": rev}
                    await sched.audit.note("failover", moved)
                    log.info(
                        "moved critical agent %s from dead node %s to %s (rev %d)",
                        agent_id,
                        node,
                        new,
                        rev,
                    )
                else:
                    res = await lead.txn(
                        dead,
                        [
                            Op.put(
                                kv.key,
                                encode_assignment(
                                    None, AssignmentStatus.FAILED, f"node {node} died"
                                ),
                            ),
                            free_old,
                        ],
                    )
                    if res.succeeded:
                        log.info("agent %s failed with its node %s", agent_id, node)
                        failed = {"agent": agent_id, "from": node, "to": None, "rev": res.revision}
                        await sched.audit.note("failover", failed)
            except ConditionFailed:
                continue  # the node came back, or someone else moved it
            except NoNodeFitsError as exc:
                log.warning("cannot move %s: %s", agent_id, exc)


def _failover_strategy(placement: str) -> PlacementStrategy:
    """The spec's strategy, unless it cannot apply once its node died (pinned, custom)."""
    if placement.startswith("pinned:") or placement not in STRATEGIES:
        return strategy_named("least-loaded")
    return strategy_named(placement)
