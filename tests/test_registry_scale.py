"""10,000 agents registered from one process: memory, throughput, lookups from memory."""

import gc
import time

import anyio
import pytest

from foundation_etcd import Config, connect

pytestmark = [pytest.mark.etcd, pytest.mark.once]

N = 10_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def test_ten_thousand_agents(etcd_config: Config, record_property) -> None:
    # a long TTL: 10,000 registrations and their events keep the loop busy, and on a loaded
    # machine a starved loop misses keepalives; lease timing is not what this test is about
    etcd_config = etcd_config.with_options(ttl=10.0)
    async with (
        connect(etcd_config, node_id="big") as c,
        connect(etcd_config, node_id="watcher") as w,
    ):
        gc.collect()
        before = rss_bytes()
        limiter = anyio.CapacityLimiter(64)

        async def one(i: int) -> None:
            async with limiter:
                await c.registry.register(
                    f"agent-{i:05}", capabilities=[f"shard-{i % 10}", "all"], meta={"i": i}
                )

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(N):
                tg.start_soon(one, i)
        elapsed = time.perf_counter() - t0
        rate = N / elapsed
        last = await c.transport.get(etcd_config.keyspace.agent_live(f"agent-{N - 1:05}"))
        assert last is not None
        rev = (await c.transport.status()).revision
        with anyio.fail_after(30):
            await w.registry.wait_for(rev)
            await c.registry.wait_for(rev)
        gc.collect()
        per_agent = (rss_bytes() - before) / N / 2  # two processes' worth of views here
        assert len(w.registry) == N and len(c.registry) == N
        t1 = time.perf_counter()
        for i in range(0, N, 7):
            assert w.registry.get(f"agent-{i:05}").meta == {"i": i}
        by_id = (time.perf_counter() - t1) / len(range(0, N, 7))
        t2 = time.perf_counter()
        for s in range(10):
            assert len(w.registry.find(f"shard-{s}")) == N // 10
        by_cap = (time.perf_counter() - t2) / 10
        assert len(w.registry.find("all", "shard-3")) == N // 10
        assert by_id < 50e-6, by_id
        record_property("register_per_s", round(rate))
        record_property("rss_per_agent_bytes", round(per_agent))
        print(
            f"\n{N} agents: {rate:.0f} registrations/s (64 in flight), "
            f"~{per_agent / 1024:.1f} KiB RSS per agent per view, "
            f"get {by_id * 1e6:.1f} us, find(1,000 of {N}) {by_cap * 1e6:.0f} us"
        )
