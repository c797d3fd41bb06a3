"""Section ``registry``: register, throughput, lookups from memory, RSS per agent."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import statistics
import time
from collections.abc import Callable

from benchmarks.harness import (
    CONCURRENCY,
    Bench,
    Case,
    Figure,
    Latency,
    Row,
    clocked,
    concurrently,
    percentile,
    rss_bytes,
    run_rounds,
)
from benchmarks.raw import raw_create_txn, raw_lease
from foundation_etcd import Registry, connect
from foundation_etcd.lowlevel import Compare, Op

REGISTER_GOAL = 1.3  # registry.register p50 / raw create-if-absent Txn p50
QUIET = "register, no agents view in this process (connect(watch_agents=False))"


async def section_registry(bench: Bench) -> list[Row]:
    """Issue 3: register against a raw Txn, throughput, lookups from memory, RSS per agent."""
    s = bench.settings
    cfg = bench.config("reg")
    raw_base = f"/{cfg.namespace}/raw/agents/live/".encode()
    ids = (f"agent-{i:05}" for i in itertools.count())
    raw_ids = (f"agent-{i:05}" for i in itertools.count())

    def caps(agent_id: str) -> list[str]:
        return sorted([f"shard-{int(agent_id[6:]) % 10}", "all"])

    def raw_value(agent_id: str) -> bytes:
        body = {"capabilities": caps(agent_id), "class": "", "meta": {"i": int(agent_id[6:])}}
        return json.dumps({**body, "node": "bench"}, separators=(",", ":")).encode()

    rows: list[Row] = []
    try:
        async with (
            connect(cfg, node_id="bench") as cluster,
            # another namespace, watched by no view of this process
            connect(bench.config("regq"), node_id="quiet", watch_agents=False) as quiet,
            raw_lease(bench) as raw_id,
        ):
            reg = cluster.registry
            raw_kv = bench.kv
            last_rev = 0

            async def lib_register(agent_id: str) -> None:
                nonlocal last_rev
                r = await reg.register(
                    agent_id, capabilities=caps(agent_id), meta={"i": int(agent_id[6:])}
                )
                last_rev = max(last_rev, r.incarnation)

            async def raw_register(agent_id: str) -> None:
                resp = await raw_kv.Txn(
                    raw_create_txn(raw_base + agent_id.encode(), raw_value(agent_id), raw_id)
                )
                assert resp.succeeded

            async def caught_up() -> None:
                await reg.wait_for(last_rev)

            quiet_ids = (f"agent-{i:05}" for i in itertools.count())

            async def quiet_register() -> None:
                agent_id = next(quiet_ids)
                await quiet.registry.register(
                    agent_id, capabilities=caps(agent_id), meta={"i": int(agent_id[6:])}
                )

            txn_base = f"/{cfg.namespace}/txn/agents/live/".encode()
            txn_ids = (f"agent-{i:05}" for i in itertools.count())

            async def transport_txn() -> None:
                agent_id = next(txn_ids)
                key = txn_base + agent_id.encode()
                res = await cluster.transport.txn(
                    [Compare.create_revision(key) == 0],
                    [Op.put(key, raw_value(agent_id), lease=cluster.session.lease.id)],
                    [Op.get(key)],
                )
                assert res.succeeded

            gc.collect()
            rss_before = rss_bytes()
            bench.progress("register, one at a time")
            register = "register (create-if-absent txn under the lease)"
            results = await run_rounds(
                bench,
                [
                    Case(
                        register,
                        clocked(lambda: raw_register(next(raw_ids))),
                        clocked(lambda: lib_register(next(ids))),
                        ops=s.register_ops,
                    ),
                    Case(
                        "the same txn through Transport.txn (keys not watched)",
                        clocked(lambda: raw_register(next(raw_ids))),
                        clocked(transport_txn),
                        ops=s.register_ops,
                    ),
                    Case(
                        QUIET,
                        clocked(lambda: raw_register(next(raw_ids))),
                        clocked(quiet_register),
                        ops=s.register_ops,
                    ),
                ],
                after_lib=caught_up,
            )
            for label, (raw, lib) in results.items():
                if label == register:
                    note = "raw: Txn, same compare + put under a lease"
                    rows.append(Latency(label, raw, lib, goal=REGISTER_GOAL, note=note))
                elif label == QUIET:
                    note = (
                        "context: the register row minus this one is the cost of the agents "
                        "view's event for each registration, in the registering process"
                    )
                    rows.append(Latency(label, raw, lib, note=note))
                else:
                    note = "the registry's share = register row minus this one"
                    rows.append(Latency(label, raw, lib, note=note))

            # throughput, CONCURRENCY in flight, filling the registry up to s.agents
            remaining = max(s.rounds, s.agents - len(reg))
            sizes = [remaining // s.rounds + (r < remaining % s.rounds) for r in range(s.rounds)]
            raw_rates: list[float] = []
            lib_rates: list[float] = []
            visible: list[float] = []
            for r in range(s.rounds):
                per_round = sizes[r]
                bench.progress(f"throughput round {r + 1}/{s.rounds} ({per_round} each side)")
                sides = ["raw", "lib"] if r % 2 == 0 else ["lib", "raw"]
                for side in sides:
                    gc.collect()
                    batch = [next(raw_ids if side == "raw" else ids) for _ in range(per_round)]
                    t0 = time.perf_counter()
                    await concurrently(raw_register if side == "raw" else lib_register, batch)
                    elapsed = time.perf_counter() - t0
                    (raw_rates if side == "raw" else lib_rates).append(per_round / elapsed)
                    if side == "lib":
                        t1 = time.perf_counter()
                        await caught_up()
                        visible.append(time.perf_counter() - t1)
            n_agents = len(reg)
            rows.append(
                Figure(
                    f"registrations/s, {CONCURRENCY} in flight (median of rounds)",
                    percentile(raw_rates, 0.5),
                    percentile(lib_rates, 0.5),
                    "/s",
                    s.rounds,
                    note=f"{sizes[0]} per side per round",
                )
            )
            rows.append(
                Figure(
                    "own view caught up after a throughput round (median)",
                    None,
                    percentile(visible, 0.5) * 1000,
                    "ms",
                    len(visible),
                    note="after the last registration returned",
                )
            )

            # lookups from memory
            bench.progress(f"lookups among {n_agents} agents")
            all_ids = sorted(reg.owned())
            probe = all_ids[:: max(1, len(all_ids) // 1000)]

            def per_call(fn: Callable[[], object], calls: int, samples: int = 21) -> float:
                out = []
                for _ in range(samples):
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    out.append((time.perf_counter() - t0) / calls)
                return percentile(out, 0.5) * 1e6

            def get_all() -> None:
                for agent_id in probe:
                    assert reg.get(agent_id) is not None

            shard = len(reg.find("shard-3"))
            lookups: list[tuple[str, float, int | str]] = [
                ("registry.get(agent_id)", per_call(get_all, 5) / len(probe), "1 agent"),
                ('registry.find("shard-3")', per_call(lambda: reg.find("shard-3"), 5), shard),
                (
                    'registry.find("shard-3", "all")',
                    per_call(lambda: reg.find("shard-3", "all"), 5),
                    shard,
                ),
                ('registry.find("all")', per_call(lambda: reg.find("all"), 2), n_agents),
            ]
            for name, micros, found in lookups:
                rows.append(
                    Figure(
                        f"{name} with {n_agents:,} registered",
                        None,
                        micros,
                        "µs",
                        21,
                        note=f"returns {found:,} agents" if isinstance(found, int) else found,
                    )
                )

            gc.collect()
            grown = rss_bytes() - rss_before
            rows.append(
                Figure(
                    "RSS growth per registered agent",
                    None,
                    grown / max(1, n_agents),
                    "bytes",
                    n_agents,
                    note="registry + view + owned registrations, one process",
                )
            )
            rows += await all_at_once(bench, reg, s.agents)
    finally:
        await bench.delete_prefix(f"/{cfg.namespace}/".encode())
    return rows


GC_TUNED = (50_000, 20, 10)  # the thresholds docs/operations.md suggests for bursts


async def burst(reg: Registry, names: list[str], *, many: bool = False) -> tuple[float, float, int]:
    """Register every name at once, then unregister every one at once.

    ``many``: one ``register_many()`` call; else a ``register()`` call per name, gathered.
    Returns the two durations and how many requests carried the registrations (the
    registry's coalescer batches them).
    """
    writes = reg._writes
    before = writes.batches
    t0 = time.perf_counter()
    if many:
        await reg.register_many({n: {"i": i} for i, n in enumerate(names)}, capabilities=["many"])
    else:
        await asyncio.gather(
            *(reg.register(n, capabilities=["many"], meta={"i": i}) for i, n in enumerate(names))
        )
    up = time.perf_counter() - t0
    batches = writes.batches - before
    t0 = time.perf_counter()
    await asyncio.gather(*(reg.unregister(n) for n in names))
    return up, time.perf_counter() - t0, batches


BURSTS = 3  # rounds of each burst, alternating (a burst is one sample: the median of rounds)


def spread(values: list[float]) -> str:
    """``min-max s`` of a few durations."""
    return f"{min(values):.2f}-{max(values):.2f} s"


async def all_at_once(bench: Bench, reg: Registry, count: int) -> list[Row]:
    """``count`` agents registered at once, then unregistered at once.

    In alternating rounds: one ``register_many()`` call, and ``count`` ``register()`` calls
    gathered, with Python's default garbage collector; then the gathered calls once more
    with it tuned as docs/operations.md suggests (``gc.freeze()``, higher thresholds).
    """
    ups: list[float] = []
    downs: list[float] = []
    manys: list[float] = []
    batches = many_batches = 0
    for r in range(BURSTS):
        for many in (False, True) if r % 2 == 0 else (True, False):
            gc.collect()
            kind = "one register_many()" if many else "register() calls gathered"
            bench.progress(f"{count:,} registrations at once: {kind}, round {r + 1}/{BURSTS}")
            up, down, sent = await burst(reg, [f"many-{r}-{i:05}" for i in range(count)], many=many)
            if many:
                manys.append(up)
                many_batches = sent
            else:
                ups.append(up)
                downs.append(down)
                batches = sent
    up, down, many_up = statistics.median(ups), statistics.median(downs), statistics.median(manys)
    bench.progress(f"{count:,} registrations at once, the collector tuned")
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_TUNED)
    try:
        tuned_up, _, _ = await burst(reg, [f"tuned-{i:05}" for i in range(count)])
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return [
        Figure(
            f"{count:,} agents registered from one process with one register_many() call",
            None,
            many_up,
            "s",
            count,
            note=f"median of {BURSTS} rounds ({spread(manys)}); {many_batches} requests of nested "
            f"transactions; {count / many_up:,.0f}/s; goal 1 s (batched): "
            + ("met" if many_up <= 1.0 else "missed"),
        ),
        Figure(
            f"{count:,} agents registered from one process, every register() started at once",
            None,
            up,
            "s",
            count,
            note=f"asyncio.gather, median of {BURSTS} rounds ({spread(ups)}); coalesced into "
            f"{batches} transactions of nested ones (_coord/coalesce.py); {count / up:,.0f}/s; "
            "context: a task per agent",
        ),
        Figure(
            f"the same {count:,} unregistered at once (median)",
            None,
            down,
            "s",
            count,
            note=f"{count / down:,.0f}/s",
        ),
        Figure(
            f"the same {count:,} registered with gc.freeze() and gc.set_threshold"
            f"{GC_TUNED} (docs/operations.md)",
            None,
            tuned_up,
            "s",
            count,
            note=f"context: {count / tuned_up:,.0f}/s; the collector is the application's to tune",
        ),
    ]
