"""Section ``consensus``: shared state, transactions and the sharded counter.

The measuring code is that of the standalone scripts, imported from them:

- ``scripts/bench_state.py`` (``measure``): ``SharedState.compare_and_set``, ``update(fn)``
  and ``cluster.transact`` (2 reads + 2 writes) against the same raw etcd transactions, in
  alternating rounds, then ``SharedState.get()`` from the watched view;
- ``scripts/bench_counter.py`` (``measure``): ``ShardedCounter.add(1)`` against a one-key
  compare-and-swap counter, 16 writers in 16 processes (``scripts/bench_counter_worker.py``)
  and then 1, in alternating windows, every window's count checked exact.

That script's extra columns (client CPU per operation) go into the notes here.
"""

from __future__ import annotations

import bench_counter
import bench_state
from benchmarks.harness import Bench, Figure, Latency, Row, percentile

COUNTER_GOAL = bench_counter.GOAL  # sharded / CAS increments/s with 16 writers
COUNTER_WRITERS = (16, 1)
COUNTER_SHARDS = 32


async def section_consensus(bench: Bench) -> list[Row]:
    """The shared-state latencies, the view read, the counter throughput."""
    return [*await state_rows(bench), *await counter_rows(bench)]


async def state_rows(bench: Bench) -> list[Row]:
    """(a)-(d): ``bench_state.measure`` as harness rows, CPU per operation in the notes."""
    cfg = bench.config("state")
    res = await bench_state.measure(bench, cfg, bench.settings.view_gets, with_options=False)
    st = res.tx_stats
    rows: list[Row] = []
    for r in res.latencies:
        raw_cpu, lib_cpu = (percentile(c, 0.5) * 1e6 for c in res.cpu[r.operation])
        notes = [
            r.note,
            f"client CPU per op (median): raw {raw_cpu:.0f} µs, library {lib_cpu:.0f} µs",
        ]
        if r.operation == bench_state.LABELS["transact"]:
            notes.append(
                f"transact over both transact rows: {st['calls']} calls, {st['attempts']} "
                f"attempts, {st['conflicts']} conflicts (uncontended)"
            )
        rows.append(Latency(r.operation, r.raw, r.lib, note="; ".join(notes)))
    v50, v90 = percentile(res.view, 0.5) * 1e6, percentile(res.view, 0.9) * 1e6
    rows.append(
        Figure(
            "(d) SharedState.get() from the watched view",
            None,
            v50,
            "µs",
            len(res.view),
            note=f"p90 {v90:.1f} µs; no I/O (after a warm-up of {len(res.view) // 10:,})",
        )
    )
    return rows


async def counter_rows(bench: Bench) -> list[Row]:
    """(e): ``bench_counter.measure``, one row per writer count."""
    s = bench.settings
    plan = bench_counter.Plan(
        rounds=s.counter_rounds,
        seconds=s.counter_window,
        single_seconds=s.counter_single_window,
        shards=COUNTER_SHARDS,
        workers=COUNTER_WRITERS,
    )
    cfg = bench.config("counter")
    bench.progress(f"counters: starting {max(plan.workers)} writer processes")
    try:
        results = await bench_counter.measure(
            bench.endpoint, plan, namespace=cfg.namespace, log=bench.progress
        )
    finally:
        await bench.delete_prefix(cfg.keyspace.prefix)
    rows: list[Row] = []
    top = max(results)
    for n, sides in results.items():
        cas, sharded = sides["cas"], sides["sharded"]
        ratio = sharded.median / cas.median
        seconds = plan.seconds if n > 1 else plan.single_seconds
        windows = "; ".join(
            f"{name} {', '.join(f'{x:,.0f}' for x in side.rates)}"
            for name, side in (("CAS", cas), ("sharded", sharded))
        )
        notes = [
            f"CAS: {cas.retry_fraction:.1%} of {cas.txns:,} txns retried; sharded: "
            f"{sharded.retry_fraction:.1%} of {sharded.txns:,}",
            f"exact: after each of the {len(cas.rates) + len(sharded.rates)} windows the "
            f"counter read back equal to the writers' confirmed increments "
            f"({cas.ops + sharded.ops:,} in all)",
            f"windows (incr/s): {windows}; {plan.rounds} x {seconds:g} s per side"
            f"{', alternating' if plan.rounds > 1 else ''}; {plan.shards} shards",
        ]
        if n == top:
            verdict = "met" if ratio >= COUNTER_GOAL else "missed"
            notes.append(f"goal sharded >= {COUNTER_GOAL:g}x CAS ({ratio:.2f}x): {verdict}")
        else:
            notes.append("context: with one writer both are one txn per increment")
        where = f"{n} writers in {n} processes" if n > 1 else "1 writer process"
        rows.append(
            Figure(
                f"(e) counter increments, {where}: ShardedCounter.add(1); raw: one-key CAS "
                "counter (txn mod_revision == seen -> put +1, else get; retry)",
                cas.median,
                sharded.median,
                "incr/s",
                len(sharded.rates),
                note="; ".join(notes),
            )
        )
    return rows
