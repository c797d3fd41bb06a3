"""Section ``tooz``: tooz's lock and group join on etcd, against the library's, same run.

tooz (OpenStack's coordination library) talks to etcd through its etcd3gw driver (JSON over
HTTP to the gateway built into etcd). It runs in a venv of its own (made once under /tmp by
``scripts/bench_sync.py``'s ``standalone_python``, with tooz's dependencies) and a process
of its own (``scripts/bench_tooz.py``), against the same etcd as the library's rows here:

- lock acquire + release: tooz's ``get_lock(name)`` against the library's ``Lock``;
- group join + leave: tooz's ``join_group`` + ``leave_group`` against the library's
  ``registry.register`` + ``unregister`` (both put a member key under a lease and remove it).

The library's side is measured in this process right after tooz's, the same number of
cycles; the ratio is library / tooz (below 1: the library is faster).
"""

from __future__ import annotations

import asyncio
import itertools
import time

from benchmarks.children import SCRIPTS, ChildFailed, run_json
from benchmarks.harness import Bench, Figure, Latency, Row
from foundation_etcd import connect

TOOZ_REQUIREMENTS = ("tooz==9.1.0", "etcd3gw==2.7.0")
TOOZ_SCRIPT = SCRIPTS / "bench_tooz.py"


async def section_tooz(bench: Bench) -> list[Row]:
    """Tooz's lock and group join (own venv and process) against the library's."""
    from bench_sync import standalone_python

    python = await asyncio.to_thread(standalone_python, "tooz", TOOZ_REQUIREMENTS)
    note = f"tooz: {' + '.join(TOOZ_REQUIREMENTS)}, etcd3gw driver, own venv and process"
    if python is None:
        return [
            Figure("tooz lock / group join", None, None, "", 0, note=f"{note}: not installable")
        ]
    n = bench.settings.coord_ops * bench.settings.rounds
    host, _, port = bench.endpoint.rpartition(":")
    bench.progress(f"tooz: {n} lock cycles, then {n} group joins")
    try:
        tooz = await run_json(
            str(python), str(TOOZ_SCRIPT), host, port, f"bench-{bench.run_id}-tooz", str(n)
        )
    except ChildFailed as exc:
        return [Figure("tooz lock / group join", None, None, "", 0, note=f"{note}: failed: {exc}")]
    cfg = bench.config("tooz")
    ids = (f"m{i:06d}" for i in itertools.count())
    lock_lib: list[float] = []
    join_lib: list[float] = []
    bench.progress(f"library: {n} lock cycles, then {n} register + unregister")
    try:
        async with connect(cfg, node_id="bench-tooz") as cluster:
            lock = cluster.lock("tooz-peer")
            for _ in range(n):
                t0 = time.perf_counter()
                async with lock.acquire():
                    pass
                lock_lib.append(time.perf_counter() - t0)
            for _ in range(n):
                agent = next(ids)
                t0 = time.perf_counter()
                await cluster.registry.register(agent)
                await cluster.registry.unregister(agent)
                join_lib.append(time.perf_counter() - t0)
    finally:
        await bench.delete_prefix(cfg.keyspace.prefix)
    return [
        Latency(
            "lock acquire + release: tooz (raw column) / library Lock",
            tooz["lock"],
            lock_lib,
            note=f"{note}; tooz's cycles first, then the library's",
        ),
        Latency(
            "group join + leave: tooz (raw column) / library register + unregister",
            tooz["join"],
            join_lib,
            note=f"{note}; both put a member key under a lease and delete it",
        ),
    ]
