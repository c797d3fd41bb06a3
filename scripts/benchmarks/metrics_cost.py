"""Section ``metrics``: what the OpenTelemetry instruments cost once an SDK is installed.

The library records its metrics through the OpenTelemetry API: a no-op until the
application installs an SDK. This section measures the same operations, in the same
process and the same run, with the API alone (the "raw" column here) and with the SDK's
``MeterProvider`` and an ``InMemoryMetricReader`` collecting them (the "library" column),
in alternating rounds: registry ``register``, a lock acquire + release, and a signal
``send`` to an agent hosted in this process. The ratio is the overhead of the metrics.

Both instrument sets are created once, before the rounds; each step selects its set before
its timer starts, so the switch itself is never measured.
"""

from __future__ import annotations

import itertools

import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import foundation_etcd as fe
from benchmarks.harness import Bench, Case, Latency, Row, Step, clocked, run_rounds
from foundation_etcd import connect
from foundation_etcd._core import metrics
from foundation_etcd.testing import wait_until


@fe.clustered("bench-metrics-sink")
class MetricsSink:
    """Takes every signal and does nothing with it."""

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        """Nothing to do: the send is what is measured."""


def _with(instruments: metrics.Instruments, step: Step) -> Step:
    """``step``, recording into ``instruments`` (selected before the timer starts)."""

    async def run() -> float:
        metrics._cached = instruments
        return await step()

    return run


async def section_metrics(bench: Bench) -> list[Row]:
    """register, lock cycle and send, without and with an SDK installed."""
    s = bench.settings
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use_provider(provider)
    sdk = metrics.instruments()
    metrics.use_provider(None)
    api = metrics.instruments()
    cfg = bench.config("metrics")
    ids = (f"m{i:06d}" for i in itertools.count())
    sends = (f"s{i:08d}" for i in itertools.count())
    labels = {
        "register": "registry.register (API only / with the SDK)",
        "lock": "lock acquire + release, uncontended (API only / with the SDK)",
        "send": "send to an agent in this process (API only / with the SDK)",
    }
    try:
        async with connect(cfg, node_id="bench-metrics") as cluster:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cluster.serve)
                await cluster.spawn(MetricsSink, "sink", placement="pinned:bench-metrics")
                await wait_until(lambda: "sink" in cluster.registry.owned())

                async def register() -> None:
                    await cluster.registry.register(next(ids))

                async def lock() -> None:
                    async with cluster.lock("metrics-cost").acquire():
                        pass

                async def send() -> None:
                    await cluster.send("sink", "ping", {"n": 1}, signal_id=next(sends))

                cases = [
                    Case(
                        labels[name],
                        _with(api, clocked(call)),
                        _with(sdk, clocked(call)),
                        ops=s.coord_ops,
                    )
                    for name, call in (("register", register), ("lock", lock), ("send", send))
                ]
                results = await run_rounds(bench, cases)
                tg.cancel_scope.cancel()
    finally:
        metrics.use_provider(None)
        await bench.delete_prefix(cfg.keyspace.prefix)
    data = reader.get_metrics_data()
    points = sum(
        len(m.data.data_points)
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for m in sm.metrics
    )
    note = (
        "raw column: the OpenTelemetry API alone (no SDK, the default); library column: "
        f"the SDK's MeterProvider with an InMemoryMetricReader ({points} series collected)"
    )
    return [Latency(label, raw, lib, note=note) for label, (raw, lib) in results.items()]
