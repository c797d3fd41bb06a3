"""Keys and values another client wrote into the library's key space, as etcdctl would.

Nothing the library would not write may stop a node, a view or a listing, nor stand in for
a record the library wrote: each is left out (with a warning), read as failed, or read as
nothing, and everything around it goes on.
"""

from __future__ import annotations

import anyio
import pytest

from foundation_etcd import (
    AgentContext,
    Config,
    RequestTooLargeError,
    clustered,
    connect,
)
from foundation_etcd.lowlevel import Op
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

DEEP = b"[" * 50_000  # valid-looking JSON nested past the parser's recursion limit
GARBAGE = [b"not json", b"[1,2]", b"\xff\xfe", DEEP, b'{"node": 5, "class": []}']

started: list[str] = []


@clustered("crafted-worker", resources={"cpu": 1})
class Worker:
    async def on_start(self, ctx: AgentContext) -> None:
        started.append(ctx.agent_id)


@pytest.mark.parametrize("value", GARBAGE, ids=["text", "list", "bytes", "deep", "types"])
async def test_unreadable_specs_and_assignments_stop_no_node(
    etcd_config: Config, value: bytes
) -> None:
    ks = etcd_config.keyspace
    started.clear()
    async with connect(etcd_config, node_id="n1", capacity={"cpu": 8}) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.serve)
            await c.spawn(Worker, "before")
            # an assignment to this node with a garbage spec, a garbage assignment with a
            # good spec, and keys whose ids the library never writes
            assigned = b'{"node": "n1", "status": "assigned", "reason": ""}'
            await c.transport.put(ks.agent_assign("bad-spec"), assigned)
            await c.transport.put(ks.agent_spec("bad-spec"), value)
            await c.transport.put(ks.agent_spec("bad-assign"), b'{"class": "crafted-worker"}')
            await c.transport.put(ks.agent_assign("bad-assign"), value)
            await c.transport.put(ks.agent_assigns_prefix() + b"\xff", assigned)
            await c.transport.put(ks.agent_specs_prefix() + b"bad/id", b'{"class": "x"}')
            # an assignment naming a node id no node can have (failover and despawn build
            # keys from it)
            spec = b'{"class": "crafted-worker", "critical": true}'
            await c.transport.put(ks.agent_spec("bad-node"), spec)
            bad_node = b'{"node": "no/such", "status": "assigned"}'
            await c.transport.put(ks.agent_assign("bad-node"), bad_node)
            await c.spawn(Worker, "after")  # the node still places and runs agents
            with anyio.fail_after(10):
                await wait_until(lambda: started == ["before", "after"])
            states = {a.agent_id: a.state for a in await c.agents()}
            # the unreadable assignment is read as failed (nobody runs it); the unreadable
            # spec is left out
            assert states == {
                "before": "running",
                "after": "running",
                "bad-assign": "failed",
                "bad-node": "failed",
            }
            await c.despawn("bad-node")  # it can be removed
            await c.spawn(Worker, "last")  # and serve() (failover included) runs on
            with anyio.fail_after(10):
                await wait_until(lambda: started == ["before", "after", "last"])
            assert [t["name"] for t in await c.tools()] == []  # Worker has no actions
            assert c.runtime is not None and set(c.runtime.hosted) == {"before", "after", "last"}
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("value", GARBAGE, ids=["text", "list", "bytes", "deep", "types"])
async def test_crafted_registrations_stay_out_of_every_view(
    etcd_config: Config, value: bytes
) -> None:
    ks = etcd_config.keyspace
    live = ks.agents_live_prefix()
    more = [
        b'{"node": "x", "capabilities": "text"}',  # a str, not a list of names
        b'{"node": "x", "capabilities": [1, "a"]}',
        b'{"node": "x", "meta": [1]}',  # metadata that is not an object
        b'{"node": "a/b", "capabilities": ["text"]}',  # a node id no node can have
        b'{"node": "x", "capabilities": ["no spaces"]}',
        # well formed, but under no lease: it would look live for ever
        b'{"node": "x", "class": "", "capabilities": ["text"], "meta": {}}',
    ]
    async with connect(etcd_config, node_id="n1") as c:
        await c.registry.register("ok", capabilities=["text"])
        await c.registry.register("spoiled", capabilities=["text"])
        writes = [(live + b"junk-%d" % i, v) for i, v in enumerate([value, *more])]
        writes += [(live + b"bad/id", b"{}"), (live + b"\xff", b"{}")]
        for key, v in writes:
            await c.transport.put(key, v)
        # one transaction: a crafted key beside a valid one, and a valid one spoiled
        good = b'{"node": "x", "class": "", "capabilities": ["text"], "meta": {}}'
        lease = (await c.transport.lease_grant(60)).id
        res = await c.transport.txn(
            [],
            [
                Op.put(live + b"\xfe", b"{}"),
                Op.put(ks.agent_live("zgood"), good, lease=lease),
                Op.put(ks.agent_live("spoiled"), value),
            ],
        )
        with anyio.fail_after(10):
            await c.registry.wait_for(res.revision)
        expected = ["ok", "zgood"]
        assert [a.agent_id for a in c.registry.find("text")] == expected
        assert c.registry.get("spoiled") is None  # rewritten as garbage: not live any more
        # a process that starts now lists the same, and connects at all
        async with connect(etcd_config, node_id="n2") as d:
            await d.registry.wait_for(res.revision)
            assert [a.agent_id for a in d.registry.find("text")] == expected
            assert [a.agent_id for a in d.registry.all()] == expected
        # a crafted key removed: nothing breaks
        await c.transport.delete(live + b"\xff")
        rev = (await c.transport.delete(live + b"junk-0")).revision
        await c.registry.wait_for(rev)
        assert len(c.registry) == 2


async def test_a_node_key_naming_another_node_does_not_stand_in_for_it(
    etcd_config: Config,
) -> None:
    ks = etcd_config.keyspace
    async with connect(etcd_config, node_id="n2", capacity={"cpu": 4}) as n2:
        async with connect(etcd_config, node_id="n1", capacity={"cpu": 4}) as n1:
            forged = b'{"node_id": "n1", "capacity": {"cpu": 1000}}'
            lease = await n2.transport.lease_grant(60)
            await n2.transport.put(ks.nodes_prefix() + b"zzz", forged)  # no lease
            await n2.transport.put(ks.nodes_prefix() + b"yyy", forged, lease=lease.id)
            for bad in (b"a/b", b"_x", b"has space", b"n" * 300):  # ids no node can have
                crafted = b'{"node_id": "%s", "capacity": {"cpu": 1000}}' % bad
                await n2.transport.put(ks.nodes_prefix() + bad, crafted, lease=lease.id)
            crafted = b'{"node_id": "n9", "capacity": {"c p u": 8}}'  # a bad resource name
            await n2.transport.put(ks.nodes_prefix() + b"n9", crafted, lease=lease.id)
            rev = (await n2.transport.put(ks.nodes_prefix() + b"\xff", forged)).revision
            await n2.wait_for(rev)
            n1_seen = n2.node("n1")
            assert n1_seen is not None and n1_seen.lease_id == n1.session.lease.id
            assert n1_seen.capacity == {"cpu": 4}
            assert set(n2.nodes()) == {"n1", "n2"}
        # n1 left: the forged keys do not keep it alive
        with anyio.fail_after(10):
            await wait_until(lambda: set(n2.nodes()) == {"n2"})
        assert n2.node("n1") is None


async def test_a_node_key_deleted_by_another_client_is_announced_again(
    etcd_config: Config,
) -> None:
    key = etcd_config.keyspace.node("n1")
    async with connect(etcd_config, node_id="n1") as c, connect(etcd_config, node_id="o") as o:
        deleted = (await o.transport.delete(key)).revision
        with anyio.fail_after(10):
            while True:
                kv = await o.transport.get(key)
                if kv is not None:
                    break
                await anyio.sleep(0.01)
        assert kv.create_revision > deleted and kv.lease == c.session.lease.id
        await o.wait_for(kv.mod_revision)
        assert "n1" in o.nodes()
    # closed: its key goes and stays gone
    with anyio.fail_after(10):
        async with connect(etcd_config, node_id="o2") as o2:
            await wait_until(lambda: "n1" not in o2.nodes())
            assert await o2.transport.get(key) is None


async def test_deeply_nested_values_read_as_malformed(etcd_config: Config) -> None:
    ks = etcd_config.keyspace
    async with connect(etcd_config, node_id="n1") as c:
        counter = c.counter("crafted", shards=2)
        await counter.add(5)
        shards = (await c.transport.get_prefix(ks.counter_prefix("crafted"))).kvs
        assert len(shards) == 1  # the one shard the add wrote
        other = next(
            k for k in map(lambda i: ks.counter_shard("crafted", i), (0, 1)) if k != shards[0].key
        )
        rev = (await c.transport.put(other, DEEP)).revision
        assert await counter.value(revision=rev) == 5  # the crafted shard counts as nothing
        rev = (await c.transport.put(shards[0].key, DEEP)).revision
        assert await counter.value(revision=rev) == 0
        await c.transport.put(ks.subscriptions_prefix() + b"junk", DEEP)
        assert "junk" not in await c.signals.subscriptions()


async def test_metadata_limit_is_exactly_64_kib(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c:
        fits = {"x": "y" * (64 * 1024 - len('{"x":""}'))}
        await c.registry.register("at-limit", meta=fits)
        over = {"x": "y" * (64 * 1024 - len('{"x":""}') + 1)}
        with pytest.raises(RequestTooLargeError, match="65537 bytes exceeds the limit of 65536"):
            await c.registry.register("over", meta=over)
        assert await c.registry.lookup("over") is None
