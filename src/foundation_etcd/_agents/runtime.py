"""The node runtime: hosts the agents assigned to this node, with their state.

``cluster.serve()`` (or ``foundation-etcd node run --agents my.module``) watches
``agents/assign/`` and hosts every agent assigned to this node whose class was registered in
this process with ``@clustered`` (a class named by data in etcd is never imported: an
unknown name is refused and reported on the assignment). For each agent it:

1. claims the live key ``agents/live/{id}`` (create-if-absent under the session lease; its
   create revision is the agent's **incarnation**), waiting while a previous incarnation's
   key still exists;
2. reads the last checkpoint ``agents/state/{id}`` and calls ``restore_state(state)``;
3. instantiates the class with the spec's ``args``, calls ``on_start(ctx)`` and runs
   ``run(ctx)`` if the class has one;
4. restarts it locally after a failure, by its ``RestartPolicy``, with backoff (etcd failing
   before the agent's code ran is no failure of the agent: it is tried again);
5. when the assignment moves away (drain, despawn, a new spawn of the id), stops it: within
   ``on_start``, by cancelling it; after, with a final checkpoint from ``get_state()``, then
   ``on_stop()``; then the live key is deleted.

Guarantees:
    * ``ctx.save_state(state)`` writes only while ``create_revision(live key) ==
      incarnation``: an instance paused past its lease can never overwrite its successor's
      state (:class:`IncarnationLostError`).
    * Every hosted agent runs under the session lease's guard: when the lease is lost all
      of them are cancelled, before etcd can expire the lease, and no final checkpoint is
      written. They are hosted again under the new lease if still assigned here.
    * State checkpoints are JSON of at most 1 MiB, checked before anything is sent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .._coord.coalesce import Coalescer
from .._coord.waits import wait_deleted
from .._coord.watch import WatchedView
from .._core import metrics
from .._core.background import background_tasks, cleanup_scope, unless_set
from .._core.checkpoints import decode_state, encode_state
from .._core.errors import (
    AgentExistsError,
    AgentNotFoundError,
    EtcdError,
    IncarnationLostError,
    LeaseLostError,
)
from .._core.hosting import Desired, desired_here
from .._core.kv import Compare, Op
from .._core.records import AgentSpec
from .._transport import Transport
from .agent import AgentContext, RestartPolicy, agent_classes, call_hook, cluster_spec
from .assignment_reads import mark_failed, still_assigned
from .delivery import Deliverer, RetentionLease

if TYPE_CHECKING:
    from .._coord.doorbells import Doorbells
    from .._coord.session import Session
    from .._core.keys import Keyspace
    from .registry import Registry
    from .scheduler import Scheduler
    from .signals import Signals

__all__ = ["AgentRunContext", "NodeRuntime"]

log = logging.getLogger("foundation_etcd.runtime")

EventHook = Callable[..., None]


@dataclass(frozen=True, slots=True)
class AgentRunContext(AgentContext):
    """What a hosted agent gets in ``on_start(ctx)`` and ``run(ctx)``.

    Attributes:
        restored: the state restored at start (``None`` for a fresh agent).
    """

    restored: Any = None
    _live_key: bytes = b""
    _state_key: bytes = b""
    _transport: Transport | None = None
    _handling: anyio.Lock | None = None

    async def save_state(self, state: Any) -> int:
        """Checkpoint ``state`` (JSON), only while this incarnation is the live one.

        Returns:
            The revision of the checkpoint.

        Raises:
            IncarnationLostError: this incarnation is no longer live; nothing written.
            SerializationError, RequestTooLargeError: bad state (nothing written).
        """
        # the runtime hands its transport in; a context made by hand uses its cluster's
        transport: Transport = self._transport or self.cluster.transport
        data = encode_state(self.incarnation, state, transport.config.keyring, self._state_key)
        guard = [Compare.create_revision(self._live_key) == self.incarnation]
        if self._handling is None:
            res = await transport.txn(guard, [Op.put(self._state_key, data)])
        else:  # not while a signal's effects are uncommitted (they would be kept twice)
            async with self._handling:
                res = await transport.txn(guard, [Op.put(self._state_key, data)])
        if not res.succeeded:
            raise IncarnationLostError(
                self.agent_id,
                key=self._live_key,
                token=self.incarnation,
                reason="a newer incarnation is live (or none): state write refused by etcd",
            )
        return res.revision


@dataclass(slots=True)
class _Hosted:
    spawned_at: int = 0  # the spec's create revision: which spawn of the id this is
    ran: bool = False  # the agent's own code has run in this attempt
    stop: anyio.Event = field(default_factory=anyio.Event)
    incarnation: int = 0
    status: str = "starting"
    deliverer: Deliverer | None = None  # its ``inbox_depth`` is the health's backlog


class NodeRuntime:
    """Hosts this node's assigned agents. Use ``cluster.serve()``."""

    def __init__(
        self,
        session: Session,
        keyspace: Keyspace,
        node_id: str,
        *,
        scheduler: Scheduler,
        registry: Registry,
        owner: Any,
        classes: Mapping[str, type] | None = None,
        on_event: EventHook | None = None,
        signals: Signals | None = None,
        doorbells: Doorbells | None = None,
    ) -> None:
        """Host the agents the scheduler assigns to ``node_id``.

        Args:
            session: this process's session (its lease holds the agents' live keys).
            keyspace: the key layout.
            node_id: this node's id.
            scheduler: reads assignments and specs.
            registry: registers each agent incarnation.
            owner: what agents see as ``ctx.cluster`` (the ``Cluster``: passed through to
                the agents, never called here).
            classes: agent class name to class; every ``@clustered`` class by default.
            on_event: called as ``on_event(name, **fields)`` for runtime events.
            signals: builds the envelopes handlers emit; with ``doorbells``, each hosted
                agent's signals are delivered to it (``delivery.py``).
            doorbells: the process's multiplexed watch stream (inbox wake-ups).
        """
        self._session, self._signals, self._doorbells = session, signals, doorbells
        self._retention = RetentionLease(session.transport, session.config.signal_retention)
        self._transport = session.transport
        self._acks = Coalescer(session.transport)  # many agents' acknowledgements go together
        self._ks = keyspace
        self._node_id = node_id
        self._scheduler = scheduler
        self._registry = registry
        self._owner = owner
        self._classes = dict(agent_classes() if classes is None else classes)
        self._on_event = on_event
        self.hosted: dict[str, _Hosted] = {}
        self.refused: dict[str, str] = {}
        self._refused_at: dict[str, int] = {}  # the assignment (mod revision) refused
        self._wake: Callable[[], None] = lambda: None
        self._decoded: dict[bytes, tuple[int, Any]] = {}
        self._assignments: WatchedView | None = None  # the view reconciled from (run)

    def _deliverer(self, ctx: AgentRunContext, agent: object, restored: Any) -> Deliverer | None:
        if self._signals is None or self._doorbells is None:
            return None
        return Deliverer(
            transport=self._transport,
            keyspace=self._ks,
            config=self._session.config,
            doorbells=self._doorbells,
            retention=self._retention,
            acks=self._acks,
            envelope=self._signals.envelope,
            ctx=ctx,
            agent=agent,
            restored=restored,
            event=self._event,
        )

    def _event(self, name: str, **fields: Any) -> None:
        log.info("%s %s", name, fields)
        metrics.agent_event(name, self._ks.tenant, self._node_id)
        if self._on_event is not None:
            try:
                self._on_event(name, **fields)
            except Exception:
                log.exception("runtime event hook failed")

    async def run(self) -> None:
        """Reconcile hosted agents with assignments, forever."""
        sched = self._scheduler
        spec_view, assign_view, _ = await sched.views()
        self._assignments = assign_view
        changed = anyio.Event()

        def wake(_: object) -> None:
            nonlocal changed
            changed.set()
            changed = anyio.Event()

        self._wake = lambda: wake(None)
        removers = [assign_view.on_change(wake), spec_view.on_change(wake)]
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    waiting = changed
                    self._reconcile(tg, spec_view, assign_view)
                    await waiting.wait()
        finally:
            for remove in removers:
                remove()

    def _reconcile(self, tg: Any, spec_view: Any, assign_view: Any) -> None:
        desired, self._decoded = desired_here(
            self._node_id,
            assign_view.items().values(),
            self._scheduler.assign_prefix,
            lambda agent_id: spec_view.get(self._ks.agent_spec(agent_id)),
            self._decoded,
        )
        for agent_id, hosted in list(self.hosted.items()):
            want = desired.get(agent_id)  # a new spawn of the id replaces the instance
            if (want is None or want.spawned_at != hosted.spawned_at) and not hosted.stop.is_set():
                self._event("stopping", agent=agent_id, reason="assignment moved or removed")
                hosted.stop.set()
        for agent_id in [a for a in self.refused if a not in desired]:
            if assign_view.get(self._ks.agent_assign(agent_id)) is None:  # despawned
                del self.refused[agent_id], self._refused_at[agent_id]
        for agent_id, want in desired.items():
            if self._refused_at.get(agent_id, -1) == want.assigned_at:
                continue  # given up on this very assignment (a new one is tried afresh)
            self.refused.pop(agent_id, None)
            if agent_id not in self.hosted:
                hosted = self.hosted[agent_id] = _Hosted(spawned_at=want.spawned_at)
                tg.start_soon(self._host, agent_id, want, hosted)

    async def _refuse(self, agent_id: str, reason: str, assigned_at: int) -> None:
        self.refused[agent_id], self._refused_at[agent_id] = reason, assigned_at
        self._event("refused", agent=agent_id, reason=reason)
        reservation = self._ks.node_reservation(self._node_id, agent_id)
        await mark_failed(  # reported on the assignment; refused here either way
            self._transport, self._ks.agent_assign(agent_id), self._node_id, reservation, reason
        )

    async def _host(self, agent_id: str, want: Desired, hosted: _Hosted) -> None:
        spec = want.spec
        try:
            cls = self._classes.get(spec.class_name)
            if cls is None:
                where = f"class {spec.class_name!r} is not registered on node {self._node_id!r}"
                await self._refuse(agent_id, where, want.assigned_at)
                return
            cs = cluster_spec(cls)
            policy = cs.restart if cs is not None else RestartPolicy()
            failures: list[float] = []
            delay = policy.backoff
            while not hosted.stop.is_set():
                lease = await self._session.wait_lease()
                try:
                    with lease.guard():
                        await self._run_once(agent_id, spec, cls, hosted)
                    if hosted.stop.is_set() or policy.mode != "always":
                        return
                except LeaseLostError:
                    self._event("cancelled", agent=agent_id, reason="session lease lost")
                    if not await self._still_mine(agent_id):
                        return  # the scheduler moved it while this node was out
                    continue
                except Exception as exc:
                    if isinstance(exc, EtcdError) and not hosted.ran:  # etcd's, not the agent's
                        self._event("waiting", agent=agent_id, reason=f"etcd: {exc}")
                    else:
                        now = time.monotonic()
                        failures = [t for t in failures if now - t < policy.window] + [now]
                        self._event("crashed", agent=agent_id, error=repr(exc))
                        if policy.mode == "never" or len(failures) > policy.max_restarts:
                            await self._refuse(agent_id, f"failed: {exc!r}", want.assigned_at)
                            return
                    with anyio.move_on_after(delay):
                        await hosted.stop.wait()
                    delay = min(delay * 2, 30.0)
        finally:
            if self.hosted.get(agent_id) is hosted:
                del self.hosted[agent_id]
            self._wake()  # reassigned here while it was stopping: reconcile again

    async def _still_mine(self, agent_id: str) -> bool:
        """Whether the agent is still assigned here (``assignment_reads``); retried until read."""
        key = self._ks.agent_assign(agent_id)
        while True:
            await self._session.wait_lease()
            try:
                return await still_assigned(
                    self._transport,
                    key,
                    self._node_id,
                    self._assignments,
                    self._session.config.request_timeout,
                )
            except EtcdError:
                await anyio.sleep(0.5)

    async def _claim(self, agent_id: str, spec: AgentSpec, hosted: _Hosted) -> int | None:
        """Create the live key, waiting out a previous incarnation's key.

        Returns ``None`` when the agent was told to stop while waiting.
        """
        caps = spec.requires
        cls = self._classes[spec.class_name]
        cs = cluster_spec(cls)
        if cs is not None:
            caps = caps | cs.capabilities
        while not hosted.stop.is_set():
            try:
                reg = await self._registry.register(
                    agent_id, capabilities=caps, class_name=spec.class_name, persistent=False
                )
                return reg.incarnation
            except AgentExistsError as exc:
                live = await self._transport.get(self._ks.agent_live(agent_id))
                if live is None:
                    continue
                if live.lease == self._session.lease.id:
                    # left over by this process (its unregister failed): remove it
                    await self._transport.txn(
                        [Compare.create_revision(live.key) == live.create_revision],
                        [Op.delete(live.key)],
                    )
                    continue
                self._event("waiting", agent=agent_id, holder=exc.node_id)
                await unless_set(
                    hosted.stop, wait_deleted, self._transport, live.key, live.mod_revision
                )
        return None

    async def _run_once(self, agent_id: str, spec: AgentSpec, cls: type, hosted: _Hosted) -> None:
        ks, hosted.ran = self._ks, False
        claimed = await self._claim(agent_id, spec, hosted)
        if claimed is None:
            return
        incarnation = hosted.incarnation = claimed
        graceful = False
        try:
            kv = await self._transport.get(ks.agent_state(agent_id))
            restored = decode_state(kv, self._transport.config.keyring)
            hosted.ran = True
            agent = cls(**spec.args)
            if restored is not None:
                await call_hook(agent, "restore_state", restored)
            ctx = AgentRunContext(
                agent_id,
                self._node_id,
                incarnation,
                self._owner,
                restored,
                ks.agent_live(agent_id),
                ks.agent_state(agent_id),
                self._transport,
            )
            deliverer = hosted.deliverer = self._deliverer(ctx, agent, restored)
            if deliverer is not None:
                object.__setattr__(ctx, "_handling", deliverer.handling)
            if not await unless_set(hosted.stop, call_hook, agent, "on_start", ctx):
                return  # told to stop (drain, despawn) while it started: nothing more runs
            hosted.status = "running"
            self._event(
                "started", agent=agent_id, incarnation=incarnation, restored=restored is not None
            )
            crashed: list[Exception] = []
            try:
                async with background_tasks() as tg:
                    wake = anyio.Event()
                    run = getattr(agent, "run", None)
                    if callable(run):

                        async def main() -> None:
                            try:  # a plain run(ctx) runs in a worker thread (call_hook)
                                await call_hook(agent, "run", ctx)
                            except Exception as exc:  # the agent's own failure
                                crashed.append(exc)
                                wake.set()

                        tg.start_soon(main)
                    if deliverer is not None:

                        async def deliver(d: Deliverer = deliverer) -> None:
                            try:
                                await d.run()
                            except Exception as exc:  # incarnation lost, or etcd refused
                                crashed.append(exc)
                                wake.set()

                        tg.start_soon(deliver)

                    async def stop_requested() -> None:
                        await hosted.stop.wait()
                        wake.set()

                    tg.start_soon(stop_requested)
                    await wake.wait()
                    graceful = not crashed
                if crashed:
                    raise crashed[0]
            finally:
                with cleanup_scope(self._session.config.request_timeout):
                    if deliverer is not None and deliverer.dirty:
                        graceful = False  # a handler's effects are not committed: keep none
                    if graceful and hasattr(agent, "get_state"):
                        try:
                            await ctx.save_state(await call_hook(agent, "get_state"))
                            self._event(
                                "checkpoint", agent=agent_id, incarnation=incarnation, final=True
                            )
                        except (EtcdError, IncarnationLostError) as exc:
                            log.warning("final checkpoint of %s failed: %s", agent_id, exc)
                    await call_hook(agent, "on_stop")
        finally:
            hosted.status = "stopped"
            with (
                cleanup_scope(self._session.config.request_timeout),
                contextlib.suppress(AgentNotFoundError, EtcdError),
            ):
                await self._registry.unregister(agent_id)
            self._event("stopped", agent=agent_id, incarnation=incarnation, graceful=graceful)
