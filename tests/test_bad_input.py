"""Bad input to public calls fails before anything is sent; cordons keep placement away.

Every check reads the store revision before and after with the library's transport: a call
that refused its arguments must have written nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio
import pytest

from foundation_etcd import (
    AgentRef,
    Cluster,
    Config,
    InvalidIdError,
    NodeLoad,
    NodeNotFoundError,
    NoNodeFitsError,
    PlacementRequest,
    SerializationError,
    clustered,
    connect,
)
from foundation_etcd._core.placement import fit_reason
from foundation_etcd._core.records import decode_assignment

pytestmark = pytest.mark.etcd


@clustered("bad-input-worker", resources={"cpu": 1})
class Worker:
    pass


async def revision(c: Cluster) -> int:
    """The store's revision now (a read-only transaction writes nothing)."""
    return (await c.transport.txn([], [])).revision


async def assigned_node(c: Cluster, agent_id: str) -> str | None:
    node, _, _ = decode_assignment(await c.transport.get(c.keyspace.agent_assign(agent_id)))
    return node


# registry ----------------------------------------------------------------------------------
async def test_register_names_the_bad_argument_and_writes_nothing(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c:
        before = await revision(c)
        with pytest.raises(SerializationError, match=r"^meta .*not list"):
            await c.registry.register("a1", meta=["a", "b"])  # type: ignore[arg-type]
        with pytest.raises(SerializationError, match=r"^meta .*keys must be str, not 1"):
            await c.registry.register("a1", meta={1: "x"})  # type: ignore[dict-item]
        with pytest.raises(InvalidIdError, match=r"capabilities 'gpu'.*not one str"):
            await c.registry.register("a1", capabilities="gpu")
        with pytest.raises(InvalidIdError, match="capabilities 5"):
            await c.registry.register("a1", capabilities=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="class_name must be a str"):
            await c.registry.register("a1", class_name=3)  # type: ignore[arg-type]
        with pytest.raises(InvalidIdError, match="agent id"):
            await c.registry.unregister("a/1")
        assert await revision(c) == before
        assert c.registry.owned() == {}

        await c.registry.register("a1", meta={"v": 1})
        before = await revision(c)
        with pytest.raises(SerializationError, match=r"^meta .*not tuple"):
            await c.registry.update_meta("a1", ("v", 2))  # type: ignore[arg-type]
        with pytest.raises(InvalidIdError, match="agent id"):
            await c.registry.update_meta("a/1", {"v": 2})
        assert await revision(c) == before
        info = await c.registry.lookup("a1")
        assert info is not None and info.meta == {"v": 1}


# drain and cordon: validation ----------------------------------------------------------------
async def test_drain_and_cordon_validate_the_node_id(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1", capacity={"cpu": 2}) as c:
        before = await revision(c)
        for call in (c.drain, c.cordon, c.uncordon):
            with pytest.raises(InvalidIdError, match=r"invalid node id 'a/b'"):
                await call("a/b")
            with pytest.raises(InvalidIdError, match="node id"):
                await call("")
        # an unknown node: an error, and nothing written (only reads were sent)
        for call in (c.drain, c.cordon, c.uncordon):
            with pytest.raises(NodeNotFoundError, match="'ghost' is unknown") as info:
                await call("ghost")
            assert info.value.node_id == "ghost"
        assert await revision(c) == before
        assert await c.cordoned() == frozenset()


# cordon: no placement ----------------------------------------------------------------------
class PreferA:
    """Node ``a`` whenever it fits, else the first node that does."""

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeLoad]) -> str | None:
        fits = [n.node_id for n in nodes if fit_reason(request, n) is None]
        return "a" if "a" in fits else (fits[0] if fits else None)


class OnlyA:
    """Node ``a``, fitting or not: placement must still refuse a cordoned node."""

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeLoad]) -> str | None:
        return "a"


async def test_cordoned_node_gets_no_new_agent(etcd_config: Config) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            connect(etcd_config, node_id="a", capacity={"cpu": 100})
        )
        await stack.enter_async_context(connect(etcd_config, node_id="b", capacity={"cpu": 100}))
        # another process, with views of its own: it learns of the cordon from etcd only
        other = await stack.enter_async_context(
            connect(etcd_config, node_id="other", hosts_agents=False)
        )
        with anyio.fail_after(20):
            await other.wait_for(await revision(other))
            assert (await other.spawn(Worker, "warm", placement=PreferA())).node_id == "a"
            assert await a.cordon("a") is True
            assert await a.cordon("a") is False  # already
            assert await other.cordoned() == frozenset({"a"})
            with pytest.raises(NoNodeFitsError, match="a: cordoned") as info:
                await other.spawn(Worker, "pinned", placement="pinned:a")
            assert info.value.reasons["a"] == "cordoned"
            assert await assigned_node(a, "pinned") is None  # nothing written
            assert (await other.spawn(Worker, "w0", placement=PreferA())).node_id == "b"
            with pytest.raises(NoNodeFitsError, match="a: cordoned"):
                await other.spawn(Worker, "custom", placement=OnlyA())
            assert await assigned_node(a, "warm") == "a"  # its agents stay where they are

            # straight after cordon() returns, whatever the other process's views have seen
            for i in range(10):
                await a.uncordon("a")
                await a.cordon("a")
                ref = await other.spawn(Worker, f"seq-{i}", placement=PreferA())
                assert ref.node_id == "b", i

            # while the cordon is being written: a placement on a commits before it, never
            # after (the placement transaction compares the cordon key)
            cordon_key = other.scheduler.cordon_key("a")
            for i in range(20):
                await a.uncordon("a")
                refs: list[AgentRef] = []

                async def spawn(i: int = i, refs: list[AgentRef] = refs) -> None:
                    refs.append(await other.spawn(Worker, f"race-{i}", placement=PreferA()))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(a.cordon, "a")
                    tg.start_soon(spawn)
                cordon = await a.transport.get(cordon_key)
                assert cordon is not None
                if refs[0].node_id == "a":
                    assert refs[0].revision < cordon.create_revision, i

            assert await a.uncordon("a") is True
            assert await a.uncordon("a") is False
            assert await other.cordoned() == frozenset()
            assert (await other.spawn(Worker, "pinned", placement="pinned:a")).node_id == "a"


async def test_drain_cordons_first_so_nothing_lands_on_the_node(etcd_config: Config) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            connect(etcd_config, node_id="a", capacity={"cpu": 100})
        )
        await stack.enter_async_context(connect(etcd_config, node_id="b", capacity={"cpu": 100}))
        other = await stack.enter_async_context(
            connect(etcd_config, node_id="other", hosts_agents=False)
        )
        with anyio.fail_after(30):
            await other.wait_for(await revision(other))
            for i in range(10):
                await a.spawn(Worker, f"old-{i}", placement="pinned:a")
            spawned: dict[str, str] = {}
            drained: list[tuple[str, str]] = []

            async def drain() -> None:
                drained.extend(await a.drain("a"))

            async def spawn_while_draining() -> None:
                for i in range(15):  # a whenever placement may choose it
                    ref = await other.spawn(Worker, f"new-{i}", placement=PreferA())
                    spawned[ref.agent_id] = ref.node_id

            async with anyio.create_task_group() as tg:
                tg.start_soon(spawn_while_draining)
                tg.start_soon(drain)
            moved = dict(drained)
            assert all(node == "b" for node in moved.values())
            assert {f"old-{i}" for i in range(10)} <= set(moved)
            # a new agent placed on a got there before the cordon, and the drain moved it
            assert {agent for agent, node in spawned.items() if node == "a"} <= set(moved)
            assert await a.cordoned() == frozenset({"a"})  # drain leaves it cordoned
            # none was placed on a after the cordon: nothing is assigned to a now
            everyone = [f"old-{i}" for i in range(10)] + [f"new-{i}" for i in range(15)]
            assert [x for x in everyone if await assigned_node(a, x) != "b"] == []
            assert (await other.spawn(Worker, "after", placement=PreferA())).node_id == "b"
            await a.uncordon("a")
            # other's view learns of the uncordon by its watch: let it catch up first
            rev = (await a.transport.txn([], [])).revision
            await (await other.scheduler.cordon_view()).wait_for(rev)
            assert (await other.spawn(Worker, "back", placement=PreferA())).node_id == "a"


# crafted records ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "crafted",
    [
        b'{"resources": {"cpu": -100}}',  # would free 100 cpu if summed as it stands
        b'{"resources": {"cpu": 0.5}}',
        b'{"resources": "cpu"}',
        b"{}",
        b"not json",
    ],
)
async def test_crafted_node_reservation_never_frees_capacity(
    etcd_config: Config, crafted: bytes
) -> None:
    """A node reservation the library did not write leaves its node no room, never more."""
    async with connect(etcd_config, node_id="a", capacity={"cpu": 2}) as c:
        sched = c.scheduler
        await c.transport.put(sched.res_prefix + b"a/ghost", crafted)
        _, _, res_view = await sched.views()
        await res_view.wait_for(await c.transport.revision())
        with pytest.raises(NoNodeFitsError):
            await c.spawn(Worker, "w1")
        assert await c.transport.get(c.keyspace.agent_spec("w1")) is None
        await c.transport.delete(sched.res_prefix + b"a/ghost")
        await res_view.wait_for(await c.transport.revision())
        assert (await c.spawn(Worker, "w1")).node_id == "a"  # room again once it is gone


def test_crafted_spec_resources_fit_no_node() -> None:
    from foundation_etcd.lowlevel import AgentSpec

    for raw, wanted in (
        ({"cpu": -1}, None),
        ({"cpu": 1.5}, None),
        ("cpu", None),
        ({"cpu": 2}, {"cpu": 2}),
    ):
        data = json.dumps({"class": "x", "resources": raw}).encode()
        spec = AgentSpec.decode("s", data)
        node = NodeLoad("a", {"cpu": 1_000_000}, {}, frozenset(), 0)
        reason = fit_reason(spec.request(), node)
        assert (reason is None) == (wanted is not None), (raw, spec.resources, reason)
