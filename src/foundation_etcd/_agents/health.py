"""Node health: one structured report of what this process can vouch for right now.

:func:`health_report` (``await cluster.health()``) gathers, bounded by one timeout so that a
probe never hangs:

* the session lease: alive or lost, and its margin (seconds until the local safe deadline);
* etcd: one ``Status`` call to the member the transport is connected to (reachable, its
  raft leader, its revision, the alarms it reports);
* the shared views: each connected and caught up to that member's revision (a view at or
  past it costs nothing; one behind asks for watch progress, as ``wait_for`` does);
* while :meth:`Cluster.serve` runs: whether this node leads the failover election
  (``scheduler``, one linearizable read), and the agents it hosts or refused.

Status rules (:attr:`HealthReport.status`):
    * ``failing``: the session is closed, its lease is lost or past its safe deadline, etcd
      did not answer ``Status`` in time, or the member reports no raft leader.
    * ``degraded``: not failing, but a view is disconnected or not caught up within the
      timeout, the lease margin is below half of ``ttl - step_down`` (keepalives are
      late), etcd reports an alarm or error, or a hosted agent failed (refused or crashed
      past its restart policy).
    * ``ok``: otherwise.

Not included: the inbox backlog of hosted agents (counting it needs one read per agent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .._coord.election import Election
from .._core.errors import FoundationEtcdError, SessionClosedError

if TYPE_CHECKING:
    from .._coord.session import Session
    from .._coord.watch import WatchedView
    from .cluster import Cluster

__all__ = ["HealthReport", "health_report", "holds_leadership"]

Status = Literal["ok", "degraded", "failing"]
FAILOVER_ELECTION = "scheduler"  # the election Failover campaigns in
_CONNECT_POLL = 0.01  # seconds between looks at a view whose stream is being created
_CONNECT_POLLS = 500  # at most 5 s of looks (the report's own bound is usually shorter)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The health of this node, as :meth:`Cluster.health` found it.

    ``failing``: the session is closed, its lease lost or past its safe deadline, etcd did
    not answer ``Status`` in time, or the member has no raft leader. ``degraded``: a view is
    disconnected or not caught up in time, the lease margin is below half of
    ``ttl - step_down``, etcd reports an alarm, or a hosted agent failed. ``ok``: neither.

    Attributes:
        status: ``"ok"``, ``"degraded"`` or ``"failing"`` (the rules above).
        reasons: why the status is not ``ok``, one phrase each.
        node_id: this node's id.
        lease_id: the session's current lease (0 once the session is closed).
        lease_alive: whether that lease is alive and before its safe deadline.
        lease_margin: seconds until the lease's safe deadline (negative past it).
        etcd_reachable: whether etcd answered ``Status`` within the timeout.
        etcd_leader: the raft leader's member id as the member reports it (0: none or
            unknown).
        etcd_revision: that member's revision (0 when unreachable).
        etcd_errors: the alarms and errors the member reports.
        views: each shared view's prefix (decoded) to whether it is caught up.
        views_caught_up: whether every view is connected and caught up.
        serving: whether :meth:`Cluster.serve` hosts agents in this process.
        failover_leader: whether this node leads the failover election (``None`` when not
            serving).
        agents_hosted: hosted agent id to ``starting``, ``running`` or ``stopped``.
        agents_failed: agent id to the reason this node refused or gave it up.
        inbox_backlog: hosted agent id to the signals that were waiting in its inbox when
            it took the last one (0 once its inbox was seen empty); no read of etcd.
    """

    status: Status
    reasons: tuple[str, ...]
    node_id: str
    lease_id: int
    lease_alive: bool
    lease_margin: float
    etcd_reachable: bool
    etcd_leader: int
    etcd_revision: int
    etcd_errors: tuple[str, ...] = ()
    views: Mapping[str, bool] = field(default_factory=dict)
    views_caught_up: bool = False
    serving: bool = False
    failover_leader: bool | None = None
    agents_hosted: Mapping[str, str] = field(default_factory=dict)
    agents_failed: Mapping[str, str] = field(default_factory=dict)
    inbox_backlog: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (a non-finite margin becomes ``None``)."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["etcd_errors"] = list(self.etcd_errors)
        out["views"] = dict(self.views)
        out["agents_hosted"] = dict(self.agents_hosted)
        out["agents_failed"] = dict(self.agents_failed)
        out["inbox_backlog"] = dict(self.inbox_backlog)
        if not math.isfinite(self.lease_margin):
            out["lease_margin"] = None
        return out


async def holds_leadership(session: Session, name: str) -> bool:
    """Whether this session's live lease holds the leadership of election ``name``.

    One linearizable read of the election's first candidate, compared by lease id.

    Raises:
        InvalidIdError: a bad election name.
        EtcdError: etcd did not answer.
    """
    election = Election(session, name)
    if session.closed:
        return False
    lease = session.lease
    if lease.lost:
        return False
    leader = await election.leader()
    return leader is not None and leader.lease_id == lease.id and not lease.lost


async def _caught_up(view: WatchedView, revision: int, out: dict[str, bool], name: str) -> None:
    """Set ``out[name]`` once ``view`` reflects ``revision`` with its stream up (caller bounds)."""
    try:
        await view.wait_for(revision)
    except (FoundationEtcdError, anyio.ClosedResourceError):
        return  # stopped by an error, or closed: stays False
    for _ in range(_CONNECT_POLLS):  # a stream being (re)created: no event says when it is up
        if view.connected:
            out[name] = True
            return
        await anyio.sleep(_CONNECT_POLL)


async def health_report(cluster: Cluster, within: float) -> HealthReport:
    """Build the report of ``cluster`` within ``within`` seconds (see the module doc)."""
    session, config = cluster.session, cluster.config
    failing: list[str] = []
    degraded: list[str] = []
    deadline = anyio.current_time() + within

    def left() -> float:
        return max(0.0, deadline - anyio.current_time())

    lease_id, alive, margin = 0, False, -math.inf
    try:
        lease = session.lease
        lease_id, margin = lease.id, lease.remaining()
        alive = not lease.lost and margin > 0
        if not alive:
            failing.append(f"lease lost: {lease.lost_reason or 'safe deadline passed'}")
        elif margin < (config.ttl - config.safe_step_down) / 2:
            degraded.append(f"lease margin low ({margin:.2f} s)")
    except SessionClosedError:
        failing.append("session closed")

    reachable, leader, revision = False, 0, 0
    errors: tuple[str, ...] = ()
    try:
        with anyio.fail_after(left()):
            st = await cluster.transport.status()
        reachable, leader, revision, errors = True, st.leader, st.revision, tuple(st.errors)
        if not leader:
            failing.append("etcd member has no leader")
        degraded.extend(f"etcd reports: {e}" for e in errors)
    except (FoundationEtcdError, TimeoutError) as exc:
        failing.append(f"etcd unreachable: {exc or 'no answer in time'}")

    caught: dict[str, bool] = {}
    views = cluster.views.opened()
    prefix = config.keyspace.prefix
    for key in views:
        caught[_name(key, prefix)] = False
    if reachable:
        with anyio.move_on_after(left()):
            async with anyio.create_task_group() as tg:
                for key, view in views.items():
                    tg.start_soon(_caught_up, view, revision, caught, _name(key, prefix))
    lagging = sorted(name for name, ok in caught.items() if not ok)
    if lagging:
        degraded.append(f"views not caught up: {', '.join(lagging)}")

    runtime = cluster.runtime
    failover: bool | None = None
    hosted: dict[str, str] = {}
    refused: dict[str, str] = {}
    backlog: dict[str, int] = {}
    if runtime is not None:
        hosted = {agent_id: h.status for agent_id, h in sorted(runtime.hosted.items())}
        for agent_id, h in sorted(runtime.hosted.items()):
            if h.deliverer is not None:
                backlog[agent_id] = h.deliverer.inbox_depth
        refused = dict(sorted(runtime.refused.items()))
        if refused:
            degraded.append(f"agents failed: {', '.join(refused)}")
        if alive and reachable:
            try:
                with anyio.fail_after(max(left(), 0.05)):
                    failover = await holds_leadership(session, FAILOVER_ELECTION)
            except (FoundationEtcdError, TimeoutError):
                failover = None
    status: Status = "failing" if failing else "degraded" if degraded else "ok"
    return HealthReport(
        status=status,
        reasons=tuple(failing + degraded),
        node_id=cluster.node_id,
        lease_id=lease_id,
        lease_alive=alive,
        lease_margin=margin,
        etcd_reachable=reachable,
        etcd_leader=leader,
        etcd_revision=revision,
        etcd_errors=errors,
        views=caught,
        views_caught_up=reachable and not lagging,
        serving=runtime is not None,
        failover_leader=failover,
        agents_hosted=hosted,
        agents_failed=refused,
        inbox_backlog=backlog,
    )


def _name(key: bytes, prefix: bytes) -> str:
    """A view's prefix without the namespace and tenant part, as text."""
    if key.startswith(prefix):
        key = key[len(prefix) :]
    return key.decode(errors="replace").strip("/") or "/"
