"""``Registry.register_many``: many agents in few requests, each its own answer.

And what it shares with the lease-loss path: after a lost lease, the registrations come
back through the same bulk creation, with conflicts reported one by one.
"""

from __future__ import annotations

import anyio
import pytest

from foundation_etcd import (
    AgentExistsError,
    AmbiguousResultError,
    Config,
    InvalidIdError,
    RegistrationsFailedError,
    Registry,
    RequestTooLargeError,
    SerializationError,
    connect,
    open_session,
)
from foundation_etcd._coord.coalesce import Coalescer
from foundation_etcd.lowlevel import Transport, open_transport
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


async def test_many_registered_in_few_requests_each_as_register_would(
    etcd_config: Config,
) -> None:
    ks = etcd_config.keyspace
    async with connect(etcd_config, node_id="bulk") as c, connect(etcd_config, node_id="o") as o:
        agents = {f"w-{i:04}": {"i": i} for i in range(1000)}
        before = c.registry._writes.batches
        regs = await c.registry.register_many(agents, capabilities=["work", "bulk"])
        assert list(regs) == list(agents)  # in the order asked
        # 1,000 agents at most 127 to a request (etcd's 128 operations, a member's own one)
        assert c.registry._writes.batches - before <= 9
        lease = c.session.lease.id
        for agent_id in ("w-0000", "w-0500", "w-0999"):
            kv = await o.transport.get(ks.agent_live(agent_id))
            assert kv is not None and kv.lease == lease
            assert regs[agent_id].incarnation == kv.create_revision
            assert regs[agent_id].key == kv.key and regs[agent_id].lease_id == lease
        assert c.registry.owned() == regs
        rev = (await o.transport.status()).revision
        with anyio.fail_after(10):
            await o.registry.wait_for(rev)
        assert len(o.registry.find("work", "bulk")) == 1000
        info = o.registry.get("w-0042")
        assert info is not None and info.meta == {"i": 42} and info.node_id == "bulk"
        # each is an ordinary registration: unregistered one by one
        assert await c.registry.unregister("w-0042")
        assert await o.transport.get(ks.agent_live("w-0042")) is None
        assert await c.registry.register_many({}) == {}


async def test_ids_live_elsewhere_fail_alone_and_are_named(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        await b.registry.register("x-003")
        await b.registry.register("x-007")
        with pytest.raises(RegistrationsFailedError) as caught:
            await a.registry.register_many(dict.fromkeys(f"x-{i:03}" for i in range(10)))
        err = caught.value
        assert set(err.failed) == {"x-003", "x-007"}
        assert all(isinstance(e, AgentExistsError) for e in err.failed.values())
        assert {e.node_id for e in err.failed.values()} == {"b"}  # type: ignore[attr-defined]
        assert len(err.registered) == 8 and "2 of 10 agents not registered" in str(err)
        assert set(a.registry.owned()) == set(err.registered)  # the failed are not held
        assert b.registry.owned().keys() == {"x-003", "x-007"}  # and were not touched
        # an exception group: except* picks the conflicts out
        try:
            await a.registry.register_many({"x-003": None, "y-1": None})
        except* AgentExistsError as group:
            assert [e.agent_id for e in group.exceptions] == ["x-003"]  # type: ignore[attr-defined]
        assert "y-1" in a.registry.owned()


async def test_bad_input_is_refused_before_anything_is_sent(etcd_config: Config) -> None:
    prefix = etcd_config.keyspace.agents_live_prefix()
    async with connect(etcd_config, node_id="v") as c:
        await c.registry.register("held")
        before = len((await c.transport.get_prefix(prefix)).kvs)
        bad: list[tuple[object, type[Exception], str]] = [
            ({"ok-1": None, "bad/id": None}, InvalidIdError, "bad/id"),
            ({"ok-1": None, "m": {1: 2}}, SerializationError, "agent 'm'"),
            ({"ok-1": None, "m": {"x": object()}}, SerializationError, "agent 'm'"),
            ({"ok-1": None, "big": {"x": "y" * 70_000}}, RequestTooLargeError, "agent 'big'"),
            ({"ok-1": None, "held": None}, AgentExistsError, "held"),
            (["ok-1", "ok-2"], TypeError, "mapping"),
        ]
        for agents, error, named in bad:
            with pytest.raises(error) as caught:
                await c.registry.register_many(agents)  # type: ignore[arg-type]
            text = str(caught.value) + " ".join(getattr(caught.value, "__notes__", []))
            assert named in text, text
        with pytest.raises(InvalidIdError, match="capabilit"):
            await c.registry.register_many({"ok-1": None}, capabilities="one-str")
        with pytest.raises(TypeError, match="class_name"):
            await c.registry.register_many({"ok-1": None}, class_name=3)  # type: ignore[arg-type]
        assert len((await c.transport.get_prefix(prefix)).kvs) == before
        assert set(c.registry.owned()) == {"held"}


async def test_bulk_registrations_follow_their_persistence_after_lease_loss(
    etcd_config: Config,
) -> None:
    async with connect(etcd_config, node_id="p") as c, connect(etcd_config, node_id="q") as q:
        kept = await c.registry.register_many(dict.fromkeys(f"k-{i:03}" for i in range(300)))
        await c.registry.register_many(dict.fromkeys(["t-1", "t-2"]), persistent=False)
        # behind the owner's back: another process takes one of its ids, then its lease goes
        await q.transport.delete(etcd_config.keyspace.agent_live("k-007"))
        await q.registry.register("k-007")
        first = c.session.lease
        await q.transport.lease_revoke(first.id)
        with anyio.fail_after(etcd_config.ttl + 10):
            await wait_until(lambda: len(c.registry.owned()) == 299)
        owned = c.registry.owned()
        assert set(owned) == set(kept) - {"k-007"}  # the non-persistent ones are gone
        new = c.session.lease.id
        assert all(
            r.lease_id == new and r.incarnation > kept[a].incarnation for a, r in owned.items()
        )
        kv = await q.transport.get(etcd_config.keyspace.agent_live("k-100"))
        assert kv is not None and kv.lease == new
        assert [e.agent_id for e in c.registry.conflicts] == ["k-007"]
        assert await q.transport.get(etcd_config.keyspace.agent_live("t-1")) is None


class AnswerLost:
    """A transport whose armed ``txn`` is applied by etcd but its answer lost (ambiguous)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.armed = 0  # how many answers to lose

    def __getattr__(self, name: str) -> object:
        return getattr(self._t, name)

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        res = await self._t.txn(compare, success, failure)
        if self.armed:
            self.armed -= 1
            raise AmbiguousResultError("txn: answer lost (test)", operation="txn")
        return res


async def test_re_registration_whose_answer_was_lost_is_found_and_kept(
    etcd_config: Config,
) -> None:
    async with (
        open_transport(etcd_config) as t,
        open_session(t) as session,
        connect(etcd_config, node_id="obs") as o,
    ):
        lossy = AnswerLost(t)
        registry = Registry(
            t,
            session,
            etcd_config.keyspace,
            "lossy",
            None,
            Coalescer(lossy),  # type: ignore[arg-type]
        )
        first = await registry.register_many(dict.fromkeys(f"r-{i:03}" for i in range(200)))
        lossy.armed = 1  # the first request of the re-registration: applied, answer lost
        old = session.lease
        await o.transport.lease_revoke(old.id)
        with anyio.fail_after(etcd_config.ttl + 10):
            await wait_until(
                lambda: (
                    len(registry.owned()) == 200
                    and all(r.lease_id != old.id for r in registry.owned().values())
                )
            )
        assert lossy.armed == 0 and registry.conflicts == []  # its own keys, not conflicts
        for agent_id, reg in registry.owned().items():
            kv = await o.transport.get(etcd_config.keyspace.agent_live(agent_id))
            assert kv is not None and kv.lease == session.lease.id
            assert reg.incarnation == kv.create_revision > first[agent_id].incarnation
