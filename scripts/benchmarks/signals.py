"""Section ``signals``: send to handler, call round trip, signals/s, many agents on a node.

Four measurements, each beside raw etcd requests in the same run:

1. ``cluster.send`` until the hosted agent's ``handle_signal`` begins (agent hosted by a
   ``cluster.serve()`` in this process) against a raw put seen on an open raw Watch stream.
2. ``cluster.call(agent, "echo", ...)`` round trip, agent hosted in this process and in a
   node child process (``scripts/bench_signal_node.py``), against a raw Txn; and once more
   in this process for an agent whose ``get_state`` is a plain function (a worker thread).
3. Signals handled per second with 64 in flight end to end (64 senders here, each to its
   own agent on a node child process, each sending again once its signal was handled)
   against raw puts per second with 64 in flight.
4. Per signal, with ``Settings.signal_agents`` agents hosted on one node process against
   10 on another (both alive, rounds alternating): send -> handled and the node process's
   CPU (``time.process_time`` there, read by an action of its first agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import anyio

from benchmarks.children import SCRIPTS, child_process, expect_line
from benchmarks.harness import (
    CONCURRENCY,
    EVENT_TIMEOUT,
    VALUE,
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
from benchmarks.raw import RawWatcher, kv_requests, raw_create_txn, rpc
from foundation_etcd import Cluster, Signal, SignalContext, action, clustered, connect

SIGNAL_NODE_SCRIPT = SCRIPTS / "bench_signal_node.py"
SEND_GOAL = 3.0  # send -> handler start / raw put -> watch event
CALL_GOAL = 4.0  # call round trip / raw Txn
THROUGHPUT_ROUNDS = 4  # alternating raw/library windows of the throughput run
FEW_AGENTS = 10  # the uncrowded node of the many-agents run
SLOW_CALL = 0.02  # seconds: calls slower than this are counted in the call rows' notes


@clustered("bench-sink")
class Sink:
    """Counts the signals it handles; ``echo`` and ``usage`` actions.

    Its state hooks are ``async def``, as the docs advise for an agent whose state is cheap
    to copy: they run on the event loop. :class:`PlainSink` measures plain ones.

    ``started``, when set (in this process only), is called with each signal's id as the
    first thing ``handle_signal`` does.
    """

    started: ClassVar[Callable[[str], None] | None] = None

    def __init__(self) -> None:
        self.count = 0

    async def get_state(self) -> dict[str, int]:
        """The state checkpointed with every handling (``async def``: no worker thread)."""
        return {"count": self.count}

    async def restore_state(self, state: dict[str, int]) -> None:
        """Continue from a checkpoint (or undo a failed handling)."""
        self.count = int(state["count"])

    async def handle_signal(self, signal: Signal, ctx: SignalContext) -> None:
        """Stamp the start, count the signal."""
        hook = Sink.started
        if hook is not None:
            hook(signal.id)
        self.count += 1

    @action
    async def echo(self, text: str) -> dict[str, str]:
        """Return ``text``."""
        return {"text": text}

    @action
    def usage(self) -> dict[str, float]:
        """The hosting process's CPU time (``time.process_time``) and resident set size."""
        return {"cpu": time.process_time(), "rss": float(rss_bytes())}


@clustered("bench-plain-sink")
class PlainSink(Sink):
    """A :class:`Sink` whose state hooks are plain functions: each runs in a worker thread."""

    def get_state(self) -> dict[str, int]:  # type: ignore[override]
        """The state checkpointed with every handling (a worker thread's round trip)."""
        return {"count": self.count}

    def restore_state(self, state: dict[str, int]) -> None:  # type: ignore[override]
        """Continue from a checkpoint (or undo a failed handling)."""
        self.count = int(state["count"])


class Stamps:
    """Futures resolved when a signal's handler starts or its handling is committed."""

    def __init__(self) -> None:
        self.starting: dict[str, asyncio.Future[float]] = {}
        self.handling: dict[str, asyncio.Future[float]] = {}
        self.running: dict[str, asyncio.Future[float]] = {}

    def expect(self, signal_id: str) -> tuple[asyncio.Future[float], asyncio.Future[float]]:
        """Futures for the handler start and the committed handling of ``signal_id``."""
        loop = asyncio.get_running_loop()
        start = self.starting[signal_id] = loop.create_future()
        done = self.handling[signal_id] = loop.create_future()
        return start, done

    def expect_running(self, agent_id: str) -> asyncio.Future[float]:
        """A future for the runtime's ``started`` event of ``agent_id``."""
        fut = self.running[agent_id] = asyncio.get_running_loop().create_future()
        return fut

    @staticmethod
    def _resolve(waiting: dict[str, asyncio.Future[float]], key: str) -> None:
        fut = waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    def on_start(self, signal_id: str) -> None:
        """``Sink.started``: a handler began."""
        self._resolve(self.starting, signal_id)

    def on_event(self, name: str, **fields: Any) -> None:
        """The runtime's ``on_event``: ``signal`` after each commit, ``started`` per agent."""
        if name == "signal":
            self._resolve(self.handling, str(fields.get("signal")))
        elif name == "started":
            self._resolve(self.running, str(fields.get("agent")))


async def section_signals(bench: Bench) -> list[Row]:
    """Send -> handler start, call round trip, signals/s; then many agents on one node."""
    rows = await latencies_and_throughput(bench)
    rows += await many_agents(bench)
    return rows


# --------------------------------------------------------------------------------------------
# node child processes


@contextlib.asynccontextmanager
async def signal_node(
    bench: Bench, namespace: str, node_id: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A ``scripts/bench_signal_node.py`` process serving as ``node_id``, once ready."""
    argv = (sys.executable, str(SIGNAL_NODE_SCRIPT), bench.endpoint, namespace, node_id)
    async with child_process(*argv) as proc:
        await expect_line(proc, "ready")
        yield proc


async def spawn_on(
    bench: Bench,
    cluster: Cluster,
    proc: asyncio.subprocess.Process,
    node_id: str,
    agents: Sequence[str],
) -> tuple[float, float]:
    """Spawn ``agents`` pinned to ``node_id``, one after the other, and wait for them.

    Returns the seconds until the last ``spawn()`` returned and until the node reported
    every agent started. The node's ``started`` lines are read while spawning (a full pipe
    would stall it); each must come within ``CHILD_TIMEOUT`` of the one before.
    """
    total = len(agents)
    step = max(1, total // 10)
    t0 = time.perf_counter()
    spawned = 0.0

    async def read_started() -> None:
        n = 0
        while n < total:
            n = int((await expect_line(proc, "started"))["n"])
            if n % step == 0 or n == total:
                elapsed = time.perf_counter() - t0
                bench.progress(f"{node_id}: {n}/{total} agents running ({elapsed:.1f} s)")

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_started)
        for i, agent_id in enumerate(agents, 1):
            await cluster.spawn(Sink, agent_id, placement=f"pinned:{node_id}")
            if i % step == 0 and i < total:
                elapsed = time.perf_counter() - t0
                bench.progress(f"{node_id}: {i}/{total} spawned ({elapsed:.1f} s)")
        spawned = time.perf_counter() - t0
    return spawned, time.perf_counter() - t0


def slow_share(samples: Sequence[float]) -> str:
    """The share of calls over ``SLOW_CALL`` seconds (the machine's noise, mostly)."""
    share = sum(x > SLOW_CALL for x in samples) / max(1, len(samples))
    return (
        f"{share:.0%} took over {SLOW_CALL * 1000:.0f} ms (the machine's noise, or a pause "
        "of the interpreter: garbage collection, another process)"
    )


async def usage_of(cluster: Cluster, agent_id: str) -> tuple[float, float]:
    """The CPU seconds and RSS bytes of the process hosting ``agent_id`` (one call)."""
    out = await cluster.call(agent_id, "usage")
    return float(out["cpu"]), float(out["rss"])


# --------------------------------------------------------------------------------------------
# 1-3: send -> handler, call, throughput


async def latencies_and_throughput(bench: Bench) -> list[Row]:
    """Send -> handler start and call round trips (rounds), then the throughput windows."""
    s = bench.settings
    cfg = bench.config("sig")
    base = f"/{cfg.namespace}/".encode()
    raw_prefix = base + b"raw/"
    kv = bench.kv
    loop = asyncio.get_running_loop()
    counter = itertools.count()
    stamps = Stamps()
    local, plain, remote_node = "sig-local", "sig-plain", "bench-sig-remote"
    remote = [f"sig-remote-{i:02}" for i in range(CONCURRENCY)]
    raw_put: list[float] = []
    lib_send: list[float] = []
    lib_handled: list[float] = []
    rows: list[Row] = []
    Sink.started = stamps.on_start
    try:
        async with (
            connect(cfg, node_id="bench-sig-main") as cluster,
            signal_node(bench, cfg.namespace, remote_node) as proc,
            RawWatcher(bench, raw_prefix + b"ev/") as raw_watch,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(
                functools.partial(
                    cluster.serve,
                    {"bench-sink": Sink, "bench-plain-sink": PlainSink},
                    scheduler=False,
                    on_event=stamps.on_event,
                )
            )
            for agent_id, cls in ((local, Sink), (plain, PlainSink)):
                running = stamps.expect_running(agent_id)
                await cluster.spawn(cls, agent_id, placement="pinned:bench-sig-main")
                await asyncio.wait_for(running, EVENT_TIMEOUT)
            bench.progress(f"spawning {len(remote)} agents on {remote_node}")
            await spawn_on(bench, cluster, proc, remote_node, remote)

            async def raw_event() -> float:
                key = raw_prefix + b"ev/%08d" % next(counter)
                fut: asyncio.Future[float] = loop.create_future()
                raw_watch.waiting[key] = fut
                t0 = time.perf_counter()
                await kv.Put(rpc.PutRequest(key=key, value=VALUE))
                raw_put.append(time.perf_counter() - t0)
                return await asyncio.wait_for(fut, EVENT_TIMEOUT) - t0

            async def lib_start() -> float:
                sid = f"s{next(counter):08d}"
                started, handled = stamps.expect(sid)
                t0 = time.perf_counter()
                await cluster.send(local, "ping", {"n": 1}, signal_id=sid)
                lib_send.append(time.perf_counter() - t0)
                t1 = await asyncio.wait_for(started, EVENT_TIMEOUT)
                lib_handled.append(await asyncio.wait_for(handled, EVENT_TIMEOUT) - t0)
                return t1 - t0

            def raw_txn() -> Any:
                key = raw_prefix + b"txn/%08d" % next(counter)
                return kv.Txn(raw_create_txn(key, VALUE))

            labels = {
                "send": "send -> handle_signal starts (agent in this process); "
                "raw: put -> event on an open Watch stream",
                "local": 'call(agent, "echo") round trip, agent hosted in this process; raw: Txn',
                "remote": 'call(agent, "echo") round trip, agent hosted in another process; '
                "raw: Txn",
                "plain": 'call(agent, "echo") round trip, agent in this process with plain-def '
                "get_state/restore_state; raw: Txn",
            }
            cases = [
                Case(labels["send"], raw_event, lib_start),
                Case(
                    labels["local"],
                    clocked(raw_txn),
                    clocked(lambda: cluster.call(local, "echo", {"text": "x"})),
                    ops=s.coord_ops,
                ),
                Case(
                    labels["remote"],
                    clocked(raw_txn),
                    clocked(lambda: cluster.call(remote[0], "echo", {"text": "x"})),
                    ops=s.coord_ops,
                ),
                Case(
                    labels["plain"],
                    clocked(raw_txn),
                    clocked(lambda: cluster.call(plain, "echo", {"text": "x"})),
                    ops=s.coord_ops,
                ),
            ]
            results = await run_rounds(bench, cases)
            warm = min(s.warmup, s.ops)
            raw_ev, lib_ev = results[labels["send"]]
            raw_put, lib_send, lib_handled = raw_put[warm:], lib_send[warm:], lib_handled[warm:]
            rows += [
                Latency(
                    labels["send"],
                    raw_ev,
                    lib_ev,
                    goal=SEND_GOAL,
                    note="library: the send Txn, its inbox event on the node's doorbell "
                    "stream, the handler (no marker Txn: the last ack left a standing marker)",
                ),
                Latency(
                    "send() call alone, same sends; raw: put round trip, same puts",
                    raw_put,
                    lib_send,
                    note="send: one Txn (spawned, new id, not done, not dead, inbox bound; "
                    "put + counter put); the node here handles the inbox event, which "
                    "usually comes before the Txn's answer, before send() resumes",
                ),
                Latency(
                    labels["local"],
                    *results[labels["local"]],
                    goal=CALL_GOAL,
                    note="send Txn, inbox event, action, ack Txn, done-record event on the "
                    "agent's shared reply watch; sender and host share this interpreter; "
                    + slow_share(results[labels["local"]][1]),
                ),
                Latency(
                    labels["remote"],
                    *results[labels["remote"]],
                    goal=CALL_GOAL,
                    note="the agent on a node child process (scripts/bench_signal_node.py); "
                    + slow_share(results[labels["remote"]][1]),
                ),
                Latency(
                    labels["plain"],
                    *results[labels["plain"]],
                    note="as the row before last, but get_state is a plain function: it "
                    "runs in a worker thread after every handling (anyio.to_thread), so a "
                    "blocking one cannot stall the loop; the rows above use async def hooks",
                ),
                Figure(
                    "send -> handling committed (on_event 'signal' after the ack Txn), "
                    "agent in this process",
                    None,
                    percentile(lib_handled, 0.5) * 1000,
                    "ms",
                    len(lib_handled),
                    note=f"p90 {percentile(lib_handled, 0.9) * 1000:.3f} ms; same sends",
                ),
            ]
            rows.append(await throughput(bench, cluster, remote, counter))
            tg.cancel_scope.cancel()
    finally:
        Sink.started = None
        await bench.delete_prefix(base)
    return rows


async def throughput(bench: Bench, cluster: Cluster, agents: Sequence[str], counter: Any) -> Figure:
    """Signals handled/s, one sender per agent, against raw puts/s, as many in flight."""
    s = bench.settings
    ks = cluster.keyspace
    kv = bench.kv
    loop = asyncio.get_running_loop()
    raw_keys = [f"/{cluster.config.namespace}/raw/tp/{i:02}".encode() for i in range(len(agents))]
    done = {"raw": 0, "lib": 0}
    finished = {"raw": 0, "lib": 0}  # done + the operations in flight at each window's end
    requests = {"raw": 0, "lib": 0}
    cpu_here = {"raw": 0.0, "lib": 0.0}
    node_cpu = 0.0
    latencies: list[float] = []
    tails = 0  # operations finished after their window's end (counted for requests per op)
    async with RawWatcher(bench, ks.key("signals", "done", "")) as done_watch:

        async def raw_worker(key: bytes, end: float) -> int:
            nonlocal tails
            n = 0
            while time.perf_counter() < end:
                await kv.Put(rpc.PutRequest(key=key, value=VALUE))
                if time.perf_counter() <= end:
                    n += 1
                else:
                    tails += 1
            return n

        async def lib_worker(agent_id: str, end: float) -> int:
            nonlocal tails
            n = 0
            while time.perf_counter() < end:
                sid = f"t{next(counter):08d}"
                fut: asyncio.Future[float] = loop.create_future()
                done_watch.waiting[ks.signal_done(agent_id, sid)] = fut
                t0 = time.perf_counter()
                await cluster.send(agent_id, "ping", {"n": 1}, signal_id=sid)
                t1 = await asyncio.wait_for(fut, EVENT_TIMEOUT)
                if t1 <= end:
                    n += 1
                    latencies.append(t1 - t0)
                else:
                    tails += 1
            return n

        async def window(side: str) -> int:
            end = time.perf_counter() + s.signal_window
            nonlocal tails
            tails = 0
            if side == "raw":
                counts = await asyncio.gather(*(raw_worker(k, end) for k in raw_keys))
            else:
                counts = await asyncio.gather(*(lib_worker(a, end) for a in agents))
            finished[side] += sum(counts) + tails
            return sum(counts)

        bench.progress(f"throughput, {len(agents)} in flight: warm-up")
        await window("lib")
        await window("raw")
        latencies.clear()
        finished.update(raw=0, lib=0)
        for r in range(THROUGHPUT_ROUNDS):
            for side in ["raw", "lib"] if r % 2 == 0 else ["lib", "raw"]:
                bench.progress(f"throughput round {r + 1}/{THROUGHPUT_ROUNDS}: {side}")
                gc.collect()
                if side == "lib":
                    node0, _ = await usage_of(cluster, agents[0])
                c0, k0 = time.process_time(), kv_requests(bench.endpoint)
                done[side] += await window(side)
                cpu_here[side] += time.process_time() - c0
                k1 = kv_requests(bench.endpoint)
                if side == "lib":
                    node_cpu += (await usage_of(cluster, agents[0]))[0] - node0
                if k0 is not None and k1 is not None:
                    requests[side] += k1 - k0
    wall = THROUGHPUT_ROUNDS * s.signal_window
    per_op = {k: requests[k] / max(1, finished[k]) for k in done}
    note = (
        f"library: {len(agents)} senders in this process, each to its own agent on one node "
        "child process, each sending again once its signal's done record was seen (a raw "
        "watch here); raw: "
        f"{len(agents)} workers putting their own key; send -> handled under this load: "
        f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, p90 "
        f"{percentile(latencies, 0.9) * 1000:.2f} ms; etcd KV requests per op: raw "
        f"{per_op['raw']:.1f}, library {per_op['lib']:.1f}; CPU: this process raw "
        f"{cpu_here['raw'] / wall:.0%}, library {cpu_here['lib'] / wall:.0%}, the node "
        f"process {node_cpu / wall:.0%}; {wall:g} s per side"
    )
    return Figure(
        f"signals handled/s, {len(agents)} in flight end to end; raw: puts/s, "
        f"{len(agents)} in flight",
        done["raw"] / wall,
        done["lib"] / wall,
        "/s",
        THROUGHPUT_ROUNDS,
        note=note,
    )


# --------------------------------------------------------------------------------------------
# 4: many agents on one node


async def many_agents(bench: Bench) -> list[Row]:
    """Per-signal latency and node CPU: ``signal_agents`` agents on a node against 10."""
    s = bench.settings
    cfg = bench.config("sig-n")
    ks = cfg.keyspace
    loop = asyncio.get_running_loop()
    counter = itertools.count()
    many = s.signal_agents
    nodes = {FEW_AGENTS: "bench-sig-few", many: "bench-sig-many"}
    ids = {n: [f"n{n}-{i:04}" for i in range(n)] for n in nodes}
    latency: dict[int, list[float]] = {n: [] for n in nodes}
    cpu: dict[int, list[float]] = {n: [] for n in nodes}
    idle: dict[int, float] = {}
    rss: dict[int, float] = {}
    spawn_calls = spawn_time = 0.0
    try:
        async with (
            connect(cfg, node_id="bench-sig-sender", hosts_agents=False) as cluster,
            signal_node(bench, cfg.namespace, nodes[FEW_AGENTS]) as few_proc,
            signal_node(bench, cfg.namespace, nodes[many]) as many_proc,
            RawWatcher(bench, ks.key("signals", "done", "")) as done_watch,
        ):
            bench.progress(f"spawning {FEW_AGENTS} agents on {nodes[FEW_AGENTS]}")
            await spawn_on(bench, cluster, few_proc, nodes[FEW_AGENTS], ids[FEW_AGENTS])
            bench.progress(f"spawning {many:,} agents on {nodes[many]} (takes a while)")
            spawn_calls, spawn_time = await spawn_on(
                bench, cluster, many_proc, nodes[many], ids[many]
            )

            async def handled(agent_id: str) -> float:
                sid = f"m{next(counter):08d}"
                fut: asyncio.Future[float] = loop.create_future()
                done_watch.waiting[ks.signal_done(agent_id, sid)] = fut
                t0 = time.perf_counter()
                await cluster.send(agent_id, "ping", {"n": 1}, signal_id=sid)
                return await asyncio.wait_for(fut, EVENT_TIMEOUT) - t0

            # every agent's delivery is up: each handles one signal before anything is timed
            bench.progress(f"first signal to each of the {FEW_AGENTS + many:,} agents")
            await concurrently(handled, [a for n in nodes for a in ids[n]])
            for n in nodes:
                c0, _ = await usage_of(cluster, ids[n][0])
                await asyncio.sleep(1.0)
                c1, rss[n] = await usage_of(cluster, ids[n][0])
                idle[n] = c1 - c0  # CPU seconds in one idle second (and one call)
            turn = {n: itertools.cycle(ids[n]) for n in nodes}
            for n in nodes:  # warm-up, untimed
                for _ in range(min(s.warmup, s.ops)):
                    await handled(next(turn[n]))
            for r in range(s.rounds):
                bench.progress(f"many agents: round {r + 1}/{s.rounds}")
                for n in list(nodes) if r % 2 == 0 else list(nodes)[::-1]:
                    gc.collect()
                    c0, _ = await usage_of(cluster, ids[n][0])
                    for _ in range(s.ops):
                        latency[n].append(await handled(next(turn[n])))
                    c1, _ = await usage_of(cluster, ids[n][0])
                    # the interval holds the ops signals and about one of the two calls
                    cpu[n].append((c1 - c0) / (s.ops + 1))
    finally:
        await bench.delete_prefix(f"/{cfg.namespace}/".encode())
    few_lat, many_lat = (percentile(latency[n], 0.5) for n in nodes)
    few_cpu, many_cpu = (percentile(cpu[n], 0.5) for n in nodes)
    where = "hosted on one node process, signals sent from this process round-robin to them"
    rows: list[Row] = []
    for n in nodes:
        rows.append(
            Figure(
                f"send -> handled (done record seen here), {n:,} agents {where}",
                None,
                percentile(latency[n], 0.5) * 1000,
                "ms",
                len(latency[n]),
                note=f"p90 {percentile(latency[n], 0.9) * 1000:.3f} ms"
                + (
                    f"; {n:,} / {FEW_AGENTS} agents: {many_lat / few_lat:.2f}x" if n == many else ""
                ),
            )
        )
    for n in nodes:
        rows.append(
            Figure(
                f"node process CPU per signal, {n:,} agents hosted",
                None,
                percentile(cpu[n], 0.5) * 1e6,
                "µs",
                len(cpu[n]),
                note=f"median of {s.rounds} batches of {s.ops} (process_time in the node); "
                f"idle: {idle[n] * 1000:.1f} ms CPU per s"
                + (
                    f"; {n:,} / {FEW_AGENTS} agents: {many_cpu / few_cpu:.2f}x" if n == many else ""
                ),
            )
        )
    rows.append(
        Figure(
            f"spawn {many:,} agents pinned to a node -> all started",
            None,
            spawn_time,
            "s",
            many,
            note=f"spawn() calls one after the other here, the last returned after "
            f"{spawn_calls:.1f} s; node RSS {rss[many] / 2**20:.0f} MiB with "
            f"{many:,} agents, {rss[FEW_AGENTS] / 2**20:.0f} MiB with {FEW_AGENTS} "
            f"({(rss[many] - rss[FEW_AGENTS]) / (many - FEW_AGENTS) / 1024:.1f} KiB per agent)",
        )
    )
    return rows
