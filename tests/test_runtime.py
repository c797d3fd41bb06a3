from contextlib import AsyncExitStack

import anyio
import pytest

from foundation_etcd import (
    AgentExistsError,
    AgentRunContext,
    Config,
    IncarnationLostError,
    NoNodeFitsError,
    clustered,
    connect,
)
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


@clustered("rt-counter", capabilities=["count"], critical=True, resources={"cpu": 1})
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.ctx: AgentRunContext | None = None

    def restore_state(self, state: dict) -> None:
        self.value = state["value"]

    def get_state(self) -> dict:
        return {"value": self.value}

    async def on_start(self, ctx: AgentRunContext) -> None:
        self.ctx = ctx

    async def run(self, ctx: AgentRunContext) -> None:
        while True:
            self.value += 1
            await ctx.save_state(self.get_state())
            await anyio.sleep(0.05)


@clustered("rt-plain", resources={"cpu": 1})
class Plain:
    pass


async def statuses(c):
    return {s.agent_id: s for s in await c.agents()}


async def test_spawn_runs_on_a_node_and_state_survives_drain(etcd_config: Config) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(connect(etcd_config, node_id="a", capacity={"cpu": 4}))
        b = await stack.enter_async_context(connect(etcd_config, node_id="b", capacity={"cpu": 4}))
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.serve)
            tg.start_soon(b.serve)
            ref = await a.spawn(Counter, "c1", args={"start": 100}, placement="pinned:a")
            assert ref.node_id == "a"
            with anyio.fail_after(10):
                await wait_until(
                    lambda: "c1" in a.runtime.hosted and a.runtime.hosted["c1"].status == "running"
                )
                first_inc = a.runtime.hosted["c1"].incarnation

                async def progressed() -> bool:
                    kv = await a.transport.get(etcd_config.keyspace.agent_state("c1"))
                    return kv is not None and b'"value":10' in kv.value

                await wait_until(progressed)
                assert (await statuses(a))["c1"].state == "running"
                moved = await a.drain("a")
                assert moved == [("c1", "b")]
                await wait_until(
                    lambda: "c1" in b.runtime.hosted and b.runtime.hosted["c1"].status == "running"
                )
            st = (await statuses(b))["c1"]
            assert st.node_id == "b" and st.state == "running"
            assert b.runtime.hosted["c1"].incarnation > first_inc
            # the new incarnation continued from the final checkpoint of the old one
            live = b.registry.get("c1")
            assert live is not None and live.node_id == "b"
            with pytest.raises(AgentExistsError):
                await a.spawn(Counter, "c1")
            await a.despawn("c1")
            with anyio.fail_after(10):
                await wait_until(lambda: "c1" not in b.runtime.hosted)
            tg.cancel_scope.cancel()


async def test_stale_incarnation_state_write_refused(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a", capacity={"cpu": 2}) as a:
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.serve)
            await a.spawn(Counter, "c2")
            with anyio.fail_after(10):
                await wait_until(
                    lambda: (
                        a.runtime.hosted.get("c2") is not None
                        and a.runtime.hosted["c2"].status == "running"
                    )
                )
            old = AgentRunContext(
                "c2",
                "a",
                a.runtime.hosted["c2"].incarnation - 1,
                a,
                None,
                etcd_config.keyspace.agent_live("c2"),
                etcd_config.keyspace.agent_state("c2"),
            )
            with pytest.raises(IncarnationLostError):
                await old.save_state({"value": -1})
            tg.cancel_scope.cancel()


async def test_failover_moves_critical_and_fails_others(etcd_config: Config) -> None:
    cfg = etcd_config.with_options(ttl=2.0)
    async with connect(cfg, node_id="stay", capacity={"cpu": 4}) as stay:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stay.serve)
            async with connect(cfg, node_id="goes", capacity={"cpu": 4}) as goes:
                async with anyio.create_task_group() as tg2:
                    tg2.start_soon(goes.serve)
                    await stay.spawn(Counter, "crit", placement="pinned:goes")
                    await stay.spawn(Plain, "plain", placement="pinned:goes")
                    with anyio.fail_after(10):
                        await wait_until(lambda: len(goes.runtime.hosted) == 2)
                    tg2.cancel_scope.cancel()
            # "goes" left: its lease is revoked, its node key gone
            with anyio.fail_after(cfg.ttl + 5):
                await wait_until(
                    lambda: (
                        "crit" in stay.runtime.hosted
                        and stay.runtime.hosted["crit"].status == "running"
                    )
                )
            st = await statuses(stay)
            assert st["crit"].node_id == "stay" and st["crit"].state == "running"
            assert st["plain"].state == "failed" and "goes died" in st["plain"].reason
            tg.cancel_scope.cancel()


async def test_unknown_class_is_refused_not_imported(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="strict", capacity={"cpu": 2}) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: c.serve(classes={}))
            await c.spawn(Plain, "p1")
            with anyio.fail_after(10):

                async def failed() -> bool:
                    return (await statuses(c))["p1"].state == "failed"

                await wait_until(failed)
            st = (await statuses(c))["p1"]
            assert "not registered on node 'strict'" in st.reason
            assert c.registry.get("p1") is None
            tg.cancel_scope.cancel()


async def test_concurrent_spawns_never_overcommit(etcd_config: Config) -> None:
    async with AsyncExitStack() as stack:
        n1 = await stack.enter_async_context(
            connect(etcd_config, node_id="n1", capacity={"cpu": 4})
        )
        await stack.enter_async_context(connect(etcd_config, node_id="n2", capacity={"cpu": 3}))
        spawners = [
            await stack.enter_async_context(connect(etcd_config, node_id=f"s{i}")) for i in range(3)
        ]
        placed: list[str] = []
        refused: list[str] = []

        async def spawn_many(c, i: int) -> None:
            for j in range(5):
                try:
                    ref = await c.spawn(Plain, f"p-{i}-{j}")
                    placed.append(ref.node_id)
                except NoNodeFitsError:
                    refused.append(f"p-{i}-{j}")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i, c in enumerate(spawners):
                    tg.start_soon(spawn_many, c, i)
        assert sorted(placed) == ["n1"] * 4 + ["n2"] * 3
        assert len(refused) == 8
        loads = {n.node_id: n for n in n1.scheduler.loads(await n1.view(n1.scheduler.res_prefix))}
        assert loads["n1"].used == {"cpu": 4} and loads["n2"].used == {"cpu": 3}
        with pytest.raises(NoNodeFitsError, match="cpu: needs 1, 0 free"):
            await n1.spawn(Plain, "one-more")
