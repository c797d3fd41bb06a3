from contextlib import asynccontextmanager

import anyio
import pytest

from foundation_etcd import (
    Config,
    Election,
    LeadershipLostError,
    LeaseLostError,
    OwnerInfo,
    Session,
    open_session,
)
from foundation_etcd.lowlevel import Op, open_transport
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


@asynccontextmanager
async def three_sessions(cfg: Config):
    """Three independent sessions (as three processes would have).

    (Not a fixture: pytest-asyncio may tear an async fixture down in another task, which
    anyio task groups refuse.)
    """
    async with (
        open_transport(cfg) as t,
        open_session(t) as a,
        open_session(t) as b,
        open_session(t) as c,
    ):
        yield a, b, c


async def test_uncontended_campaign_is_one_transaction(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        a, _, _ = sessions
        e = Election(a, "e1")
        async with e.campaign(b"me") as lead:
            info = await e.leader()
            assert info == OwnerInfo(lead.key, lead.fencing_token, b"me", a.lease.id)
            assert lead.key.endswith(f"{a.lease.id:x}".encode())
            await lead.proclaim("still me")
            assert (await e.leader()).value == b"still me"
        assert await e.leader() is None


async def test_successive_leaders_have_increasing_tokens(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        order: list[tuple[str, int]] = []

        async def run(name: str, s: Session, started: anyio.Event | None) -> None:
            async with Election(s, "e2").campaign(name) as lead:
                order.append((name, lead.fencing_token))
                if started:
                    started.set()
                await anyio.sleep(0.2)

        first = anyio.Event()
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "a", sessions[0], first)
                await first.wait()
                tg.start_soon(run, "b", sessions[1], None)
                await anyio.sleep(0.05)
                tg.start_soon(run, "c", sessions[2], None)
        assert [n for n, _ in order] == ["a", "b", "c"]  # FIFO by create revision
        tokens = [t for _, t in order]
        assert tokens == sorted(tokens) and len(set(tokens)) == 3


async def test_stale_leader_write_is_refused(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        a, b, _ = sessions
        t = a.transport
        target = etcd_config.keyspace.key("fenced")
        stale = []
        with anyio.fail_after(10), pytest.raises(LeadershipLostError, match="deleted"):
            async with Election(a, "e3").campaign() as lead:
                await lead.put(target, b"from a")
                stale.append(lead)
                await t.delete(lead.key)  # as if its lease had expired
                await anyio.sleep(10)  # cancelled: the leader notices its key is gone
        lead = stale[0]
        async with Election(b, "e3").campaign() as lead_b:
            assert lead_b.fencing_token > lead.fencing_token
            # the stale leader's fenced write, sent as it would be, is refused by etcd
            res = await t.txn([lead.guard], [Op.put(target, b"stale write")])
            assert not res.succeeded
            with pytest.raises(LeadershipLostError) as info:
                await lead.put(target, b"stale write")
            assert info.value.token == lead.fencing_token
            await lead_b.put(target, b"from b")
        kv = await t.get(target)
        assert kv is not None and kv.value == b"from b"


async def test_guarded_txn_keeps_callers_compares(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        a, _, _ = sessions
        k = etcd_config.keyspace.key("cas")
        async with Election(a, "e4").campaign() as lead:
            from foundation_etcd.lowlevel import Compare

            r1 = await lead.txn([Compare.version(k) == 0], [Op.put(k, b"1")], [Op.get(k)])
            r2 = await lead.txn([Compare.version(k) == 0], [Op.put(k, b"2")], [Op.get(k)])
            assert r1.succeeded and not r2.succeeded and r2.range(0).kvs[0].value == b"1"


async def test_body_cancelled_when_key_deleted(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        a, _, _ = sessions
        reached_end = False
        with anyio.fail_after(10), pytest.raises(LeadershipLostError, match="own key deleted"):
            async with Election(a, "e5").campaign() as lead:
                await a.transport.delete(lead.key)
                await anyio.sleep(5)
                reached_end = True
        assert not reached_end


async def test_campaign_aborts_when_session_lost(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        a, b, _ = sessions
        e = Election(a, "e6")
        async with e.campaign():
            waiting = anyio.Event()

            async def candidate() -> None:
                with pytest.raises(LeaseLostError):
                    waiting.set()
                    async with Election(b, "e6").campaign():
                        raise AssertionError("became leader without a lease")

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(candidate)
                    await waiting.wait()
                    await anyio.sleep(0.2)
                    await b.transport.lease_revoke(b.lease.id)
        # no candidacy of b's first lease is left behind
        res = await a.transport.get_prefix(a.config.keyspace.election_prefix("e6"))
        assert len(res.kvs) == 0


async def test_waiter_rechecks_its_own_key(etcd_config: Config) -> None:
    """etcd's Go client gap: a waiter whose key vanished must not become leader."""
    async with three_sessions(etcd_config) as sessions:
        a, b, _ = sessions
        prefix = a.config.keyspace.election_prefix("e7")
        outcome: list[str] = []
        resign = anyio.Event()

        async def leader() -> None:
            async with Election(a, "e7").campaign():
                await resign.wait()

        async def candidate() -> None:
            try:
                async with Election(b, "e7").campaign():
                    outcome.append("became leader")
            except LeaseLostError as exc:
                outcome.append(exc.reason)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(leader)
                await wait_candidates(a, prefix, 1)
                tg.start_soon(candidate)
                await wait_candidates(a, prefix, 2)
                await a.transport.delete(prefix + f"{b.lease.id:x}".encode())
                resign.set()  # wakes the waiter, whose key is gone
        assert outcome == ["own key deleted while waiting"]


async def wait_candidates(s: Session, prefix: bytes, count: int) -> None:
    """Wait until the election has ``count`` candidates (bounded by the caller)."""

    async def enough() -> bool:
        return len((await s.transport.get_prefix(prefix)).kvs) >= count

    await wait_until(enough)


async def test_timed_out_campaign_leaves_nothing(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        a, b, _ = sessions
        prefix = a.config.keyspace.election_prefix("e8")
        async with Election(a, "e8").campaign():
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    async with Election(b, "e8").campaign():
                        pass
            res = await a.transport.get_prefix(prefix)
            assert [kv.lease for kv in res.kvs] == [a.lease.id]


async def test_observe_leader_changes(etcd_config: Config) -> None:
    async with three_sessions(etcd_config) as sessions:
        a, b, _ = sessions
        seen: list[OwnerInfo | None] = []
        e = Election(a, "e9")
        async with e.observe() as leaders:
            seen.append(await leaders.receive())
            async with e.campaign(b"A"):
                seen.append(await leaders.receive())
            seen.append(await leaders.receive())
            async with Election(b, "e9").campaign(b"B") as lb:
                await lb.proclaim(b"B2")
                with anyio.fail_after(5):
                    while len(seen) < 5:
                        seen.append(await leaders.receive())
        assert seen[0] is None and seen[1].value == b"A" and seen[2] is None
        assert [s.value for s in seen[3:5]] == [b"B", b"B2"]
