"""Coordination metrics (issue 13): a scripted run against real etcd, read with the SDK.

Each test injects its own ``MeterProvider`` with an ``InMemoryMetricReader`` through
``metrics.use_provider`` (the global provider can be set once per process), scripts what
the library must count, and checks the counts equal what the script caused.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import foundation_etcd as fe
from foundation_etcd import Config, Election, Lock, LockLostError, connect, open_session
from foundation_etcd._core import metrics
from foundation_etcd.lowlevel import open_transport, open_view
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
ALLOWED_ATTRIBUTES = {"tenant", "node", "name", "kind"}


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_provider(provider)
    try:
        yield reader
    finally:
        metrics.use_provider(None)
        provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            assert sm.scope.name == "foundation_etcd"
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def total(reader: InMemoryMetricReader, instrument: str, /, **attrs: str) -> float:
    """A counter's sum, or a histogram's count, over the points matching ``attrs``."""
    n = 0.0
    for p in points(reader).get(instrument, []):
        if all(p.attributes.get(k) == v for k, v in attrs.items()):
            n += p.count if hasattr(p, "bucket_counts") else p.value
    return n


def histogram_max(reader: InMemoryMetricReader, name: str) -> float:
    return max(p.max for p in points(reader)[name])


def documented() -> set[str]:
    text = DOC.read_text(encoding="utf-8").split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(foundation_etcd\.[a-z_.]+)`", text))


def check_attributes(reader: InMemoryMetricReader) -> None:
    for name, pts in points(reader).items():
        for p in pts:
            assert set(p.attributes) <= ALLOWED_ATTRIBUTES, (name, dict(p.attributes))


def test_every_instrument_is_documented_and_created_lazily() -> None:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    metrics.use_provider(provider)
    try:
        ins = metrics.instruments()
        names = {getattr(ins, f).name for f in ins.__dataclass_fields__}
    finally:
        metrics.use_provider(None)
        provider.shutdown()
    assert names == documented()
    assert all(n.startswith("foundation_etcd.") for n in names)
    # importing the library creates no instrument and sets no provider
    code = (
        "import foundation_etcd as fe, foundation_etcd.lowlevel\n"
        "from foundation_etcd._core import metrics\n"
        "from opentelemetry.metrics import _internal as m\n"
        "fe.Lock, fe.connect\n"
        "assert metrics._cached is None and m._METER_PROVIDER is None\n"
        "metrics.session_lost('t')  # the API's no-op proxy: nothing to set up\n"
        "assert m._METER_PROVIDER is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_session_ownership_and_quota_metrics(
    etcd_config: Config, reader: InMemoryMetricReader
) -> None:
    cfg = etcd_config
    tenant = cfg.tenant
    async with open_transport(cfg) as t:
        # a session whose lease is revoked from outside: lost once, replaced once
        async with open_session(t) as s:
            with anyio.fail_after(cfg.ttl + 5):
                await wait_until(lambda: s.statistics().keepalives >= 1)
                first = s.lease
                await t.lease_revoke(first.id)
                await first.wait_lost()
                await s.wait_lease()
        assert total(reader, "foundation_etcd.session.lost", tenant=tenant) == 1
        assert total(reader, "foundation_etcd.session.renewed", tenant=tenant) == 1
        assert total(reader, "foundation_etcd.session.keepalive.duration") >= 1
        assert total(reader, "foundation_etcd.session.deadline.margin") >= 1

        async with open_session(t) as a, open_session(t) as b:
            # a contended lock: two acquisitions, the second waited ~0.3 s
            got = anyio.Event()

            async def second() -> None:
                async with Lock(b, "m").acquire():
                    got.set()

            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    async with Lock(a, "m").acquire():
                        tg.start_soon(second)
                        await anyio.sleep(0.3)
                        assert not got.is_set()
            assert got.is_set()
            lock_attrs = {"kind": "lock", "name": "m", "tenant": tenant}
            assert total(reader, "foundation_etcd.ownership.acquired", **lock_attrs) == 2
            assert total(reader, "foundation_etcd.ownership.wait", **lock_attrs) == 2
            assert histogram_max(reader, "foundation_etcd.ownership.wait") >= 0.25

            # a fenced write after the lock key is deleted from outside: refused once
            with anyio.fail_after(15), pytest.raises(LockLostError):
                async with Lock(a, "f").acquire() as held:
                    await t.delete(held.key)  # well before the monitor's watch opens
                    await held.put(cfg.keyspace.key("fenced"), b"late")
            fenced = {"kind": "lock", "name": "f"}
            assert total(reader, "foundation_etcd.ownership.fenced_refused", **fenced) == 1
            assert total(reader, "foundation_etcd.ownership.lost", **fenced) == 1
            assert total(reader, "foundation_etcd.ownership.lost", name="m") == 0
            assert await t.get(cfg.keyspace.key("fenced")) is None

            with anyio.fail_after(15):
                async with Election(a, "e").campaign():
                    pass
            assert total(reader, "foundation_etcd.ownership.acquired", kind="election") == 1

    # a quota waited on: two reservations, the second admitted after ~0.3 s
    async with connect(cfg, node_id="mq") as c:
        await c.quotas.set_limit("slots", 1)
        with anyio.fail_after(15):
            admitted = anyio.Event()

            async def waiter() -> None:
                async with c.quotas.reserve({"slots": 1}):
                    admitted.set()

            async with anyio.create_task_group() as tg:
                async with c.quotas.reserve({"slots": 1}):
                    tg.start_soon(waiter)
                    await anyio.sleep(0.3)
                    assert not admitted.is_set()
            assert admitted.is_set()
    assert total(reader, "foundation_etcd.quota.reservations", name="slots") == 2
    assert total(reader, "foundation_etcd.quota.wait", name="slots", tenant=tenant) == 2
    assert histogram_max(reader, "foundation_etcd.quota.wait") >= 0.25
    check_attributes(reader)


async def test_watch_restart_and_relist_metrics(
    etcd_factory, etcd_namespace: str, fault_proxy_factory, reader: InMemoryMetricReader
) -> None:
    server = etcd_factory()  # compaction is global: a private server
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    proxy = fault_proxy_factory(server.endpoint)
    prefix = cfg.keyspace.key("w/")
    async with (
        open_transport(cfg) as t,
        open_transport(cfg.with_options(endpoints=(proxy.endpoint,))) as tv,
        open_view(tv, prefix) as view,
    ):
        with anyio.fail_after(30):
            proxy.drop()
            await wait_until(lambda: not view.connected)
            rev = 0
            for i in range(5):
                rev = (await t.put(prefix + b"k%d" % i, b"v")).revision
            await t.compact(rev)
            proxy.pass_()
            await view.wait_for(rev)
        assert view.relists == 1 and view.restarts >= 1
    assert total(reader, "foundation_etcd.watch.relists", tenant=cfg.tenant) == 1
    assert total(reader, "foundation_etcd.watch.restarts") == view.restarts
    check_attributes(reader)


@fe.clustered("metrics-counter", critical=True, resources={"cpu": 1})
class Flaky:
    """Fails a ``flaky`` signal's first attempt and every ``poison`` one."""

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        if signal.type == "poison" or (signal.type == "flaky" and signal.attempt == 1):
            raise RuntimeError("not this time")


@fe.clustered("metrics-crasher", restart=fe.RestartPolicy(mode="never"))
class Crasher:
    async def run(self, ctx: fe.AgentRunContext) -> None:
        raise RuntimeError("crash")


async def test_agent_and_signal_metrics(etcd_config: Config, reader: InMemoryMetricReader) -> None:
    cfg = etcd_config.with_options(ttl=2.0, signal_max_attempts=2)
    tenant = cfg.tenant
    async with AsyncExitStack() as stack:
        stay = await stack.enter_async_context(connect(cfg, node_id="stay", capacity={"cpu": 4}))
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(stay.serve)
        async with connect(cfg, node_id="goes", capacity={"cpu": 4}) as goes:
            async with anyio.create_task_group() as tg2:
                tg2.start_soon(goes.serve)
                await stay.spawn(Flaky, "f1", placement="pinned:goes")
                await stay.spawn(Crasher, "x1", placement="pinned:stay")
                with anyio.fail_after(20):
                    for n in range(3):
                        await stay.send("f1", "count", {"n": n})
                    await stay.send("f1", "flaky")
                    await stay.send("f1", "poison")
                    assert not (await stay.send("f1", "count", {"n": 0}, signal_id="d1")).duplicate
                    assert (await stay.send("f1", "count", signal_id="d1")).duplicate

                    def settled() -> bool:
                        return (
                            total(reader, "foundation_etcd.signals.delivered") == 5
                            and total(reader, "foundation_etcd.signals.dead_lettered") == 1
                            and total(reader, "foundation_etcd.agents.crashed") == 1
                        )

                    await wait_until(settled)
                tg2.cancel_scope.cancel()
        # "goes" left: the failover leader moves its critical agent to "stay"
        with anyio.fail_after(cfg.ttl + 10):
            await wait_until(
                lambda: (
                    "f1" in stay.runtime.hosted and stay.runtime.hosted["f1"].status == "running"
                )
            )
        tg.cancel_scope.cancel()

    assert total(reader, "foundation_etcd.signals.sent", tenant=tenant) == 6  # not the duplicate
    assert total(reader, "foundation_etcd.signals.delivered", node="goes") == 5
    assert total(reader, "foundation_etcd.signals.redelivered", node="goes") == 1
    assert total(reader, "foundation_etcd.signals.dead_lettered", node="goes") == 1
    assert total(reader, "foundation_etcd.signals.latency", node="goes") == 5
    assert total(reader, "foundation_etcd.agents.crashed", node="stay") == 1
    # f1 on goes, x1 on stay, then f1 again on stay after the failover
    assert total(reader, "foundation_etcd.agents.started", node="goes") == 1
    assert total(reader, "foundation_etcd.agents.started", node="stay") == 2
    assert total(reader, "foundation_etcd.agents.failed_over", tenant=tenant) == 1
    check_attributes(reader)


@fe.clustered("metrics-emitter")
class Emitter:
    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        if signal.type == "forward":
            ctx.send("b", "note", {"from": ctx.agent_id})


async def test_emitted_and_redriven_signals_count_as_sent(
    etcd_config: Config, reader: InMemoryMetricReader
) -> None:
    """``signals.sent`` counts every signal newly put in an inbox, by send or not."""
    async with connect(etcd_config, node_id="n1") as c, anyio.create_task_group() as tg:
        tg.start_soon(c.serve)
        await c.spawn(Emitter, "a")
        await c.spawn(Emitter, "b")
        with anyio.fail_after(20):
            for _ in range(3):
                await c.send("a", "forward")  # each handling emits one to b
            await wait_until(lambda: total(reader, "foundation_etcd.signals.delivered") == 6)
        assert total(reader, "foundation_etcd.signals.sent") == 6
        tg.cancel_scope.cancel()


async def test_prometheus_exposition_on_the_callers_registry(etcd_config: Config) -> None:
    """``foundation_etcd.prometheus.expose``: scraped text parses, counts match the script."""
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families

    from foundation_etcd.prometheus import expose

    registry = prometheus_client.CollectorRegistry()
    provider = expose(registry)
    metrics.use_provider(provider)
    try:
        with anyio.fail_after(20):
            async with connect(etcd_config, node_id="prom") as c:
                for _ in range(3):
                    async with c.lock("scraped").acquire():
                        pass
        text = prometheus_client.generate_latest(registry).decode()
    finally:
        metrics.use_provider(None)
        provider.shutdown()
    assert prometheus_client.generate_latest(prometheus_client.REGISTRY).find(b"foundation") < 0
    families = {f.name: f for f in text_string_to_metric_families(text)}
    acquired = families["foundation_etcd_ownership_acquired"]
    assert acquired.type == "counter"
    (sample,) = [s for s in acquired.samples if s.name.endswith("_total")]
    assert sample.value == 3
    assert sample.labels == {"kind": "lock", "name": "scraped", "tenant": "default"}
    wait = families["foundation_etcd_ownership_wait_seconds"]
    assert wait.type == "histogram"
    count = [s for s in wait.samples if s.name.endswith("_count")]
    inf = [s for s in wait.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert [s.value for s in count] == [3] and [s.value for s in inf] == [3]
    buckets = [s.value for s in wait.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)  # cumulative
