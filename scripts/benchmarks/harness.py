"""The harness: settings, rows and statistics, the bench context, the interleaving."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
from etcd3aio import _protobuf as pb

from foundation_etcd import Config
from foundation_etcd.lowlevel import prefix_end

rpc = pb.rpc_pb2

CONCURRENCY = 64
VALUE = b"v" * 64
EVENT_TIMEOUT = 10.0  # seconds to wait for a watch event before the run fails
FAILOVER_TTL = 2  # seconds: the session TTL of the processes killed in failover runs
FAILOVER_SLACK = 1.0  # goal: failover within TTL + this many seconds


# --------------------------------------------------------------------------------------------
# settings, rows and statistics


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much work each section does."""

    rounds: int  # alternating raw/library rounds
    ops: int  # operations per side per round (latency loops)
    warmup: int  # untimed operations per side before the first round
    agents: int  # registry population
    register_ops: int  # sequential registrations per side per round
    session_window: float  # seconds of session keepalives sampled per round
    session_interval: float  # the session's keepalive interval during the sampling
    coord_ops: int  # campaigns, lock and quota cycles per side per round
    handover_ops: int  # election handovers per side per round
    failover_reps: int  # SIGKILL failovers measured (election, then runtime)
    quota_window: float  # seconds per side per round of the quota throughput runs
    spawn_ops: int  # spawns per side per round
    signal_agents: int  # agents hosted on the crowded node (signals section)
    signal_window: float  # seconds per side per round of the signal throughput runs
    view_gets: int  # SharedState.get() calls timed from the view (consensus section)
    counter_rounds: int  # alternating CAS/sharded counter windows per side per writer count
    counter_window: float  # seconds of one counter window with 16 writers
    counter_single_window: float  # seconds of one counter window with 1 writer


FULL = Settings(
    rounds=10,
    ops=200,
    warmup=40,
    agents=10_000,
    register_ops=100,
    session_window=0.8,
    session_interval=0.05,
    coord_ops=60,
    handover_ops=8,
    failover_reps=3,
    quota_window=1.5,
    spawn_ops=3,
    signal_agents=1_000,
    signal_window=1.5,
    view_gets=20_000,
    counter_rounds=3,
    counter_window=5.0,
    counter_single_window=3.0,
)
QUICK = Settings(
    rounds=4,
    ops=50,
    warmup=10,
    agents=1_000,
    register_ops=25,
    session_window=0.4,
    session_interval=0.05,
    coord_ops=15,
    handover_ops=3,
    failover_reps=1,
    quota_window=0.3,
    spawn_ops=2,
    signal_agents=100,
    signal_window=0.3,
    view_gets=5_000,
    counter_rounds=1,
    counter_window=1.0,
    counter_single_window=0.5,
)


@dataclasses.dataclass
class Latency:
    """A raw-versus-library latency comparison (samples in seconds)."""

    operation: str
    raw: list[float]
    lib: list[float]
    goal: float | None = None
    note: str = ""


@dataclasses.dataclass
class Figure:
    """A single measured value, optionally beside its raw counterpart."""

    measure: str
    raw: float | None
    lib: float | None
    unit: str
    n: int
    note: str = ""


Row = Latency | Figure


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation; NaN when empty."""
    if not samples:
        return math.nan
    s = sorted(samples)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------
# the bench context and the interleaving helper


@dataclasses.dataclass
class Bench:
    """What every section gets: the endpoint, a raw channel, the settings."""

    endpoint: str
    channel: grpc.aio.Channel
    settings: Settings
    run_id: str
    section: str = ""

    def namespace(self, tag: str) -> str:
        """A namespace unique to this run and section."""
        return f"bench-{self.run_id}-{tag}"

    def config(self, tag: str, **options: Any) -> Config:
        """A library configuration for this run's etcd, in a fresh namespace."""
        return Config(endpoints=(self.endpoint,), namespace=self.namespace(tag), **options)

    def progress(self, message: str) -> None:
        """One progress line on stderr."""
        print(f"[{self.section}] {message}", file=sys.stderr, flush=True)

    @property
    def kv(self) -> Any:
        """The raw KV stub."""
        return pb.KVStub(self.channel)

    @property
    def lease(self) -> Any:
        """The raw Lease stub."""
        return pb.LeaseStub(self.channel)

    async def delete_prefix(self, prefix: bytes) -> None:
        """Remove what a section wrote (raw call; the etcd may be someone else's)."""
        await self.kv.DeleteRange(rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)))


Step = Callable[[], Awaitable[float]]


def clocked(call: Callable[[], Awaitable[Any]]) -> Step:
    """A step whose sample is the wall time of ``await call()``."""

    async def step() -> float:
        t0 = time.perf_counter()
        await call()
        return time.perf_counter() - t0

    return step


@dataclasses.dataclass
class Case:
    """One operation compared in ``run_rounds``: a raw step and a library step."""

    label: str
    raw: Step
    lib: Step
    ops: int | None = None  # per side per round; Settings.ops by default


async def run_rounds(
    bench: Bench,
    cases: Sequence[Case],
    *,
    after_lib: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, tuple[list[float], list[float]]]:
    """Run every case for ``settings.rounds`` rounds, raw and library alternating.

    Each round runs each case's raw batch and library batch back to back; the order flips
    from round to round. ``after_lib`` runs (untimed) after each library batch, e.g. to
    let a watched view catch up so that its work does not land in the next raw batch.
    """
    s = bench.settings
    for case in cases:
        for step in (case.raw, case.lib):
            for _ in range(min(s.warmup, case.ops or s.ops)):
                await step()
        if after_lib is not None:
            await after_lib()
    out: dict[str, tuple[list[float], list[float]]] = {c.label: ([], []) for c in cases}
    for r in range(s.rounds):
        bench.progress(f"round {r + 1}/{s.rounds}")
        for case in cases:
            raw_acc, lib_acc = out[case.label]
            sides = [(case.raw, raw_acc, False), (case.lib, lib_acc, True)]
            if r % 2:
                sides.reverse()
            for step, acc, is_lib in sides:
                gc.collect()
                for _ in range(case.ops or s.ops):
                    acc.append(await step())
                if is_lib and after_lib is not None:
                    await after_lib()
    return out


async def concurrently(call: Callable[[Any], Awaitable[Any]], items: Iterable[Any]) -> None:
    """Run ``call(item)`` for every item, ``CONCURRENCY`` at a time."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await call(item)

    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(worker)


def seconds_figure(measure: str, samples: list[float], goal: float, note: str) -> list[Row]:
    """A failover time as two rows: seconds (median, max) and multiples of the TTL."""
    med, worst = percentile(samples, 0.5), max(samples)
    verdict = "met" if worst <= goal else "missed"
    return [
        Figure(
            measure,
            None,
            med,
            "s",
            len(samples),
            note=f"max {worst:.2f} s; goal TTL + {FAILOVER_SLACK:g} s = {goal:g} s: {verdict} "
            f"(by the max); {note}",
        ),
        Figure(
            f"{measure}, as a multiple of the TTL",
            None,
            med / FAILOVER_TTL,
            "x TTL",
            len(samples),
            note=f"TTL {FAILOVER_TTL} s; max {worst / FAILOVER_TTL:.2f}x",
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Section:
    """One section of the report."""

    name: str
    title: str
    run: Callable[[Bench], Awaitable[list[Row]]]
