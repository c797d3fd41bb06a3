"""Section ``watch``: put to watch event, a raw Watch stream against a WatchedView."""

from __future__ import annotations

import asyncio
import itertools
import time

from benchmarks.harness import (
    EVENT_TIMEOUT,
    VALUE,
    Bench,
    Case,
    Latency,
    Row,
    percentile,
    run_rounds,
)
from benchmarks.raw import RawWatcher, rpc
from foundation_etcd.lowlevel import ViewChange, open_transport, open_view


async def section_watch(bench: Bench) -> list[Row]:
    """Put -> watch event: a raw Watch stream against a WatchedView's on_change."""
    cfg = bench.config("watch")
    base = f"/{cfg.namespace}/".encode()
    raw_prefix, lib_prefix = base + b"raw/", base + b"lib/"
    raw_kv = bench.kv
    counter = itertools.count()
    raw_put: list[float] = []
    lib_put: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        async with (
            open_transport(cfg) as t,
            open_view(t, lib_prefix) as view,
            RawWatcher(bench, raw_prefix) as raw_watch,
        ):
            lib_waiting: dict[bytes, asyncio.Future[float]] = {}

            def on_change(changes: list[ViewChange]) -> None:
                now = time.perf_counter()
                for c in changes:
                    fut = lib_waiting.pop(c.key, None)
                    if fut is not None and not fut.done():
                        fut.set_result(now)

            view.on_change(on_change)

            async def raw_step() -> float:
                key = raw_prefix + b"%08d" % next(counter)
                fut: asyncio.Future[float] = loop.create_future()
                raw_watch.waiting[key] = fut
                t0 = time.perf_counter()
                await raw_kv.Put(rpc.PutRequest(key=key, value=VALUE))
                raw_put.append(time.perf_counter() - t0)
                return await asyncio.wait_for(fut, EVENT_TIMEOUT) - t0

            async def lib_step() -> float:
                key = lib_prefix + b"%08d" % next(counter)
                fut: asyncio.Future[float] = loop.create_future()
                lib_waiting[key] = fut
                t0 = time.perf_counter()
                await t.put(key, VALUE)
                lib_put.append(time.perf_counter() - t0)
                return await asyncio.wait_for(fut, EVENT_TIMEOUT) - t0

            results = await run_rounds(
                bench,
                [
                    Case(
                        "put -> event (raw Watch stream / WatchedView.on_change)",
                        raw_step,
                        lib_step,
                    )
                ],
            )
    finally:
        await bench.delete_prefix(base)
    warm = min(bench.settings.warmup, bench.settings.ops)  # run_rounds' warm-up puts
    ((label, (raw_ev, lib_ev)),) = results.items()
    raw_put, lib_put = raw_put[warm:], lib_put[warm:]
    ratios = [
        percentile(ev, 0.5) / percentile(put, 0.5)
        for ev, put in ((raw_ev, raw_put), (lib_ev, lib_put))
    ]
    return [
        Latency(label, raw_ev, lib_ev),
        Latency(
            "put round trip, same puts",
            raw_put,
            lib_put,
            note=f"event p50 / put p50: raw {ratios[0]:.2f}, library {ratios[1]:.2f}",
        ),
    ]
