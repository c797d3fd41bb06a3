import json
import random
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from foundation_etcd import (
    AmbiguousResultError,
    Config,
    InvalidIdError,
    Session,
    ShardedCounter,
    TransactionConflictError,
    open_session,
)
from foundation_etcd._coord.views import SharedViews
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


@asynccontextmanager
async def sessions_of(cfg: Config, n: int):
    """``n`` sessions, each on its own connection (as separate processes would be)."""
    async with AsyncExitStack() as stack:
        out: list[Session] = []
        for _ in range(n):
            t = await stack.enter_async_context(open_transport(cfg))
            out.append(await stack.enter_async_context(open_session(t)))
        yield out


async def test_exact_totals_with_many_tasks_over_several_sessions(etcd_config: Config) -> None:
    """3 sessions x 6 tasks x 25 adds of random sign and size: exact and view totals agree."""
    rng = random.Random(7)
    plan = [[rng.choice([1, 1, 2, -1, -3, 5]) for _ in range(25)] for _ in range(18)]
    expected = sum(map(sum, plan))
    async with sessions_of(etcd_config, 3) as ss:
        # as many shards as writers (18): random first shards collide, then writers spread
        counters = [ShardedCounter(s, "hits", shards=18) for s in ss]

        async def worker(c: ShardedCounter, adds: list[int]) -> None:
            for n in adds:
                await c.add(n)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, adds in enumerate(plan):
                    tg.start_soon(worker, counters[i % 3], adds)
            assert await counters[0].exact() == expected
            revision = await ss[0].transport.revision()
            for c in counters:  # each view reaches the revision of the last add
                assert await c.value(revision=revision) == expected
        stats = [c.statistics() for c in counters]
        assert sum(s.adds for s in stats) == 18 * 25
        assert all(s.ambiguous == 0 for s in stats)
        kvs = (await ss[0].transport.get_prefix(ss[0].config.keyspace.counter_prefix("hits"))).kvs
        assert 1 <= len(kvs) <= 18
        assert all(kv.lease == 0 for kv in kvs)  # nothing leased: outlives its writers
        doc = json.loads(kvs[0].value)  # readable by any client: {"n": total, "op": id}
        assert set(doc) == {"n", "op"} and isinstance(doc["n"], int)
        assert sum(json.loads(kv.value)["n"] for kv in kvs) == expected


async def test_view_value_catches_up_and_is_shared(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (a, b), anyio.create_task_group() as tg:
        views = SharedViews(a.transport, tg)
        reader = ShardedCounter(a, "seen", views=views)
        writer = ShardedCounter(b, "seen")
        with anyio.fail_after(20):
            assert await reader.value() == 0
            assert reader.view is await views(a.config.keyspace.counter_prefix("seen"))
            async with reader.view.subscribe() as changes:
                for _ in range(5):
                    await writer.add(3)
                async for _ in changes:  # woken by the view, never by a sleep
                    if await reader.value() == 15:
                        break
            # read-your-writes: a handle's value includes its own last add, at once
            await writer.add(-20)
            assert await writer.value() == -5
            assert await writer.exact() == -5
        tg.cancel_scope.cancel()


async def test_mixed_shard_settings_count_together(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 3) as ss:
        # (handle, tasks): shard 0 is every handle's; 1-3 two handles'; 4-199 one's
        handles = [
            (ShardedCounter(ss[0], "mixed", shards=1, max_attempts=500), 2),
            (ShardedCounter(ss[1], "mixed", shards=4), 3),
            (ShardedCounter(ss[2], "mixed", shards=200), 4),
        ]
        expected = 0
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i, (h, tasks) in enumerate(handles):
                    for j in range(tasks):
                        n = (i + 1) * (j + 1) * (-1 if j % 2 else 1)
                        expected += 10 * n

                        async def run(h: ShardedCounter = h, n: int = n) -> None:
                            for _ in range(10):
                                await h.add(n)

                        tg.start_soon(run)
            for h, _ in handles:
                assert await h.exact() == expected
                assert await h.value(revision=await ss[0].transport.revision()) == expected
        prefix = ss[0].config.keyspace.counter_prefix("mixed")
        keys = [kv.key for kv in (await ss[0].transport.get_prefix(prefix)).kvs]
        assert any(k > ss[0].config.keyspace.counter_shard("mixed", 3) for k in keys), keys


async def test_bad_input_raises_before_anything_is_sent(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 1) as (s,):
        rev = await s.transport.revision()
        for name in ("", "a/b", "_x", "x" * 129, 5):
            with pytest.raises(InvalidIdError):
                ShardedCounter(s, name)  # type: ignore[arg-type]
        for shards in (0, -1, 1001):
            with pytest.raises(ValueError, match="shards"):
                ShardedCounter(s, "v", shards=shards)
        for shards in (True, 2.0, "3"):
            with pytest.raises(TypeError):
                ShardedCounter(s, "v", shards=shards)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ShardedCounter(s, "v", max_attempts=0)
        c = ShardedCounter(s, "v", shards=1000)
        for bad in ("1", 1.0, True, None):
            with pytest.raises(TypeError):
                await c.add(bad)  # type: ignore[arg-type]
        for big in (2**53, -(2**53)):
            with pytest.raises(ValueError):
                await c.add(big)
        await c.add(0)  # nothing to write
        assert await c.exact() == 0
        assert await s.transport.revision() == rev
        assert c.statistics().txns == 0
        await c.add(2**53 - 1)
        await c.add(-(2**53 - 1))
        assert await c.exact() == 0


async def test_contention_statistics_and_reset(etcd_config: Config) -> None:
    """One shard, two handles: conflicts are retried and counted; tasks of a handle don't clash."""
    async with sessions_of(etcd_config, 2) as (a, b):
        # one shard for four writers is a CAS counter: allow it many attempts
        ca = ShardedCounter(a, "hot", shards=1, max_attempts=500)
        cb = ShardedCounter(b, "hot", shards=1, max_attempts=500)

        async def hammer(c: ShardedCounter) -> None:
            for _ in range(30):
                await c.add(1)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for c in (ca, cb, ca, cb):
                    tg.start_soon(hammer, c)
            assert await ca.exact() == 120
            sa, sb = ca.statistics(), cb.statistics()
            assert (sa.adds, sb.adds) == (60, 60)
            assert sa.conflicts + sb.conflicts > 0
            for s in (sa, sb):
                assert s.txns == s.adds + s.conflicts  # every conflict was one retry
                assert s.retry_fraction == s.conflicts / s.txns

            # tasks of one handle pick shards no other task of it has in flight
            solo = ShardedCounter(a, "solo", shards=4)
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(hammer, solo)
            assert await solo.exact() == 120
            assert solo.statistics().conflicts == 0

            # reset subtracts the exact value; adds running meanwhile are kept. The adders
            # wait half way until the reset has sent its read (else, on a loaded machine,
            # they could finish before it starts), then run on beside it
            removed = 0
            halfway: list[ShardedCounter] = []
            go = anyio.Event()

            async def gated(c: ShardedCounter) -> None:
                for i in range(30):
                    if i == 15:
                        halfway.append(c)
                        await go.wait()
                    await c.add(1)

            async def reset() -> None:
                nonlocal removed
                removed = await ca.reset()

            async def reset_midway() -> None:
                await wait_until(lambda: len(halfway) == 2)  # 150 in, 30 to come
                async with anyio.create_task_group() as inner:
                    inner.start_soon(reset)
                    await anyio.lowlevel.checkpoint()  # the reset runs to its read first
                    go.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(gated, ca)
                tg.start_soon(gated, cb)
                tg.start_soon(reset_midway)
            assert 120 < removed < 180
            assert await cb.exact() == 180 - removed
            assert await cb.reset() == 180 - removed
            assert await ca.exact() == 0


async def test_conflict_budget_exhausted_writes_nothing(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 1) as (s,):
        writer = ShardedCounter(s, "budget", shards=1)
        await writer.add(1)
        loser = ShardedCounter(s, "budget", shards=1, max_attempts=1)
        loser._known[0] = (1, 0)  # white-box: a stale revision, so its one attempt conflicts
        with anyio.fail_after(10):
            with pytest.raises(TransactionConflictError):
                await loser.add(5)
            assert await writer.exact() == 1


# ambiguity, for real: the txn's answer is lost on the way back (or the request on the way in)


def proxied(cfg: Config, endpoint: str) -> Config:
    """A client of ``endpoint`` that notices a lost answer in 1 s and sends no pings."""
    return Config(
        endpoints=(endpoint,),
        namespace=cfg.namespace,
        ttl=30.0,
        request_timeout=1.0,
        grpc_keepalive_time=60.0,
    )


def spy_on_watch(c: ShardedCounter) -> list[str]:
    """Record the op ids of the first changes the resolution watched for (white-box)."""
    seen: list[str] = []
    original = c._first_change

    async def first_change(key: bytes, after: int):
        kv = await original(key, after)
        seen.append(json.loads(kv.value)["op"])
        return kv

    c._first_change = first_change  # type: ignore[method-assign]
    return seen


@asynccontextmanager
async def through_proxy(cfg: Config, direct: str, proxy_endpoint: str):
    """Handle ``a`` through the proxy, handle ``b`` straight to etcd, both on one shard."""
    async with (
        open_transport(proxied(cfg, proxy_endpoint)) as ta,
        open_session(ta) as sa,
        open_transport(Config(endpoints=(direct,), namespace=cfg.namespace)) as tb,
        open_session(tb) as sb,
    ):
        a = ShardedCounter(sa, "amb", shards=1, resolve_timeout=20)
        b = ShardedCounter(sb, "amb", shards=1)
        yield a, b, tb


async def test_ambiguous_add_that_applied_is_counted_once(
    etcd_factory, fault_proxy_factory, etcd_namespace: str
) -> None:
    """etcd receives the txn while frozen, the proxy then loses the answer: found applied."""
    server = etcd_factory()
    proxy = fault_proxy_factory(server.endpoint)
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    async with through_proxy(cfg, server.endpoint, proxy.endpoint) as (a, b, _):
        watched = spy_on_watch(a)
        with anyio.fail_after(40):
            await a.add(1)
            done = anyio.Event()

            async def add_five() -> None:
                await a.add(5)
                done.set()

            async with anyio.create_task_group() as tg:
                server.pause()
                sent = proxy.statistics().bytes_forwarded
                tg.start_soon(add_five)
                # the txn (headers + body, > 60 bytes) reached etcd's socket buffer
                await wait_until(lambda: proxy.statistics().bytes_forwarded > sent + 60)
                proxy.blackhole()
                server.resume()  # etcd applies it; its answer is discarded by the proxy
                with anyio.fail_after(5):
                    await wait_until(lambda: a.statistics().ambiguous == 1)
                assert not done.is_set()
                assert await b.exact() == 6  # applied, though ``a`` could not know
                await b.add(10)  # overwritten since: the watch from before the send decides
                proxy.pass_()
            stats = a.statistics()
            assert (stats.adds, stats.ambiguous, stats.resolved_applied) == (2, 1, 1)
            assert stats.resolved_not_applied == 0
            assert len(watched) == 1 and watched[0].startswith(a._op_base)  # a's own op
            assert await b.exact() == 16
            assert await a.value() == 16


async def test_ambiguous_add_that_did_not_apply_is_retried(
    etcd_endpoints: list[str], fault_proxy_factory, etcd_config: Config
) -> None:
    proxy = fault_proxy_factory(etcd_endpoints[0])
    async with through_proxy(etcd_config, etcd_endpoints[0], proxy.endpoint) as (a, b, _):
        watched = spy_on_watch(a)
        with anyio.fail_after(40):
            await a.add(1)
            async with anyio.create_task_group() as tg:
                proxy.blackhole()  # the request is lost on the way in
                tg.start_soon(a.add, 5)
                with anyio.fail_after(5):
                    await wait_until(lambda: a.statistics().ambiguous == 1)
                await b.add(10)  # the first change after the send is not ``a``'s
                proxy.pass_()
            stats = a.statistics()
            assert (stats.adds, stats.ambiguous, stats.resolved_not_applied) == (2, 1, 1)
            assert stats.resolved_applied == 0
            assert len(watched) == 1 and watched[0].startswith(b._op_base)  # b's, not a's
            assert await b.exact() == 16

            # lost again, and nobody wrote meanwhile: the re-sent txn applies it, once
            async with anyio.create_task_group() as tg:
                proxy.blackhole()
                tg.start_soon(a.add, 7)
                with anyio.fail_after(5):
                    await wait_until(lambda: a.statistics().ambiguous == 2)
                proxy.pass_()
            assert a.statistics().resolved_applied == 1
            assert len(watched) == 1  # decided by the re-send alone
            assert await b.exact() == 23


async def test_ambiguous_add_raises_when_history_is_compacted(
    etcd_endpoints: list[str], fault_proxy_factory, etcd_config: Config
) -> None:
    proxy = fault_proxy_factory(etcd_endpoints[0])
    async with through_proxy(etcd_config, etcd_endpoints[0], proxy.endpoint) as (a, b, tb):
        with anyio.fail_after(40):
            await a.add(1)
            proxy.blackhole()
            async with anyio.create_task_group() as tg:

                async def add_five() -> None:
                    with pytest.raises(AmbiguousResultError, match="compacted"):
                        await a.add(5)

                tg.start_soon(add_five)
                with anyio.fail_after(5):
                    await wait_until(lambda: a.statistics().ambiguous == 1)
                await b.add(10)
                await b.add(10)
                await tb.compact(await tb.revision())
                proxy.pass_()
            assert await b.exact() == 21  # it had not applied: etcd just cannot say so now
