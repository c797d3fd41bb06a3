"""Section ``quotas``: uncontended reserve, contended throughput against a CAS counter."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from etcd3aio import _protobuf as pb

from benchmarks.children import CHILD_TIMEOUT, QUOTA_WORKER_SCRIPT
from benchmarks.harness import Bench, Case, Figure, Latency, Row, run_rounds
from benchmarks.raw import kv_requests, raw_compare, raw_lease, raw_queue_read, rpc
from foundation_etcd import Config, connect

QUOTA_RESERVE_GOAL = 1.3  # uncontended reserve enter / raw Txn
QUOTA_THROUGHPUT_GOAL = 3.0  # library / CAS counter ops/s at the largest worker count
QUOTA_LIMIT = 4
QUOTA_WORKERS = (1, 4, 16)
QUOTA_ROUNDS = 2  # alternating raw/library windows per worker count
QUOTA_PROCESSES = 4  # child processes per side in the multi-process run
QUOTA_SPREAD_GOAL = 2.0  # library / CAS counter ops/s, every worker its own process


class CasCounter:
    """One compare-and-swap client of a shared counter: its own channel and watch stream.

    ``add(+1)`` waits (on its watch) while the counter is at ``limit``; every transaction
    compares the mod revision it read and, on failure, reads the counter back in the same
    round trip (the failure branch) and tries again.
    """

    def __init__(self, endpoint: str, key: bytes, limit: int | None) -> None:
        self._endpoint, self._key, self._limit = endpoint, key, limit
        self.txns = self.retries = self.waits = 0
        self._latest: Any = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> CasCounter:
        self._channel = grpc.aio.insecure_channel(self._endpoint)
        self._kv = pb.KVStub(self._channel)
        self._call = pb.WatchStub(self._channel).Watch()
        await self._call.write(
            rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=self._key))
        )
        assert (await self._call.read()).created
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._call.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._channel.close()

    async def _read(self) -> None:
        while True:
            resp = await self._call.read()
            if resp is grpc.aio.EOF:
                return
            for ev in resp.events:
                if self._latest is None or ev.kv.mod_revision > self._latest.mod_revision:
                    self._latest = ev.kv
            self._changed.set()
            self._changed = asyncio.Event()

    async def _newer_than(self, mod: int) -> Any:
        while self._latest is None or self._latest.mod_revision <= mod:
            await self._changed.wait()
        return self._latest

    async def add(self, delta: int) -> None:
        """Add ``delta`` to the counter (compare-and-swap, retried until it succeeds)."""
        cur = (await self._kv.Range(rpc.RangeRequest(key=self._key))).kvs[0]
        while True:
            count = int(cur.value)
            if delta > 0 and self._limit is not None and count + delta > self._limit:
                self.waits += 1
                cur = await self._newer_than(cur.mod_revision)
                continue
            self.txns += 1
            res = await self._kv.Txn(
                rpc.TxnRequest(
                    compare=[raw_compare(self._key, "MOD", cur.mod_revision)],
                    success=[
                        rpc.RequestOp(
                            request_put=rpc.PutRequest(
                                key=self._key, value=str(count + delta).encode()
                            )
                        )
                    ],
                    failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=self._key))],
                )
            )
            if res.succeeded:
                return
            self.retries += 1
            cur = res.responses[0].response_range.kvs[0]

    async def cycle(self) -> None:
        """Take one unit and give it back."""
        await self.add(1)
        await self.add(-1)


async def for_a_while(
    cycle: Callable[[Any], Awaitable[None]], clients: list[Any], window: float
) -> int:
    """Run ``cycle(client)`` in a loop per client for ``window`` seconds; cycles completed."""
    end = time.perf_counter() + window
    done = 0

    async def worker(client: Any) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await cycle(client)
            if time.perf_counter() <= end:
                done += 1

    await asyncio.gather(*(worker(c) for c in clients))
    return done


async def contend(bench: Bench, cfg: Config, counter: bytes, n: int, *, connections: int) -> Figure:
    """``n`` workers doing reserve + release against ``n`` doing CAS +1/-1, alternating.

    The workers share ``connections`` library clusters (each its own ``connect``) and as
    many CAS clients (each its own channel and watch).
    """
    s = bench.settings
    await bench.kv.Put(rpc.PutRequest(key=counter, value=b"0"))
    async with contextlib.AsyncExitStack() as stack:
        bench.progress(f"{n} contending workers on {connections} connection(s): connecting")
        clusters = [
            await stack.enter_async_context(
                connect(cfg, node_id=f"bench-q{n}-{connections}-{i}", hosts_agents=False)
            )
            for i in range(connections)
        ]
        for c in clusters:
            await c.quotas.open_usage("slots")
        cas = [
            await stack.enter_async_context(CasCounter(bench.endpoint, counter, QUOTA_LIMIT))
            for _ in range(connections)
        ]

        async def lib_cycle(c: Any) -> None:
            async with c.quotas.reserve({"slots": 1}):
                pass

        workers: dict[str, list[Any]] = {
            "raw": [cas[i % connections] for i in range(n)],
            "lib": [clusters[i % connections] for i in range(n)],
        }
        cycles: dict[str, Callable[[Any], Awaitable[None]]] = {
            "raw": CasCounter.cycle,
            "lib": lib_cycle,
        }
        done = {"raw": 0, "lib": 0}
        cpu = {"raw": 0.0, "lib": 0.0}
        requests = {"raw": 0, "lib": 0}
        for r in range(QUOTA_ROUNDS):
            for side in ["raw", "lib"] if r % 2 == 0 else ["lib", "raw"]:
                bench.progress(f"{n} workers, round {r + 1}/{QUOTA_ROUNDS}: {side}")
                gc.collect()
                c0, k0 = time.process_time(), kv_requests(bench.endpoint)
                done[side] += await for_a_while(cycles[side], workers[side], s.quota_window)
                cpu[side] += time.process_time() - c0
                k1 = kv_requests(bench.endpoint)
                if k0 is not None and k1 is not None:
                    requests[side] += k1 - k0
    wall = QUOTA_ROUNDS * s.quota_window
    txns = sum(c.txns for c in cas)
    retried = sum(c.retries for c in cas) / max(1, txns)
    waits = sum(c.waits for c in cas)
    per_op = {k: requests[k] / max(1, done[k]) for k in done}
    note = (
        f"CAS: {retried:.0%} of {txns:,} txns retried, {waits:,} waits for room; "
        f"etcd KV requests per op: CAS {per_op['raw']:.1f}, library {per_op['lib']:.1f}; "
        f"this process's CPU: CAS {cpu['raw'] / wall:.0%}, library {cpu['lib'] / wall:.0%}; "
        f"{wall:g} s per side"
    )
    if n == QUOTA_WORKERS[-1] and connections == 1:
        ratio = done["lib"] / max(1, done["raw"])
        verdict = "met" if ratio >= QUOTA_THROUGHPUT_GOAL else "missed"
        note += f"; goal >= {QUOTA_THROUGHPUT_GOAL:g}x the CAS counter: {verdict}"
    elif connections > 1:
        note += "; context: one session per worker in one interpreter (not how it is deployed)"
    if connections == 1:
        how = "tasks of one process, one connection per side"
    else:
        how = "each its own connection, one process"
    return Figure(
        f"reserve + release, {n} worker{'s' * (n > 1)} ({how}), limit {QUOTA_LIMIT}; "
        "raw: CAS counter",
        done["raw"] / wall,
        done["lib"] / wall,
        "ops/s",
        QUOTA_ROUNDS,
        note=note,
    )


async def contend_processes(
    bench: Bench,
    cfg: Config,
    counter: bytes,
    procs: int,
    per_proc: int,
    goal: float = QUOTA_THROUGHPUT_GOAL,
) -> Figure:
    """``procs`` child processes of ``per_proc`` workers per side, alternating windows.

    Each library process is one ``connect()`` shared by its workers; each CAS process one
    channel and watch shared by its workers (``scripts/bench_quota_worker.py``).
    """
    s = bench.settings
    n = procs * per_proc
    await bench.kv.Put(rpc.PutRequest(key=counter, value=b"0"))
    children: dict[str, list[asyncio.subprocess.Process]] = {"raw": [], "lib": []}

    async def line_of(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), CHILD_TIMEOUT)
        if not raw:
            raise RuntimeError(f"quota worker {proc.pid} exited ({proc.returncode})")
        return dict(json.loads(raw))

    try:
        bench.progress(f"{n} workers in {procs} processes: starting them")
        for side in ("raw", "lib"):
            for i in range(procs):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(QUOTA_WORKER_SCRIPT),
                    side,
                    bench.endpoint,
                    cfg.namespace,
                    counter.hex(),
                    str(per_proc),
                    str(QUOTA_LIMIT),
                    f"bench-qp-{i}",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                children[side].append(proc)
        for procs_of_side in children.values():
            for proc in procs_of_side:
                assert (await line_of(proc))["event"] == "ready"
        done = {"raw": 0, "lib": 0}
        cpu = {"raw": 0.0, "lib": 0.0}
        requests = {"raw": 0, "lib": 0}
        cas = {"txns": 0, "retries": 0, "waits": 0}
        for r in range(QUOTA_ROUNDS):
            for side in ["raw", "lib"] if r % 2 == 0 else ["lib", "raw"]:
                bench.progress(f"{n} workers in {procs} processes, round {r + 1}: {side}")
                k0 = kv_requests(bench.endpoint)
                for proc in children[side]:
                    assert proc.stdin is not None
                    proc.stdin.write(f"go {s.quota_window}\n".encode())
                    await proc.stdin.drain()
                for proc in children[side]:
                    out = await line_of(proc)
                    done[side] += out["ops"]
                    cpu[side] += out["cpu"]
                    for k in cas:
                        cas[k] += out.get(k, 0)
                k1 = kv_requests(bench.endpoint)
                if k0 is not None and k1 is not None:
                    requests[side] += k1 - k0
    finally:
        for procs_of_side in children.values():
            for proc in procs_of_side:
                if proc.stdin is not None:
                    proc.stdin.close()
        for procs_of_side in children.values():
            for proc in procs_of_side:
                try:
                    await asyncio.wait_for(proc.wait(), CHILD_TIMEOUT)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    wall = QUOTA_ROUNDS * s.quota_window
    per_op = {k: requests[k] / max(1, done[k]) for k in done}
    ratio = done["lib"] / max(1, done["raw"])
    verdict = "met" if ratio >= goal else "missed"
    note = (
        f"CAS: {cas['retries'] / max(1, cas['txns']):.0%} of {cas['txns']:,} txns retried, "
        f"{cas['waits']:,} waits for room; etcd KV requests per op: CAS {per_op['raw']:.1f}, "
        f"library {per_op['lib']:.1f}; the children's CPU: CAS {cpu['raw'] / wall:.0%}, "
        f"library {cpu['lib'] / wall:.0%}; {wall:g} s per side; "
        f"goal >= {goal:g}x the CAS counter: {verdict}"
    )
    return Figure(
        f"reserve + release, {n} workers in {procs} processes ({per_proc} per process, one "
        f"connection each), limit {QUOTA_LIMIT}; raw: CAS counter",
        done["raw"] / wall,
        done["lib"] / wall,
        "ops/s",
        QUOTA_ROUNDS,
        note=note,
    )


async def section_quotas(bench: Bench) -> list[Row]:
    """Uncontended reserve against its raw Txn; contended throughput against a CAS counter."""
    s = bench.settings
    cfg = bench.config("quota")
    raw_ns = bench.namespace("quota-raw")
    raw_base = f"/{raw_ns}/".encode()
    rows: list[Row] = []
    try:
        async with (
            connect(cfg, node_id="bench-quota", hosts_agents=False) as cluster,
            raw_lease(bench) as raw_id,
        ):
            quotas = cluster.quotas
            await quotas.set_limit("solo", 1_000_000)
            await quotas.set_limit("slots", QUOTA_LIMIT)
            await quotas.open_usage("solo")
            kv = bench.kv
            raw_limit = raw_base + b"_system/limits/default/solo"
            raw_queue = raw_base + b"default/quotas/solo/queue/"
            put = await kv.Put(rpc.PutRequest(key=raw_limit, value=b'{"limit":1000000}'))
            raw_limit_mod = put.header.revision

            async def raw_reserve() -> float:
                t0 = time.perf_counter()
                key = raw_queue + uuid.uuid4().hex.encode()
                value = json.dumps(
                    {"amounts": {"solo": 1}, "holder": "bench-quota"},
                    separators=(",", ":"),
                    sort_keys=True,
                ).encode()
                res = await kv.Txn(
                    rpc.TxnRequest(
                        compare=[raw_compare(raw_limit, "MOD", raw_limit_mod)],
                        success=[
                            rpc.RequestOp(
                                request_put=rpc.PutRequest(key=key, value=value, lease=raw_id)
                            ),
                            rpc.RequestOp(request_range=raw_queue_read(raw_queue, limit=64)),
                        ],
                    )
                )
                elapsed = time.perf_counter() - t0
                assert res.succeeded
                await kv.Txn(  # release, untimed, as the library does it
                    rpc.TxnRequest(
                        compare=[raw_compare(key, "CREATE", res.header.revision)],
                        success=[
                            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
                        ],
                    )
                )
                return elapsed

            async def lib_reserve() -> float:
                t0 = time.perf_counter()
                async with quotas.reserve({"solo": 1}):
                    elapsed = time.perf_counter() - t0
                return elapsed

            bench.progress("uncontended reserve")
            label = "reserve, uncontended: reserve() enter"
            results = await run_rounds(
                bench, [Case(label, raw_reserve, lib_reserve, ops=s.coord_ops)]
            )
            raw, lib = results[label]
            note = "raw: the same Txn (limit mod compare, put under lease, read 64 queue keys)"
            rows.append(Latency(label, raw, lib, goal=QUOTA_RESERVE_GOAL, note=note))

        # throughput under contention: library workers against CAS counter workers; tasks
        # of one process share its connection (one session per process, as deployed)
        counter = raw_base + b"counter"
        for n in QUOTA_WORKERS:
            rows.append(await contend(bench, cfg, counter, n, connections=1))
        # the same number of workers spread over processes, each with its own connection
        n = QUOTA_WORKERS[-1]
        rows.append(await contend_processes(bench, cfg, counter, QUOTA_PROCESSES, n // 4))
        # every worker in a process of its own: each process's view sees every change
        rows.append(await contend_processes(bench, cfg, counter, n, 1, QUOTA_SPREAD_GOAL))
        # every worker its own connection in this one process: each library connection has
        # its own view, so this interpreter handles every change once per worker
        rows.append(await contend(bench, cfg, counter, n, connections=n))

        # the counter alone, without the limit check, as DESIGN.md quotes it
        n = QUOTA_WORKERS[-1]
        await bench.kv.Put(rpc.PutRequest(key=counter, value=b"0"))
        async with contextlib.AsyncExitStack() as stack:
            free = [
                await stack.enter_async_context(CasCounter(bench.endpoint, counter, None))
                for _ in range(n)
            ]
            bench.progress(f"{n} CAS workers without a limit")
            wall = QUOTA_ROUNDS * s.quota_window
            done_free = await for_a_while(CasCounter.cycle, free, wall)
            txns = sum(c.txns for c in free)
            retried = sum(c.retries for c in free) / max(1, txns)
            rows.append(
                Figure(
                    f"CAS counter +1/-1 with no limit check, {n} workers (context)",
                    done_free / wall,
                    None,
                    "ops/s",
                    1,
                    note=f"{retried:.0%} of {txns:,} txns retried",
                )
            )
    finally:
        await bench.delete_prefix(f"/{cfg.namespace}/".encode())
        await bench.delete_prefix(raw_base)
    return rows
