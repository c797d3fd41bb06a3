"""Section ``runtime``: spawn to running, and failover of a critical agent."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import sys
import time
from typing import Any

import anyio

from benchmarks.children import CHILD_TIMEOUT, NODE_SCRIPT, child_process, expect_line
from benchmarks.harness import (
    EVENT_TIMEOUT,
    FAILOVER_SLACK,
    FAILOVER_TTL,
    Bench,
    Case,
    Latency,
    Row,
    percentile,
    run_rounds,
    seconds_figure,
)
from benchmarks.raw import RawWatcher, raw_compare, raw_create_txn, raw_lease, rpc
from foundation_etcd import clustered, connect
from foundation_etcd.lowlevel import Keyspace, prefix_end


@clustered("bench-echo")
class BenchEcho:
    """An agent that does nothing: spawn-to-running measures the cluster's part alone."""


@clustered("bench-critical", critical=True)
class BenchCritical:
    """The survivor's side of ``scripts/bench_node.py``'s critical agent (same name)."""

    def __init__(self) -> None:
        self.value = 0

    def restore_state(self, state: dict[str, int]) -> None:
        """Take the checkpoint the dead node wrote."""
        self.value = int(state["value"])

    def get_state(self) -> dict[str, int]:
        """The state to checkpoint."""
        return {"value": self.value}


class EventWaiter:
    """An ``on_event`` hook: futures resolved with (time, fields) when a runtime event comes."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], asyncio.Future[tuple[float, dict[str, Any]]]] = {}

    def expect(self, name: str, agent: str) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        """A future for the next event ``name`` about ``agent``."""
        fut = self.waiting[(name, agent)] = asyncio.get_running_loop().create_future()
        return fut

    def __call__(self, name: str, **fields: Any) -> None:
        """Resolve the future waiting for this event, if any."""
        fut = self.waiting.pop((name, str(fields.get("agent"))), None)
        if fut is not None and not fut.done():
            fut.set_result((time.perf_counter(), fields))


async def section_runtime(bench: Bench) -> list[Row]:
    """Spawn to running against the same etcd calls by hand; failover of a critical agent."""
    s = bench.settings
    cfg = bench.config("rt")
    raw_ks = Keyspace(bench.namespace("rt-raw"))
    kv = bench.kv
    loop = asyncio.get_running_loop()
    events = EventWaiter()
    ids = (f"echo-{i:04}" for i in itertools.count())
    raw_ids = (f"echo-{i:04}" for i in itertools.count())
    lib_calls: list[float] = []
    raw_calls: list[float] = []
    rows: list[Row] = []
    try:
        async with (
            connect(cfg, node_id="bench-host", capacity={"cpu": 1000}) as cluster,
            raw_lease(bench) as raw_id,
            RawWatcher(bench, raw_ks.key("agents", "assign", "")) as raw_watch,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(
                functools.partial(cluster.serve, {"bench-echo": BenchEcho}, on_event=events)
            )
            _, _, res_view = await cluster.scheduler.views()
            node_key = raw_ks.node("bench-host")
            put = await kv.Put(rpc.PutRequest(key=node_key, value=b"{}", lease=raw_id))
            node_mod = put.header.revision
            last_rev = node_mod

            async def raw_spawn() -> float:
                nonlocal last_rev
                agent_id = next(raw_ids)
                spec, assign = raw_ks.agent_spec(agent_id), raw_ks.agent_assign(agent_id)
                res_prefix = raw_ks.key("nodes-res", "bench-host", "")
                res_key = res_prefix + agent_id.encode()
                live, state = raw_ks.agent_live(agent_id), raw_ks.agent_state(agent_id)
                seen = raw_watch.waiting[assign] = loop.create_future()
                t0 = time.perf_counter()
                body = {"class": "bench-echo", "args": {}, "critical": False}
                res = await kv.Txn(
                    rpc.TxnRequest(
                        compare=[
                            raw_compare(node_key, "MOD", node_mod),
                            rpc.Compare(
                                key=res_prefix,
                                range_end=prefix_end(res_prefix),
                                target=rpc.Compare.MOD,
                                result=rpc.Compare.LESS,
                                mod_revision=last_rev + 1,
                            ),
                            raw_compare(spec, "CREATE", 0),
                        ],
                        success=[
                            rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v))
                            for k, v in (
                                (assign, b'{"node":"bench-host","status":"assigned"}'),
                                (res_key, b'{"resources":{}}'),
                                (spec, json.dumps(body).encode()),
                            )
                        ],
                        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=spec))],
                    )
                )
                raw_calls.append(time.perf_counter() - t0)
                assert res.succeeded
                await asyncio.wait_for(seen, EVENT_TIMEOUT)  # the node sees its assignment
                claim = await kv.Txn(raw_create_txn(live, b'{"node":"bench-host"}', raw_id))
                assert claim.succeeded
                await kv.Range(rpc.RangeRequest(key=state))  # the checkpoint to restore
                elapsed = time.perf_counter() - t0
                gone = await kv.Txn(
                    rpc.TxnRequest(
                        success=[
                            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k))
                            for k in (spec, assign, res_key, live)
                        ]
                    )
                )
                last_rev = gone.header.revision
                return elapsed

            async def lib_spawn() -> float:
                agent_id = next(ids)
                started = events.expect("started", agent_id)
                stopped = events.expect("stopped", agent_id)
                t0 = time.perf_counter()
                await cluster.spawn(BenchEcho, agent_id)
                lib_calls.append(time.perf_counter() - t0)
                t1, _ = await asyncio.wait_for(started, EVENT_TIMEOUT)
                await cluster.despawn(agent_id)  # untimed: leave the node empty again
                await asyncio.wait_for(stopped, EVENT_TIMEOUT)
                await res_view.wait_for((await cluster.transport.status()).revision)
                return t1 - t0

            bench.progress("spawn -> started")
            label = "spawn -> hosting runtime reports the agent started"
            results = await run_rounds(bench, [Case(label, raw_spawn, lib_spawn, ops=s.spawn_ops)])
            tg.cancel_scope.cancel()
        raw, lib = results[label]
        warm = min(s.warmup, s.spawn_ops)
        rows.append(
            Latency(
                label,
                raw,
                lib,
                note="raw: the placement Txn (spec, assignment, node reservation), the node's "
                "watch event, its claim Txn and its state read, by hand; one process spawns "
                "and hosts",
            )
        )
        rows.append(
            Latency(
                "spawn() call alone, same spawns",
                raw_calls[warm:],
                lib_calls[warm:],
                note="raw: the placement Txn",
            )
        )
    finally:
        await bench.delete_prefix(f"/{cfg.namespace}/".encode())
        await bench.delete_prefix(raw_ks.prefix)
    rows += await runtime_failover(bench)
    return rows


async def runtime_failover(bench: Bench) -> list[Row]:
    """SIGKILL a node hosting a critical agent; time until the survivor runs it restored."""
    total: list[float] = []
    expired: list[float] = []
    granted: set[int] = set()
    leaders: list[str] = []
    reps = bench.settings.failover_reps
    for rep in range(reps):
        cfg = bench.config(f"rt-fo{rep}", ttl=float(FAILOVER_TTL))
        ks = cfg.keyspace
        events = EventWaiter()
        # odd repetitions start the doomed node first, so that it leads the scheduler
        doomed_leads = rep % 2 == 1
        bench.progress(f"runtime failover {rep + 1}/{reps}")
        argv = (sys.executable, str(NODE_SCRIPT), bench.endpoint, cfg.namespace, "bench-doomed")
        try:
            async with contextlib.AsyncExitStack() as stack:
                proc = None
                if doomed_leads:
                    proc = await stack.enter_async_context(child_process(*argv, str(FAILOVER_TTL)))
                    granted.add(int((await expect_line(proc, "ready"))["ttl"]))
                cluster = await stack.enter_async_context(
                    connect(cfg, node_id="bench-survivor", capacity={"cpu": 8})
                )
                tg = await stack.enter_async_context(anyio.create_task_group())
                tg.start_soon(
                    functools.partial(
                        cluster.serve, {"bench-critical": BenchCritical}, on_event=events
                    )
                )
                try:
                    if proc is None:
                        await wait_leader(cluster, "bench-survivor")
                        proc = await stack.enter_async_context(
                            child_process(*argv, str(FAILOVER_TTL))
                        )
                        granted.add(int((await expect_line(proc, "ready"))["ttl"]))
                    else:
                        await wait_leader(cluster, "bench-doomed")
                    leader = await cluster.election("scheduler").leader()
                    leaders.append(leader.value.decode() if leader else "?")
                    deadline = time.perf_counter() + EVENT_TIMEOUT
                    while cluster.node("bench-doomed") is None:
                        assert time.perf_counter() < deadline, "doomed node not seen"
                        await asyncio.sleep(0.005)
                    await cluster.spawn(BenchCritical, "critical", placement="pinned:bench-doomed")
                    await expect_line(proc, "saved")
                    async with RawWatcher(bench, ks.nodes_prefix()) as watcher:
                        deleted = watcher.waiting[ks.node("bench-doomed")] = (
                            asyncio.get_running_loop().create_future()
                        )
                        started = events.expect("started", "critical")
                        t0 = time.perf_counter()
                        proc.kill()
                        t1, fields = await asyncio.wait_for(started, CHILD_TIMEOUT)
                        t_del = await asyncio.wait_for(deleted, EVENT_TIMEOUT)
                    assert fields.get("restored"), fields
                    total.append(t1 - t0)
                    expired.append(t_del - t0)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await bench.delete_prefix(f"/{cfg.namespace}/".encode())
    gap = 1000 * (percentile(total, 0.5) - percentile(expired, 0.5))
    note = (
        f"etcd deleted the dead node's key after {percentile(expired, 0.5):.2f} s (median), "
        f"the survivor ran the agent {gap:.0f} ms later; scheduler led by: "
        f"{', '.join(leaders)}; TTL granted to the killed node: "
        f"{', '.join(f'{t} s' for t in sorted(granted))}"
    )
    return seconds_figure(
        f"runtime failover: SIGKILL of the hosting node -> agent started restored "
        f"(ttl {FAILOVER_TTL} s)",
        total,
        FAILOVER_TTL + FAILOVER_SLACK,
        note,
    )


async def wait_leader(cluster: Any, node_id: str) -> None:
    """Wait until ``node_id`` leads the cluster's failover scheduler."""
    election = cluster.election("scheduler")
    deadline = time.perf_counter() + EVENT_TIMEOUT
    while True:
        leader = await election.leader()
        if leader is not None and leader.value == node_id.encode():
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{node_id} does not lead the scheduler")
        await asyncio.sleep(0.01)
