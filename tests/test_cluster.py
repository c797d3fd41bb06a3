from typing import Any

import anyio
import anyio.lowlevel
import pytest

from foundation_etcd import (
    AgentContext,
    AgentExistsError,
    AgentNotFoundError,
    AmbiguousResultError,
    ChangeKind,
    Config,
    ConfigurationError,
    EtcdUnavailableError,
    InvalidIdError,
    NodeExistsError,
    RequestTooLargeError,
    SerializationError,
    clustered,
    connect,
)
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


@clustered("greeter-test", capabilities=["greet", "chat"])
class Greeter:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def on_start(self, ctx: AgentContext) -> None:
        self.events.append(f"start:{ctx.agent_id}:{ctx.node_id}")

    def on_stop(self) -> None:
        self.events.append("stop")

    def greet(self, name: str) -> str:
        return f"hello {name}"


async def test_nodes_see_each_other_and_leave(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1", capacity={"cpu": 4}, capabilities=["gpu"]) as a:
        async with connect(etcd_config, node_id="n2") as b:
            with anyio.fail_after(5):
                await wait_until(lambda: not ("n2" not in a.nodes()))
            n1 = b.node("n1")
            assert n1 is not None and n1.capacity == {"cpu": 4} and "gpu" in n1.capabilities
            assert n1.lease_id == a.session.lease.id
            async with a.watch_nodes() as changes:
                assert changes is not None
        with anyio.fail_after(5):
            await wait_until(lambda: "n2" not in a.nodes())


async def test_duplicate_node_id_refused(etcd_config: Config) -> None:
    cfg = etcd_config.with_options(ttl=2.0)
    async with connect(cfg, node_id="dup"):
        with anyio.fail_after(10), pytest.raises(NodeExistsError, match="dup"):
            async with connect(cfg, node_id="dup"):
                pass


async def test_register_lookup_find_unregister(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c:
        reg = await c.registry.register("a1", capabilities=["x", "y"], meta={"v": 1})
        await c.registry.register("a2", capabilities=["y"])
        await c.registry.wait_for(reg.incarnation + 1)
        info = await c.registry.lookup("a1")
        assert info is not None and info.incarnation == reg.incarnation and info.node_id == "n1"
        assert c.registry.get("a1") == info
        assert [a.agent_id for a in c.registry.find("y")] == ["a1", "a2"]
        assert [a.agent_id for a in c.registry.find("x", "y")] == ["a1"]
        assert c.registry.find("z") == []
        await c.registry.update_meta("a1", {"v": 2})
        with anyio.fail_after(5):
            await wait_until(lambda: c.registry.get("a1").meta == {"v": 2})
        assert await c.registry.unregister("a1")
        assert await c.registry.lookup("a1") is None
        with pytest.raises(AgentNotFoundError):
            await c.registry.unregister("a1")


async def test_duplicate_registration_names_holder(etcd_config: Config) -> None:
    async with (
        connect(etcd_config, node_id="holder") as a,
        connect(etcd_config, node_id="other") as b,
    ):
        await a.registry.register("same")
        with pytest.raises(AgentExistsError, match="holder") as info:
            await b.registry.register("same")
        assert info.value.node_id == "holder" and info.value.lease_id == a.session.lease.id
        with pytest.raises(AgentExistsError):
            await a.registry.register("same")


async def test_bad_input_writes_nothing(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c:
        prefix = etcd_config.keyspace.agents_live_prefix()
        with pytest.raises(InvalidIdError):
            await c.registry.register("a/b")
        with pytest.raises(InvalidIdError):
            await c.registry.register("a\x01")
        with pytest.raises(SerializationError, match="agent metadata"):
            await c.registry.register("ok", meta={"s": {1, 2}})
        with pytest.raises(RequestTooLargeError):
            await c.registry.register("ok", meta={"blob": "x" * 100_000})
        with pytest.raises(InvalidIdError):
            await c.registry.register("ok", capabilities=["bad cap"])
        assert (await c.transport.get_prefix(prefix)).kvs == []
        assert c.registry.owned() == {}


async def test_host_runs_hooks_and_unregisters(etcd_config: Config) -> None:
    agent = Greeter()
    async with connect(etcd_config, node_id="n1") as c:
        async with c.host(agent, agent_id="g1") as hosted:
            assert hosted.registration is not None
            assert agent.events == ["start:g1:n1"]
            found = await c.registry.lookup("g1")
            assert found is not None and found.capabilities == {"greet", "chat"}
            assert found.class_name == "greeter-test"
            assert agent.greet("x") == "hello x"  # untouched
        assert agent.events[-1] == "stop"
        assert await c.registry.lookup("g1") is None


async def test_watch_registry_changes(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c:
        async with c.registry.watch() as changes:
            await c.registry.register("w1", capabilities=["q"])
            await c.registry.unregister("w1")
            got = []
            with anyio.fail_after(5):
                while len(got) < 2:
                    got.extend(await changes.receive())
        assert [(x.kind, x.agent.agent_id) for x in got] == [
            (ChangeKind.ADDED, "w1"),
            (ChangeKind.REMOVED, "w1"),
        ]


async def test_registrations_come_back_after_lease_loss(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c, connect(etcd_config, node_id="obs") as o:
        reg = await c.registry.register("phoenix", capabilities=["fly"])
        first = c.session.lease
        await o.transport.lease_revoke(first.id)  # behind the owner's back
        with anyio.fail_after(etcd_config.ttl + 5):
            while True:
                info = o.registry.get("phoenix")
                node = o.node("n1")
                if info and node and info.lease_id != first.id and node.lease_id != first.id:
                    break
                await anyio.sleep(0.02)
            # the owner learns its new incarnation from the transaction's answer, which
            # may come after the observer's watch event
            await wait_until(lambda: "phoenix" in c.registry.owned())
        assert info.incarnation > reg.incarnation
        assert c.registry.owned()["phoenix"].incarnation == info.incarnation


class FailsNext:
    """A transport whose next armed write under a lease but ``old`` fails (applied or not)."""

    def __init__(self, transport: Any, applied: bool, old: int) -> None:
        self._t, self.applied, self.armed, self._old = transport, applied, 0, old

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        leases = {getattr(op, "lease", 0) for op in success} - {0, self._old}
        if self.armed and leases:
            self.armed -= 1
            if not self.applied:
                raise EtcdUnavailableError("txn: not sent (test)")
            await self._t.txn(compare, success, failure)
            raise AmbiguousResultError("txn: answer lost (test)", operation="txn")
        return await self._t.txn(compare, success, failure)


@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied"])
async def test_a_node_whose_announcement_fails_after_a_lease_loss_is_announced(
    etcd_config: Config, applied: bool
) -> None:
    """A failed re-announcement is tried again: the node does not stay dark for good."""
    async with connect(etcd_config, node_id="n1") as c, connect(etcd_config, node_id="obs") as o:
        first = c.session.lease
        flaky = FailsNext(c._membership._transport, applied, first.id)  # type: ignore[union-attr]
        c._membership._transport = flaky  # type: ignore[union-attr]
        flaky.armed = 1  # the announcement under the new lease fails once
        await o.transport.lease_revoke(first.id)
        with anyio.fail_after(etcd_config.ttl + 5):
            await wait_until(lambda: (n := o.node("n1")) is not None and n.lease_id != first.id)
        assert flaky.armed == 0
        assert o.node("n1").lease_id == c.session.lease.id  # type: ignore[union-attr]


async def test_other_process_sees_registration_within_a_watch_round_trip(
    etcd_config: Config,
) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        lat = []
        for i in range(20):
            reg = await a.registry.register(f"r{i}")
            t0 = anyio.current_time()
            with anyio.fail_after(2):
                while b.registry.get(f"r{i}") is None:
                    await anyio.lowlevel.checkpoint()
            lat.append(anyio.current_time() - t0)
            assert b.registry.get(f"r{i}").incarnation == reg.incarnation
        lat.sort()
        assert lat[len(lat) // 2] < 0.05, lat  # the watch event arrives about with the reply


@clustered("lazy-view-test", resources={"cpu": 1})
class LazyHosted:
    def __init__(self) -> None:
        self.started = anyio.Event()

    async def on_start(self, ctx: AgentContext) -> None:
        self.started.set()


async def test_without_the_agents_view_registering_works_and_reads_say_why(
    etcd_config: Config,
) -> None:
    prefix = etcd_config.keyspace.agents_live_prefix()
    async with (
        connect(etcd_config, node_id="lazy", watch_agents=False) as c,
        connect(etcd_config, node_id="obs") as o,
    ):
        assert not c.registry.watching and prefix not in c.views.opened()
        reg = await c.registry.register("lz1", capabilities=["q"])
        await o.registry.wait_for(reg.incarnation)
        assert o.registry.get("lz1").node_id == "lazy"
        assert (await c.registry.lookup("lz1")).incarnation == reg.incarnation
        for read in (lambda: c.registry.get("lz1"), c.registry.find, c.registry.all):
            with pytest.raises(ConfigurationError, match="watch_agents=False"):
                read()
        with pytest.raises(ConfigurationError):
            len(c.registry)
        assert prefix not in c.views.opened()  # a refused read opened nothing
        # a lost lease: the registration comes back under the new one, with no view
        first = c.session.lease
        await o.transport.lease_revoke(first.id)
        with anyio.fail_after(etcd_config.ttl + 5):
            await wait_until(
                lambda: (
                    "lz1" in c.registry.owned() and c.registry.owned()["lz1"].lease_id != first.id
                )
            )
        assert not c.registry.watching
        # opened on demand: the current state, then the events after it
        await c.registry.open()
        await c.registry.open()  # once
        assert c.registry.watching and prefix in c.views.opened()
        assert c.registry.get("lz1").incarnation == c.registry.owned()["lz1"].incarnation
        reg2 = await o.registry.register("lz2", capabilities=["q"])
        await c.registry.wait_for(reg2.incarnation)
        assert [a.agent_id for a in c.registry.find("q")] == ["lz1", "lz2"]
        assert len(c.registry) == 2


async def test_without_the_agents_view_a_node_hosts_and_listings_open_it(
    etcd_config: Config,
) -> None:
    lazy = connect(etcd_config, node_id="lazy-host", capacity={"cpu": 2}, watch_agents=False)
    async with lazy as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.serve)
            await c.spawn(LazyHosted, "lh1")
            with anyio.fail_after(10):
                await wait_until(
                    lambda: (
                        c.runtime is not None
                        and "lh1" in c.runtime.hosted
                        and c.runtime.hosted["lh1"].status == "running"
                    )
                )
                statuses = {s.agent_id: s.state for s in await c.agents()}  # opens the view
            assert statuses == {"lh1": "running"}
            assert c.registry.watching and c.registry.get("lh1").node_id == "lazy-host"
            tg.cancel_scope.cancel()


async def test_a_registration_made_under_the_new_lease_survives_the_renewal_hook(
    etcd_config: Config,
) -> None:
    """The runtime may claim its agents under a replacement lease before the registry's
    renewal hook runs: the hook must leave what was made under that lease alone."""
    async with connect(etcd_config, node_id="n1") as c, connect(etcd_config, node_id="obs") as o:
        first = c.session.lease
        await c.registry.register("old", persistent=False)
        await o.transport.lease_revoke(first.id)
        with anyio.fail_after(etcd_config.ttl + 5):
            await wait_until(lambda: c.session.lease.id != first.id)
        new = await c.session.wait_lease()
        reg = await c.registry.register("claimed", persistent=False)  # as the runtime does
        assert reg.lease_id == new.id
        await c.registry._reregister_all(new)  # the hook, run after the claim
        assert set(c.registry.owned()) == {"claimed"}  # "old" went with its lease
        assert await c.registry.unregister("claimed")  # still held: its key goes with it
        assert await o.transport.get(etcd_config.keyspace.agent_live("claimed")) is None
