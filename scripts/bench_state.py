"""Benchmarks: shared state and transactions (issue 18) against the hand-rolled etcd requests.

Usage::

    .venv/bin/python scripts/bench_state.py                      # full run, table on stdout
    .venv/bin/python scripts/bench_state.py --quick              # smoke run, a few seconds
    .venv/bin/python scripts/bench_state.py --endpoints 127.0.0.1:2379   # an existing etcd
    .venv/bin/python scripts/bench_state.py --profile transact   # cProfile of one library step

The same cases are the first rows of ``scripts/bench.py --only consensus`` (the section
``benchmarks/consensus.py`` calls ``measure`` here); this script adds the CPU columns, the
``--with-options`` variant and ``--profile``.

Without ``--endpoints`` a private single-member etcd is started with
``foundation_etcd.testing.EtcdServer`` and stopped at the end.

Method (that of ``scripts/bench.py``): the raw side is etcd3aio's generated stubs on a plain
``grpc.aio`` insecure channel, sending by hand what a client without the library would send
for the same result, JSON encoding and decoding included; the library side is a connected
``Cluster``. Raw and library batches alternate (raw first in odd rounds), after a warm-up,
with ``gc.collect()`` before each batch; each sample is one operation's wall time. The
table gives p50, p90 and the ratio library p50 / raw p50. Every case is uncontended: raw
and library use their own keys, and each side knows the revision its last write made.

Cases:

* ``compare_and_set``: ``SharedState.compare_and_set(v, revision=r)`` against a raw Txn
  (``mod_revision(key) == r`` -> put).
* ``update``: ``SharedState.update(fn)`` (starts from the watched view) against the same raw
  txn with the failure read ``update`` carries (``mod_revision == r`` -> put | get), ``fn``
  applied to the value the raw side wrote last.
* ``transact``: ``cluster.transact(fn)`` reading two states with ``tx.get_many`` (one
  round trip) and writing both, against two raw Ranges (the second at the first's
  revision) then a Txn with two ``mod_revision`` compares -> two puts.
* ``transact-gets``: the same ``fn`` with two separate ``tx.get`` calls (one round trip
  each, as the raw side), against the same raw requests, for context.
* ``get(linearizable=True)`` against a raw Range, for context.
* ``get()`` from the view: the library alone, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import datetime as dt
import gc
import io
import json
import math
import os
import platform
import pstats
import secrets
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

SCRIPTS = str(Path(__file__).resolve().parent)
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from etcd3aio import _protobuf as pb  # noqa: E402

import foundation_etcd  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    FULL,
    QUICK,
    Bench,
    Case,
    Latency,
    Settings,
    Step,
    percentile,
    run_rounds,
)
from benchmarks.report import command_line, git_revision, ms, version_of  # noqa: E402
from foundation_etcd import Cluster, Config, SharedState, Tx, UnsafeEtcdVersionWarning  # noqa: E402
from foundation_etcd.lowlevel import prefix_end  # noqa: E402

rpc = pb.rpc_pb2

PROFILE_OPS = 2_000
LATENCY_CASES = ("cas", "update", "transact", "transact-gets", "get")
CASES = (*LATENCY_CASES, "view")


def encode(value: Any) -> bytes:
    """JSON as the library stores it (what a hand-rolled client would send)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def start_value() -> dict[str, Any]:
    """The state every case starts from: a small JSON object."""
    return {"owner": "bench", "percent": 0, "rollout": "canary"}


def bump(value: dict[str, Any] | None) -> dict[str, Any]:
    """The update applied: one field incremented."""
    v = dict(value or start_value())
    v["percent"] = (v["percent"] + 1) % 100
    return v


def raw_cas_txn(key: bytes, revision: int, data: bytes, *, read_back: bool) -> Any:
    """``mod_revision(key) == revision`` -> put (-> else get, with ``read_back``)."""
    cmp = rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )
    failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=key))] if read_back else []
    return rpc.TxnRequest(
        compare=[cmp],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=data))],
        failure=failure,
    )


@dataclasses.dataclass
class RawState:
    """One key written by the raw side, with the revision of its last write."""

    key: bytes
    value: dict[str, Any]
    revision: int = 0


class Sides:
    """The raw and library steps of every case, over keys of one namespace."""

    def __init__(
        self, bench: Bench, cluster: Cluster, cfg: Config, *, with_options: bool = False
    ) -> None:
        self.kv = bench.kv
        # --with-options: the raw calls carry what the library puts on every request
        self.o: dict[str, Any] = (
            {"metadata": (("hasleader", "true"),), "timeout": cfg.request_timeout}
            if with_options
            else {}
        )
        self.cluster = cluster
        ks = cfg.keyspace
        self.raw_prefix = ks.key("state", "raw-")
        self.cas_raw = RawState(ks.state("raw-cas"), start_value())
        self.upd_raw = RawState(ks.state("raw-update"), start_value())
        self.tx_raw = [RawState(ks.state(f"raw-tx{i}"), {"balance": 1_000_000}) for i in (1, 2)]
        self.cas_lib: SharedState[dict[str, Any]] = cluster.state("lib-cas")
        self.upd_lib: SharedState[dict[str, Any]] = cluster.state("lib-update")
        self.get_lib: SharedState[dict[str, Any]] = cluster.state("lib-get")
        self.cas_rev = 0

    async def setup(self) -> None:
        """Write every key once; open the views the library side reads."""
        for st in (self.cas_raw, self.upd_raw, *self.tx_raw):
            res = await self.kv.Put(rpc.PutRequest(key=st.key, value=encode(st.value)))
            st.revision = int(res.header.revision)
        self.cas_rev = await self.cas_lib.set(start_value())
        await self.upd_lib.set(start_value())
        await self.get_lib.set(start_value())

        async def init(tx: Tx) -> None:
            tx.put("lib-tx1", {"balance": 1_000_000})
            tx.put("lib-tx2", {"balance": 1_000_000})

        await self.cluster.transact(init)
        await self.catch_up()

    async def catch_up(self) -> None:
        """Let the views apply the library's own writes (untimed, after library batches)."""
        for st in (self.upd_lib, self.get_lib):
            await st.get()

    # (a) compare-and-set ---------------------------------------------------------------------
    async def raw_cas(self) -> None:
        """Raw: bump the cached value, CAS at the revision of the last write."""
        st = self.cas_raw
        st.value = bump(st.value)
        res = await self.kv.Txn(
            raw_cas_txn(st.key, st.revision, encode(st.value), read_back=False), **self.o
        )
        assert res.succeeded
        st.revision = int(res.header.revision)

    async def lib_cas(self) -> None:
        """Library: ``compare_and_set`` at the revision of the last write."""
        rev = await self.cas_lib.compare_and_set(bump(None), revision=self.cas_rev)
        assert rev is not None
        self.cas_rev = rev

    # (b) update ------------------------------------------------------------------------------
    async def raw_update(self) -> None:
        """Raw: ``fn`` on the value last written, CAS with the failure read."""
        st = self.upd_raw
        new = bump(st.value)
        res = await self.kv.Txn(
            raw_cas_txn(st.key, st.revision, encode(new), read_back=True), **self.o
        )
        assert res.succeeded
        st.value, st.revision = new, int(res.header.revision)

    async def lib_update(self) -> None:
        """Library: ``update(fn)``."""
        await self.upd_lib.update(bump)

    # (c) transact: two reads, two writes ----------------------------------------------------
    async def raw_transact(self) -> None:
        """Raw: two reads at one revision, one txn guarded by both mod revisions."""
        a, b = self.tx_raw
        first = await self.kv.Range(rpc.RangeRequest(key=a.key), **self.o)
        rev = int(first.header.revision)
        second = await self.kv.Range(rpc.RangeRequest(key=b.key, revision=rev), **self.o)
        kv_a, kv_b = first.kvs[0], second.kvs[0]
        va, vb = json.loads(kv_a.value), json.loads(kv_b.value)
        va["balance"] -= 1
        vb["balance"] += 1
        res = await self.kv.Txn(
            rpc.TxnRequest(
                compare=[
                    rpc.Compare(
                        key=kv.key,
                        target=rpc.Compare.MOD,
                        result=rpc.Compare.EQUAL,
                        mod_revision=kv.mod_revision,
                    )
                    for kv in (kv_a, kv_b)
                ],
                success=[
                    rpc.RequestOp(request_put=rpc.PutRequest(key=a.key, value=encode(va))),
                    rpc.RequestOp(request_put=rpc.PutRequest(key=b.key, value=encode(vb))),
                ],
            ),
            **self.o,
        )
        assert res.succeeded

    async def lib_transact(self) -> None:
        """Library: ``transact`` of two reads (one ``get_many``) and two writes."""
        await self.cluster.transact(move_one)

    async def lib_transact_gets(self) -> None:
        """Library: ``transact`` of two separate ``tx.get`` calls and two writes."""
        await self.cluster.transact(move_one_gets)

    # context: linearizable get --------------------------------------------------------------
    async def raw_get(self) -> None:
        """Raw: a linearizable Range, decoded."""
        res = await self.kv.Range(rpc.RangeRequest(key=self.cas_raw.key), **self.o)
        json.loads(res.kvs[0].value)

    async def lib_get(self) -> None:
        """Library: ``get(linearizable=True)``."""
        got = await self.cas_lib.get(linearizable=True)
        assert got is not None

    async def view_get(self) -> None:
        """Library: ``get()`` from the watched view."""
        await self.get_lib.get()

    def steps(
        self, case: str
    ) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
        """The raw and library calls of ``case``."""
        return {
            "cas": (self.raw_cas, self.lib_cas),
            "update": (self.raw_update, self.lib_update),
            "transact": (self.raw_transact, self.lib_transact),
            "transact-gets": (self.raw_transact, self.lib_transact_gets),
            "get": (self.raw_get, self.lib_get),
        }[case]


async def move_one(tx: Tx) -> None:
    """Two reads in one round trip, two writes: one unit from ``lib-tx1`` to ``lib-tx2``."""
    a, b = await tx.get_many("lib-tx1", "lib-tx2")
    tx.put("lib-tx1", {"balance": a["balance"] - 1})
    tx.put("lib-tx2", {"balance": b["balance"] + 1})


async def move_one_gets(tx: Tx) -> None:
    """``move_one`` with two separate reads (two round trips)."""
    a = await tx.get("lib-tx1")
    b = await tx.get("lib-tx2")
    tx.put("lib-tx1", {"balance": a["balance"] - 1})
    tx.put("lib-tx2", {"balance": b["balance"] + 1})


LABELS = {
    "cas": "(a) compare_and_set vs raw Txn (mod_revision == r -> put)",
    "update": "(b) update(fn), uncontended, vs the same raw Txn (-> put, else get)",
    "transact": "(c) transact: 2 reads (tx.get_many) + 2 writes vs 2 raw Ranges + Txn "
    "(2 compares -> 2 puts)",
    "transact-gets": "transact with 2 separate tx.get calls, same raw requests (context)",
    "get": "get(linearizable=True) vs raw Range (context)",
}
NOTES = {
    "cas": "both encode the JSON value",
    "update": "library: fn + view read (waits for its own last write in the view)",
    "transact": "round trips: library 2 (one read txn, the commit), raw 3; the commit also "
    "carries the failure branch (2 gets); SERIALIZABLE_SNAPSHOT",
    "transact-gets": "round trips: 3 each side, as raw",
    "get": "both decode the JSON value",
}


async def view_gets(st: SharedState[dict[str, Any]], n: int) -> list[float]:
    """Per-call wall times of ``st.get()`` served by the view."""
    for _ in range(n // 10):
        await st.get()
    gc.collect()
    out: list[float] = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await st.get()
        out.append(clock() - t0)
    return out


def profile_lib(sides: Sides, case: str, ops: int) -> Callable[[], Awaitable[str]]:
    """A coroutine that profiles ``ops`` library steps of ``case``; the top functions."""
    lib = sides.view_get if case == "view" else sides.steps(case)[1]

    async def run() -> str:
        for _ in range(ops // 10):
            await lib()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(ops):
            await lib()
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(35)
        return buf.getvalue()

    return run


# --------------------------------------------------------------------------------------------
# the run and the table


def timed(call: Callable[[], Awaitable[None]], cpu: list[float]) -> Step:
    """A step whose sample is the wall time of ``await call()``; its CPU time goes to ``cpu``.

    CPU is the process's (every thread: gRPC's included), so it counts the client-side work
    of one operation, whatever its wait for etcd.
    """
    wall, proc = time.perf_counter, time.process_time

    async def step() -> float:
        c0, t0 = proc(), wall()
        await call()
        t1 = wall()
        cpu.append(proc() - c0)
        return t1 - t0

    return step


@dataclasses.dataclass
class Result:
    """What one run measured."""

    latencies: list[Latency]
    cpu: dict[str, tuple[list[float], list[float]]]
    view: list[float]
    tx_stats: dict[str, int]
    elapsed: float


async def measure(bench: Bench, cfg: Config, view_n: int, with_options: bool) -> Result:
    """Run every case in alternating rounds, then the view reads."""
    t0 = time.perf_counter()
    async with foundation_etcd.connect(cfg, node_id="bench-state") as cluster:
        sides = Sides(bench, cluster, cfg, with_options=with_options)
        try:
            await sides.setup()
            cases: list[Case] = []
            cpu: dict[str, tuple[list[float], list[float]]] = {}
            for name in LATENCY_CASES:
                raw, lib = sides.steps(name)
                cpu[LABELS[name]] = ([], [])
                raw_cpu, lib_cpu = cpu[LABELS[name]]
                cases.append(Case(LABELS[name], timed(raw, raw_cpu), timed(lib, lib_cpu)))
            results = await run_rounds(bench, cases, after_lib=sides.catch_up)
            bench.progress(f"view get() x {view_n}")
            view = await view_gets(sides.get_lib, view_n)
            stats = dataclasses.asdict(cluster.transact_statistics)
        finally:
            prefix = cfg.keyspace.prefix
            await bench.kv.DeleteRange(
                rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix))
            )
    latencies = []
    for name in LATENCY_CASES:
        raw_s, lib_s = results[LABELS[name]]
        latencies.append(Latency(LABELS[name], raw_s, lib_s, note=NOTES[name]))
    return Result(latencies, cpu, view, stats, time.perf_counter() - t0)


def render(info: dict[str, str], res: Result) -> str:
    """The markdown report: the run, the latency table, the view reads."""
    lines = [
        "# Shared state and transactions: library vs hand-rolled etcd requests",
        "",
        f"`{command_line()}`",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "| operation | raw p50 ms | library p50 ms | ratio | raw p90 ms | library p90 ms "
        "| raw CPU µs | library CPU µs | n (each) | note |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in res.latencies:
        raw50, lib50 = percentile(r.raw, 0.5), percentile(r.lib, 0.5)
        ratio = lib50 / raw50 if raw50 > 0 else math.nan
        raw_cpu, lib_cpu = (percentile(c, 0.5) * 1e6 for c in res.cpu[r.operation])
        lines.append(
            f"| {r.operation} | {ms(raw50)} | {ms(lib50)} | {ratio:.2f}x "
            f"| {ms(percentile(r.raw, 0.9))} | {ms(percentile(r.lib, 0.9))} "
            f"| {raw_cpu:.0f} | {lib_cpu:.0f} | {min(len(r.raw), len(r.lib))} | {r.note} |"
        )
    v50, v90 = percentile(res.view, 0.5) * 1e6, percentile(res.view, 0.9) * 1e6
    lines += [
        f"| (d) get() from the watched view | - | {v50 / 1000:.4f} | - | - | {v90 / 1000:.4f} "
        f"| - | {v50:.1f} | {len(res.view)} | **{v50:.1f} µs** p50, {v90:.1f} µs p90; no I/O |",
        "",
        "CPU: median process CPU time per operation (all threads), i.e. the client-side "
        "cost; the latency includes etcd's.",
    ]
    st = res.tx_stats
    lines += [
        "",
        f"transact statistics over the run: {st['calls']} calls, {st['commits']} commits, "
        f"{st['attempts']} attempts, {st['conflicts']} conflicts, {st['exhausted']} exhausted "
        "(uncontended: attempts == calls).",
        "",
        "The machine is shared and noisy: absolute numbers move from run to run; the medians "
        "and ratios, measured in alternating rounds of the same run, are what count.",
    ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, endpoint: str, etcd_note: str) -> str:
    """Measure against ``endpoint``; the report (or the profile with ``--profile``)."""
    settings: Settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.ops:
        settings = dataclasses.replace(settings, ops=args.ops)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    channel = grpc.aio.insecure_channel(endpoint)
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        status = await pb.MaintenanceStub(channel).Status(rpc.StatusRequest())
        bench = Bench(endpoint, channel, settings, secrets.token_hex(3), section="state")
        cfg = bench.config("state")
        if args.profile:
            async with foundation_etcd.connect(cfg, node_id="bench-profile") as cluster:
                sides = Sides(bench, cluster, cfg)
                await sides.setup()
                text = await profile_lib(sides, args.profile, args.profile_ops)()
                prefix = cfg.keyspace.prefix
                await bench.kv.DeleteRange(
                    rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix))
                )
            return text
        load_before = os.getloadavg()
        res = await measure(bench, cfg, settings.view_gets, args.with_options)
    finally:
        await channel.close()
    load_after = os.getloadavg()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    info = {
        "date": started,
        "etcd": f"{status.version} at {endpoint} ({etcd_note})",
        "CPUs": f"{os.cpu_count()} (usable: {affinity}); load average {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after",
        "Python": f"{platform.python_implementation()} {platform.python_version()}, "
        f"grpcio {grpc.__version__}, etcd3aio {version_of('etcd3aio')}, "
        f"protobuf {version_of('protobuf')}",
        "foundation_etcd": f"{foundation_etcd.__version__} at {git_revision()}",
        "settings": f"{settings.rounds} rounds x {settings.ops} ops per side "
        f"(+{settings.warmup} warm-up), alternating; {'--quick' if args.quick else 'full run'}",
        "raw side": "carries hasleader metadata + deadline, as the library does"
        if args.with_options
        else "plain calls (no metadata, no deadline)",
        "measured time": f"{res.elapsed:.1f} s",
    }
    return render(info, res)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start etcd unless given one, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--endpoints", metavar="HOST:PORT", help="an existing etcd member")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--ops", type=int, help="override the operations per side per round")
    parser.add_argument(
        "--with-options",
        action="store_true",
        help="raw calls carry hasleader metadata and a deadline, as the library's do "
        "(the ratio is then the library's Python layer only)",
    )
    parser.add_argument(
        "--profile",
        choices=CASES,
        help="instead of the table: cProfile of the library side of one case (stdout)",
    )
    parser.add_argument("--profile-ops", type=int, default=PROFILE_OPS, metavar="N")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UnsafeEtcdVersionWarning)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.endpoints:
            if "," in args.endpoints:
                parser.error("--endpoints takes one member (raw and library share it)")
            endpoint, etcd_note = args.endpoints, "existing member"
        else:
            from foundation_etcd.testing import EtcdServer

            print("[etcd] starting a private etcd", file=sys.stderr, flush=True)
            etcd = stack.enter_context(EtcdServer(name="bench-state"))
            endpoint = etcd.endpoint
            etcd_note = "started by the script: one member, loopback, --unsafe-no-fsync"
        body = asyncio.run(run(args, endpoint, etcd_note))
    print(body)
    print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
