"""Despawn, drain, respawn and failure racing the node runtime: nothing is left behind.

Each case is a race or a fault that once left state no later call could repair: a node
reservation on a node the agent had left, an agent refused for good, an agent stuck in
``on_start`` that despawn could not stop, a whole ``serve()`` ended by one failed read,
the old instance of a respawned id left running.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from foundation_etcd import (
    AgentRunContext,
    Cluster,
    Config,
    EtcdUnavailableError,
    RestartPolicy,
    clustered,
    connect,
)
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

BROKEN = {"on": True}
STARTED: list[str] = []


@clustered("race-plain", resources={"cpu": 1})
class Plain:
    pass


@clustered("race-flaky", resources={"cpu": 1}, restart=RestartPolicy(mode="never"))
class Flaky:
    async def on_start(self, ctx: AgentRunContext) -> None:
        if BROKEN["on"]:
            raise RuntimeError("bad configuration")


@clustered("race-hangs")
class Hangs:
    async def on_start(self, ctx: AgentRunContext) -> None:
        await anyio.sleep_forever()


@clustered("race-old")
class Old:
    async def on_start(self, ctx: AgentRunContext) -> None:
        STARTED.append("old")


@clustered("race-new")
class New:
    async def on_start(self, ctx: AgentRunContext) -> None:
        STARTED.append("new")


class OnGet:
    """A transport that runs ``before`` (or ``after``) once, around a get of ``key``."""

    def __init__(
        self,
        transport: Any,
        key: bytes,
        *,
        before: Callable[[], Awaitable[None]] | None = None,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._t, self._key, self._before, self._after = transport, key, before, after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    async def get(self, key: bytes, *args: Any, **kw: Any) -> Any:
        if key == self._key and self._before is not None:
            before, self._before = self._before, None
            await before()
        kv = await self._t.get(key, *args, **kw)
        if key == self._key and self._after is not None:
            after, self._after = self._after, None
            await after()
        return kv


async def serving(stack: AsyncExitStack, cfg: Config, node: str) -> tuple[Cluster, list[Any]]:
    """A cluster that serves in the stack's task group; ``serve()``'s end is recorded."""
    c = await stack.enter_async_context(connect(cfg, node_id=node, capacity={"cpu": 4}))
    tg = await stack.enter_async_context(anyio.create_task_group())
    ended: list[Any] = []

    async def serve() -> None:
        try:
            await c.serve()
        except Exception as exc:
            ended.append(exc)

    tg.start_soon(serve)
    stack.callback(tg.cancel_scope.cancel)
    with anyio.fail_after(10):
        await wait_until(lambda: c.runtime is not None)
    return c, ended


async def state_of(c: Cluster, agent_id: str) -> str | None:
    return {s.agent_id: s.state for s in await c.agents()}.get(agent_id)


async def test_a_despawn_racing_a_drain_leaves_no_node_reservation(etcd_config: Config) -> None:
    ks = etcd_config.keyspace
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(connect(etcd_config, node_id="a", capacity={"cpu": 1}))
        b = await stack.enter_async_context(connect(etcd_config, node_id="b", capacity={"cpu": 1}))
        await a.spawn(Plain, "p1", placement="pinned:a")

        async def drain() -> None:  # between despawn's read of the assignment and its write
            assert await b.drain("a") == [("p1", "b")]

        sched: Any = a.scheduler
        sched._transport = OnGet(sched._transport, ks.agent_assign("p1"), after=drain)
        await a.despawn("p1")
        left = (await a.transport.get_prefix(ks.node_reservations_prefix())).kvs
        assert [kv.key for kv in left] == []
        await a.spawn(Plain, "q1", placement="pinned:b")  # b's capacity is free


async def test_an_agent_given_up_is_hosted_again_once_spawned_again(etcd_config: Config) -> None:
    async with AsyncExitStack() as stack:
        a, ended = await serving(stack, etcd_config, "a")
        BROKEN["on"] = True
        await a.spawn(Flaky, "f1")

        async def failed() -> bool:
            return await state_of(a, "f1") == "failed"

        async def running() -> bool:
            return await state_of(a, "f1") == "running"

        with anyio.fail_after(10):
            await wait_until(failed)
        assert a.runtime is not None and "f1" in a.runtime.refused
        assert a.runtime.refused["f1"] == "failed: RuntimeError('bad configuration')"
        reservation = etcd_config.keyspace.node_reservation("a", "f1")
        assert await a.transport.get(reservation) is None  # a failed agent holds no capacity
        BROKEN["on"] = False  # the cause is fixed; the agent is spawned again
        await a.despawn("f1")
        with anyio.fail_after(10):  # despawned: no longer reported failed (health recovers)
            await wait_until(lambda: "f1" not in a.runtime.refused)  # type: ignore[union-attr]
        await a.spawn(Flaky, "f1")
        with anyio.fail_after(10):
            await wait_until(running)
        assert "f1" not in a.runtime.refused and not ended


async def test_despawn_stops_an_agent_whose_on_start_hangs(etcd_config: Config) -> None:
    live = etcd_config.keyspace.agent_live("h1")
    async with AsyncExitStack() as stack:
        a, ended = await serving(stack, etcd_config, "a")
        runtime: Any = a.runtime
        await a.spawn(Hangs, "h1")
        with anyio.fail_after(10):
            await wait_until(lambda: getattr(runtime.hosted.get("h1"), "incarnation", 0) > 0)
        await a.despawn("h1")

        async def gone() -> bool:
            return "h1" not in runtime.hosted and await a.transport.get(live) is None

        with anyio.fail_after(10):
            await wait_until(gone)
        assert not ended


async def test_one_failed_read_while_giving_up_an_agent_ends_no_serve(
    etcd_config: Config,
) -> None:
    async with AsyncExitStack() as stack:
        a, ended = await serving(stack, etcd_config, "a")

        async def fail() -> None:
            raise EtcdUnavailableError("get: unreachable (test)")

        runtime: Any = a.runtime
        key = etcd_config.keyspace.agent_assign("f2")
        runtime._transport = OnGet(runtime._transport, key, before=fail)
        BROKEN["on"] = True
        await a.spawn(Flaky, "f2")  # it fails; giving it up reads its assignment: fails once
        with anyio.fail_after(10):
            await wait_until(lambda: "f2" in runtime.refused)
        await a.spawn(Plain, "after")  # the runtime still hosts agents

        async def running() -> bool:
            return await state_of(a, "after") == "running"

        with anyio.fail_after(10):
            await wait_until(running)
        assert not ended, ended


async def test_a_respawn_seen_as_one_change_replaces_the_old_instance(
    etcd_config: Config,
) -> None:
    STARTED.clear()
    async with AsyncExitStack() as stack:
        a, ended = await serving(stack, etcd_config, "a")
        await a.spawn(Old, "x")
        with anyio.fail_after(10):
            await wait_until(lambda: STARTED == ["old"])
        runtime: Any = a.runtime
        paused = {"on": True}  # the node's loop stalls (a GC pause) across despawn + spawn
        real = runtime._reconcile
        runtime._reconcile = lambda *args: None if paused["on"] else real(*args)
        await a.despawn("x")
        await a.spawn(New, "x")
        rev = (await a.transport.status()).revision
        for view in await a.scheduler.views():
            await view.wait_for(rev)
        paused["on"] = False
        runtime._wake()
        with anyio.fail_after(10):
            await wait_until(lambda: STARTED == ["old", "new"])

        async def new_is_live() -> bool:
            live = await a.registry.lookup("x")
            return live is not None and live.class_name == "race-new"

        with anyio.fail_after(10):
            await wait_until(new_is_live)
        assert set(runtime.hosted) == {"x"} and not ended
