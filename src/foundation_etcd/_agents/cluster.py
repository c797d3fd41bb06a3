"""``Cluster``: the entry point. One session, this node's announcement, views, the registry.

::

    async with foundation_etcd.connect(cfg, node_id="n1", capacity={"cpu": 8}) as cluster:
        async with cluster.host(MyAgent(), agent_id="a1"):
            ...

``Cluster`` is the composition root: ``connect`` builds the transport, the session, the
node membership (``membership.py``), the shared views and the registry, and each feature is
handed only what it needs (quotas get the session, the keyspace and a view opener, never the
cluster).

Guarantees:
    * This node is announced (see ``membership.py``) and listed in :meth:`Cluster.nodes`
      before ``connect`` returns; its node key and agent registrations live under the
      session lease and vanish together, at one revision, when the process dies.
    * One watched view per prefix, shared by every feature of the process
      (:meth:`Cluster.view`), closed with the cluster.
    * Closing unregisters hosted agents (running their ``on_stop``), then revokes the lease,
      bounded by ``request_timeout`` and shielded from cancellation.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._coord.audit_keys import signing_key_file
from .._coord.doorbells import Doorbells
from .._coord.election import Election
from .._coord.lock import Lock
from .._coord.quotas import Quotas
from .._coord.session import Session, open_session
from .._coord.stm import TransactStatistics
from .._coord.views import SharedViews
from .._coord.watch import WatchedView, open_view
from .._core.background import background_tasks, cleanup_scope
from .._core.config import Config
from .._core.errors import AgentNotFoundError, EtcdError
from .._core.keys import validate_id
from .._core.kv import KeyValue
from .._core.placement import PlacementStrategy
from .._transport import Transport, open_transport, require_asyncio
from .agent import AgentContext, call_hook, cluster_spec
from .cluster_consensus import ConsensusMethods
from .cluster_ops import OperatorMethods
from .cluster_signals import SignalMethods
from .drain import Drain
from .failover import Failover
from .health import HealthReport, health_report
from .membership import Membership, NodeChange, NodeInfo, node_value
from .registry import Registration, Registry
from .replies import Replies
from .runtime import NodeRuntime
from .scheduler import AgentRef, AgentStatus, Scheduler
from .signals import Signals

__all__ = ["Cluster", "HostedAgent", "NodeChange", "NodeInfo", "connect"]  # nodes: membership

log = logging.getLogger("foundation_etcd.cluster")


@dataclass(frozen=True, slots=True)
class HostedAgent:
    """An agent instance hosted by this process (see :meth:`Cluster.host`)."""

    agent: Any
    agent_id: str
    cluster: Cluster

    @property
    def registration(self) -> Registration | None:
        """The current registration (``None`` while it is being renewed after a loss)."""
        return self.cluster.registry.owned().get(self.agent_id)


class Cluster(SignalMethods, ConsensusMethods, OperatorMethods):
    """This process's membership of the cluster. Open with :func:`connect`."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        session: Session,
        node_id: str,
    ) -> None:
        self.config = config
        self.transport = transport
        self.session = session
        self.keyspace = config.keyspace
        self.node_id = node_id
        self._membership: Membership | None = None
        self._registry: Registry | None = None
        self._views: SharedViews | None = None
        self._quotas: Quotas | None = None
        self._scheduler: Scheduler | None = None
        self._signals: Signals | None = None
        self.doorbells: Doorbells | None = None
        self.runtime: NodeRuntime | None = None
        self.transact_statistics = TransactStatistics()

    @property
    def signals(self) -> Signals:
        """The send side of signals (``send``, ``publish``, ``call`` use it)."""
        assert self._signals is not None
        return self._signals

    async def view(self, prefix: bytes) -> WatchedView:
        """A watched view of ``prefix``, opened once and kept until the cluster closes."""
        return await self.views(prefix)

    @property
    def views(self) -> SharedViews:
        """The process's shared views (one per prefix)."""
        assert self._views is not None
        return self._views

    @property
    def quotas(self) -> Quotas:
        """Quota accounting for this tenant (and this cluster's nodes' capacity)."""
        if self._quotas is None:
            self._quotas = Quotas(
                self.session,
                self.keyspace,
                holder=self.node_id,
                views=self.views,
                node_view=self.membership.view,
            )
        return self._quotas

    # views ---------------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The agent registry."""
        assert self._registry is not None
        return self._registry

    @property
    def membership(self) -> Membership:
        """This node's announcement and the view of every node."""
        assert self._membership is not None
        return self._membership

    def nodes(self) -> dict[str, NodeInfo]:
        """Live nodes by id, from the watched view (no I/O)."""
        return self.membership.nodes()

    def node_kv(self, node_id: str) -> KeyValue | None:
        """The raw announcement key of a live node from the view, or ``None``."""
        return self.membership.node_kv(node_id)

    def node(self, node_id: str) -> NodeInfo | None:
        """One live node from the view, or ``None``."""
        return self.membership.node(node_id)

    async def wait_for(self, revision: int) -> None:
        """Wait until the node and agent views reflect ``revision``."""
        await self.membership.wait_for(revision)
        await self.registry.wait_for(revision)

    @asynccontextmanager
    async def watch_nodes(self) -> AsyncIterator[MemoryObjectReceiveStream[list[NodeChange]]]:
        """Receive each batch of node changes after this call, in order."""
        async with self.membership.watch() as changes:
            yield changes

    # agents: spawn, place, serve -------------------------------------------------------------
    @property
    def scheduler(self) -> Scheduler:
        """Spawning and placement."""
        if self._scheduler is None:
            self._scheduler = Scheduler(
                self.session,
                self.keyspace,
                self.node_id,
                views=self.views,
                membership=self.membership,
                registry=self.registry,
            )
        return self._scheduler

    @cached_property
    def _failover(self) -> Failover:
        """The failover leader's campaign (run by :meth:`serve`)."""
        return Failover(
            self.session,
            self.keyspace,
            self.node_id,
            views=self.views,
            membership=self.membership,
            scheduler=self.scheduler,
        )

    @cached_property
    def _drain(self) -> Drain:
        """Cordon, uncordon and drain of nodes."""
        return Drain(self.session, self.keyspace, self.node_id, scheduler=self.scheduler)

    async def spawn(
        self,
        agent_class: type,
        agent_id: str,
        *,
        args: Mapping[str, Any] | None = None,
        critical: bool | None = None,
        placement: str | PlacementStrategy | None = None,
        resources: Mapping[str, int] | None = None,
        requires: Iterable[str] = (),
    ) -> AgentRef:
        """Write the desired agent and place it on a node, in one transaction.

        ``critical``, ``placement`` and ``resources`` default to the class's ``@clustered``
        settings. The chosen node's runtime (``serve``) starts it.

        Raises:
            TypeError: the class is not ``@clustered``.
            AgentExistsError: the id is already spawned.
            NoNodeFitsError: no live node fits; nothing was written.
        """
        return await self.scheduler.spawn(
            agent_class,
            agent_id,
            args=args,
            critical=critical,
            placement=placement,
            resources=resources,
            requires=tuple(requires),
        )

    async def despawn(self, agent_id: str) -> None:
        """Remove a spawned agent; its node stops it (final checkpoint, then unregister)."""
        await self.scheduler.despawn(agent_id)

    async def agents(self) -> list[AgentStatus]:
        """Every spawned agent with its state (pending, running, failed) and node."""
        return await self.scheduler.agents()

    async def serve(
        self,
        classes: Mapping[str, type] | None = None,
        *,
        scheduler: bool = True,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        """Host the agents assigned to this node (and take part in failover), forever.

        Args:
            classes: cluster name to class this node may host; by default every class
                decorated with ``@clustered`` in this process. Nothing else is ever hosted.
            scheduler: also campaign to be the cluster's failover scheduler.
            on_event: called as ``on_event(name, **fields)`` for runtime events.
        """
        self.runtime = NodeRuntime(
            self.session,
            self.keyspace,
            self.node_id,
            scheduler=self.scheduler,
            registry=self.registry,
            owner=self,
            classes=classes,
            on_event=on_event,
            signals=self.signals,
            doorbells=self.doorbells,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.runtime.run)
            if scheduler:
                tg.start_soon(self._failover.run)

    async def health(self, *, within: float = 2.0) -> HealthReport:
        """This node's health, found within ``within`` seconds (status rules: HealthReport)."""
        return await health_report(self, within)

    # coordination ----------------------------------------------------------------------------
    def election(self, name: str) -> Election:
        """The election ``name`` among this cluster's processes, on this node's session."""
        return Election(self.session, name)

    def lock(self, name: str) -> Lock:
        """The lock ``name`` among this cluster's processes, on this node's session."""
        return Lock(self.session, name)

    # hosting -------------------------------------------------------------------------------
    @asynccontextmanager
    async def host(
        self,
        agent: object,
        agent_id: str | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
        capabilities: Iterable[str] | None = None,
    ) -> AsyncIterator[HostedAgent]:
        """Register a local agent instance for the duration of the block.

        On entry: register (create-if-absent, under the session lease) with the class's
        ``@clustered`` capabilities (or ``capabilities``), then ``await agent.on_start(ctx)``
        if it has one. On exit: ``agent.on_stop()`` if it has one, then unregister; both
        shielded and bounded by ``request_timeout``. After a lease loss the registration
        comes back by itself under the new lease.

        Raises:
            AgentExistsError: the id is live already.
            InvalidIdError, SerializationError, RequestTooLargeError: bad input.
        """
        spec = cluster_spec(agent)
        class_name = spec.name if spec else type(agent).__qualname__
        caps = (
            capabilities if capabilities is not None else tuple(spec.capabilities if spec else ())
        )
        if agent_id is None:
            agent_id = f"{class_name}-{uuid.uuid4().hex[:12]}"
        reg = await self.registry.register(
            agent_id, capabilities=caps, meta=meta, class_name=class_name
        )
        ctx = AgentContext(agent_id, self.node_id, reg.incarnation, self)
        started = False
        try:
            await call_hook(agent, "on_start", ctx)
            started = True
            async with self._delivering(agent, agent_id):
                yield HostedAgent(agent, agent_id, self)
        finally:
            with cleanup_scope(self.config.request_timeout):
                try:
                    if started:
                        await call_hook(agent, "on_stop")
                finally:
                    try:
                        await self.registry.unregister(agent_id)
                    except AgentNotFoundError:
                        pass  # its registration was lost and taken by another process
                    except EtcdError as exc:
                        log.warning("unregister of %r failed: %s", agent_id, exc)


@asynccontextmanager
async def connect(
    config: Config | None = None,
    *,
    node_id: str | None = None,
    capacity: Mapping[str, int] | None = None,
    capabilities: Iterable[str] = (),
    address: str = "",
    hosts_agents: bool = True,
    watch_agents: bool = True,
) -> AsyncIterator[Cluster]:
    """Join the cluster: open a transport and a session, announce this node, load views.

    Args:
        config: connection settings; ``Config.from_env()`` by default.
        node_id: this node's id; ``{hostname}-{pid}`` by default.
        capacity: resources this node offers (``{"cpu": 8, "gpu": 1}``).
        capabilities: what this node can host.
        address: where this node can be reached, free-form.
        hosts_agents: whether placement may assign agents to this node (``False`` for
            tools and observers that never ``serve()``).
        watch_agents: whether to open the registry's view of every live agent now
            (memory and events O(agents of the tenant) in this process). With ``False``
            registering needs no view, and the first ``await cluster.registry.open()``
            (or ``cluster.agents()``, ``registry.watch()``) opens it; see
            ``docs/concepts/membership.md``.

    Raises:
        AsyncioRequiredError: not called on asyncio (under trio, say): the transport is
            ``grpc.aio``; use :mod:`foundation_etcd.sync` from other code.
        EtcdUnavailableError: etcd cannot be reached.
        NodeExistsError: another live process announces ``node_id``.
        InvalidIdError, ValueError: bad ids or capacities (before anything is sent).
        ConfigurationError: ``config.audit_signing_key`` is no Ed25519 private key.
    """
    require_asyncio("foundation_etcd.connect")
    config = config or Config.from_env()
    node_id = validate_id(node_id or f"{socket.gethostname()}-{os.getpid()}", "node id")
    if config.audit_signing_key is not None:
        signing_key_file(config.audit_signing_key)  # a bad key fails here, not at a record
    value = node_value(node_id, capacity or {}, capabilities, address, hosts_agents)
    async with AsyncExitStack() as stack:
        transport = await stack.enter_async_context(open_transport(config))
        session = await stack.enter_async_context(open_session(transport, config))
        cluster = Cluster(config, transport, session, node_id)
        node_view = await stack.enter_async_context(
            open_view(transport, config.keyspace.nodes_prefix())
        )
        membership = Membership(transport, config.keyspace, node_id, value, node_view, config.ttl)
        # the view lists this node before connect returns, as it did when opened after
        await node_view.wait_for(await membership.announce(session.lease))
        session.on_renewed(membership.reannounce)
        membership.keep_announced(session)
        cluster._membership = membership
        agents_view = None
        if watch_agents:
            agents_view = await stack.enter_async_context(
                open_view(transport, config.keyspace.agents_live_prefix())
            )
        views = SharedViews(transport, await stack.enter_async_context(background_tasks()))
        views.adopt(config.keyspace.nodes_prefix(), node_view)
        if agents_view is not None:
            views.adopt(config.keyspace.agents_live_prefix(), agents_view)
        cluster._registry = Registry(
            transport, session, config.keyspace, node_id, agents_view, views=views
        )
        cluster._views = views
        bells = cluster.doorbells = await stack.enter_async_context(Doorbells.open(transport))
        replies = Replies(
            bells, config.keyspace, await stack.enter_async_context(background_tasks())
        )
        cluster._signals = Signals(
            session, config.keyspace, node_id, doorbells=bells, replies=replies
        )
        yield cluster
