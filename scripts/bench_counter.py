"""Benchmark: a sharded counter against a compare-and-swap counter, writers in processes.

Usage::

    .venv/bin/python scripts/bench_counter.py                  # its own etcd, 16 + 1 writers
    .venv/bin/python scripts/bench_counter.py --rounds 2 --seconds 3
    .venv/bin/python scripts/bench_counter.py --endpoints 127.0.0.1:2379   # an existing etcd

Without ``--endpoints`` a private single-member etcd is started with
``foundation_etcd.testing.EtcdServer`` (loopback, ``--unsafe-no-fsync``) and stopped at the
end. Each writer is its own process (``scripts/bench_counter_worker.py``) with its own
connection and session, adding 1 in a loop, one increment at a time:

* **CAS**: one key; ``txn(mod_revision == seen, put value + 1, failure: get)``, retried at
  once with the value the failure branch read back;
* **sharded**: ``ShardedCounter.add(1)`` (``--shards`` shards, 32 by default).

For each writer count (16, then 1) the two run in alternating windows of ``--seconds``
(CAS first in odd rounds, sharded first in even ones), each window on a fresh counter, all
writers starting at one wall-clock instant. A window's rate is its confirmed increments over
the longest writer's elapsed time. After every window the counter is read back (one
linearizable read) and must equal the sum of the writers' confirmed increments: the run
fails otherwise. The report gives the median rate of each side, sharded / CAS, and the
fraction of each side's transactions that lost their compare (and were retried).

The same measurement is the counter rows of ``scripts/bench.py --only consensus`` (the
section ``benchmarks/consensus.py`` calls ``measure`` here with a ``Plan`` from the
harness's settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation_etcd import Config, Session, ShardedCounter, open_session
from foundation_etcd.lowlevel import open_transport

WORKER = Path(__file__).resolve().parent / "bench_counter_worker.py"
LINE_TIMEOUT = 60.0  # seconds to wait for a worker's next line
GOAL = 5.0  # sharded / CAS at the largest writer count
MODES = ("cas", "sharded")


@dataclass(frozen=True)
class Plan:
    """What to measure: the writer counts and the windows."""

    rounds: int = 3  # windows per side per writer count
    seconds: float = 5.0  # window length with several writers
    single_seconds: float = 3.0  # window length with 1 writer
    shards: int = 32  # ShardedCounter shards
    workers: tuple[int, ...] = (16, 1)  # writer counts, in this order


@dataclass
class Side:
    """The windows of one side at one writer count."""

    rates: list[float] = field(default_factory=list)
    txns: int = 0
    retries: int = 0
    ops: int = 0

    @property
    def median(self) -> float:
        """The median rate, increments per second."""
        return statistics.median(self.rates)

    @property
    def retry_fraction(self) -> float:
        """The fraction of transactions that lost their compare."""
        return self.retries / self.txns if self.txns else 0.0


class Worker:
    """One writer process, driven by lines on its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, event: str) -> dict[str, Any]:
        """The worker's next JSON line, which must be ``event``."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), LINE_TIMEOUT)
        if not raw:
            raise RuntimeError(f"worker exited ({await self.proc.wait()}) before {event!r}")
        msg: dict[str, Any] = json.loads(raw)
        if msg.get("event") != event:
            raise RuntimeError(f"worker said {msg}, expected {event!r}")
        return msg

    async def send(self, text: str) -> None:
        """Write one line to the worker."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()


@contextlib.asynccontextmanager
async def workers(
    n: int, endpoint: str, namespace: str, shards: int
) -> AsyncIterator[list[Worker]]:
    """Start ``n`` writer processes and wait until each is connected."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(n):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(WORKER),
                    endpoint,
                    namespace,
                    str(shards),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        out = [Worker(p) for p in procs]
        await asyncio.gather(*(w.line("ready") for w in out))
        yield out
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()


async def counted(session: Session, mode: str, name: str) -> int:
    """The counter's value, read back linearizably."""
    if mode == "cas":
        kv = await session.transport.get(session.config.keyspace.key("bench-cas", name))
        return 0 if kv is None else int(kv.value)
    return await ShardedCounter(session, name).exact()


async def run_window(
    ws: list[Worker], session: Session, mode: str, seconds: float, side: Side
) -> str:
    """One window: every writer adds for ``seconds``; check the count; return a log line."""
    name = f"{mode}-{len(ws)}-{uuid.uuid4().hex[:8]}"
    start = time.time() + 0.5  # every writer has read its line by then
    await asyncio.gather(*(w.send(f"go {mode} {name} {start} {seconds}") for w in ws))
    done = await asyncio.gather(*(w.line("done") for w in ws))
    ops = sum(d["ops"] for d in done)
    elapsed = max(d["elapsed"] for d in done)
    got = await counted(session, mode, name)
    if got != ops:
        raise RuntimeError(f"{mode}: counter {name} is {got}, writers confirmed {ops}")
    side.rates.append(ops / elapsed)
    side.ops += ops
    side.txns += sum(d["txns"] for d in done)
    side.retries += sum(d["retries"] for d in done)
    retried = sum(d["retries"] for d in done) / max(1, sum(d["txns"] for d in done))
    return (
        f"  {len(ws):>2} writers {mode:>7}: {ops / elapsed:8.0f} incr/s "
        f"({ops} in {elapsed:.2f} s, {retried:.1%} of txns retried; counter exact)"
    )


def stderr_line(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


async def measure(
    endpoint: str,
    plan: Plan,
    *,
    namespace: str | None = None,
    log: Callable[[str], None] = stderr_line,
) -> dict[int, dict[str, Side]]:
    """Every window of every writer count, alternating the sides.

    Raises ``RuntimeError`` if a window's counter is not exactly the sum of the writers'
    confirmed increments. The keys stay in ``namespace`` (a fresh one by default).
    """
    namespace = namespace or f"bench-counter-{uuid.uuid4().hex[:8]}"
    cfg = Config(endpoints=(endpoint,), namespace=namespace)
    results: dict[int, dict[str, Side]] = {}
    async with (
        open_transport(cfg) as t,
        open_session(t) as session,
        workers(max(plan.workers), endpoint, namespace, plan.shards) as ws,
    ):
        for n in plan.workers:
            sides = results[n] = {m: Side() for m in MODES}
            seconds = plan.seconds if n > 1 else plan.single_seconds
            for r in range(plan.rounds):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    line = await run_window(ws[:n], session, mode, seconds, sides[mode])
                    log(f"round {r + 1}{line}")
    return results


def report(plan: Plan, results: dict[int, dict[str, Side]], note: str) -> str:
    """The markdown report."""
    lines = [
        "",
        f"etcd: {note}. Writers: one process each. {plan.rounds} rounds of "
        f"{plan.seconds:g} s per side ({plan.single_seconds:g} s with 1 writer), alternating; "
        f"ShardedCounter with {plan.shards} shards. Every window's counter was exact "
        "(read back = sum of confirmed increments).",
        "",
        "| writers | CAS incr/s (median) | sharded incr/s (median) | sharded / CAS "
        "| CAS txns retried | sharded txns retried | windows (CAS; sharded) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, sides in results.items():
        cas, sh = sides["cas"], sides["sharded"]
        windows = "; ".join(", ".join(f"{x:.0f}" for x in s.rates) for s in (cas, sh))
        lines.append(
            f"| {n} | {cas.median:,.0f} | {sh.median:,.0f} | {sh.median / cas.median:.2f}x "
            f"| {cas.retry_fraction:.1%} | {sh.retry_fraction:.1%} | {windows} |"
        )
    top = max(results)
    ratio = results[top]["sharded"].median / results[top]["cas"].median
    verdict = "met" if ratio >= GOAL else "NOT met"
    lines += ["", f"Goal sharded >= {GOAL:g}x CAS with {top} writers: {verdict} ({ratio:.2f}x)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start etcd unless given one, measure, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--endpoints", metavar="HOST:PORT", help="an existing etcd member")
    parser.add_argument("--rounds", type=int, default=3, help="windows per side (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="window length (5 s)")
    parser.add_argument(
        "--single-seconds", type=float, default=3.0, help="window length with 1 writer (3 s)"
    )
    parser.add_argument("--shards", type=int, default=32, help="ShardedCounter shards (32)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[16, 1], help="writer counts (16 1)"
    )
    args = parser.parse_args(argv)
    plan = Plan(args.rounds, args.seconds, args.single_seconds, args.shards, tuple(args.workers))
    print(f"$ {shlex.join(['python', *sys.argv])}", flush=True)
    with contextlib.ExitStack() as stack:
        if args.endpoints:
            endpoint, note = args.endpoints, "existing member"
        else:
            from foundation_etcd.testing import EtcdServer

            print("[etcd] starting a private etcd", file=sys.stderr, flush=True)
            endpoint = stack.enter_context(EtcdServer(name="bench-counter")).endpoint
            note = "started by the script: one member, loopback, --unsafe-no-fsync"
        results = asyncio.run(measure(endpoint, plan))
    print(report(plan, results, note))
    return 0


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    sys.exit(main())
