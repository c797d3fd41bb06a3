"""What other processes' quota traffic costs a process that is not waiting: CPU per admission.

Usage::

    python scripts/quota_observer_cost.py [--seconds S]

Starts an etcd of its own, then three observer processes connected to it:

* ``usage``: asked for a pool's usage (its quota view stays open);
* ``reserved``: made one reservation, admitted by its own transaction, then stays idle;
* ``idle``: connected, no quota call.

A driver process then runs reserve + release in one pool as fast as it can for ``S`` seconds,
and each observer reports the CPU it used meanwhile. Printed: each observer's CPU per
admission of the driver (two queue changes each), as one JSON line per observer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import anyio

from foundation_etcd import Config, connect
from foundation_etcd.testing import EtcdServer

NAMESPACE = "observer-cost"
KINDS = ("usage", "reserved", "idle")


async def observe(endpoint: str, kind: str) -> None:
    """One observer: connect, prepare as ``kind`` says, report its CPU over one window."""
    cfg = Config(endpoints=(endpoint,), namespace=NAMESPACE)
    async with connect(cfg, node_id=f"observer-{kind}", hosts_agents=False) as c:
        if kind == "usage":
            await c.quotas.open_usage("slots")
        elif kind == "reserved":
            async with c.quotas.reserve({"slots": 1}):
                pass
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # go
        began = time.process_time()
        await anyio.to_thread.run_sync(sys.stdin.readline)  # stop
        print(f"{time.process_time() - began:.6f}", flush=True)


async def set_limit(endpoint: str) -> None:
    """Give the pool a limit no run reaches."""
    cfg = Config(endpoints=(endpoint,), namespace=NAMESPACE)
    async with connect(cfg, node_id="admin", hosts_agents=False) as admin:
        await admin.quotas.set_limit("slots", 1_000)


def start_observers(endpoint: str) -> dict[str, subprocess.Popen[str]]:
    """Start one observer of each kind and wait until each is ready."""
    observers: dict[str, subprocess.Popen[str]] = {}
    for kind in KINDS:
        p = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--observe", endpoint, kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"observer {kind} did not start")
        observers[kind] = p
    return observers


def tell(observers: dict[str, subprocess.Popen[str]], line: str) -> None:
    """Send one line to every observer."""
    for p in observers.values():
        assert p.stdin is not None
        p.stdin.write(line + "\n")
        p.stdin.flush()


async def drive(endpoint: str, seconds: float, observers: dict[str, subprocess.Popen[str]]) -> int:
    """Run reserve + release for ``seconds`` within one window of the observers."""
    cfg = Config(endpoints=(endpoint,), namespace=NAMESPACE)
    async with connect(cfg, node_id="driver", hosts_agents=False) as c:
        tell(observers, "go")
        admissions = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            async with c.quotas.reserve({"slots": 1}):
                pass
            admissions += 1
        tell(observers, "stop")
    return admissions


def run(seconds: float) -> None:
    """Start etcd and the observers, run the driver, print the observers' costs."""
    server = EtcdServer()
    server.start()
    try:
        anyio.run(set_limit, server.endpoint)
        observers = start_observers(server.endpoint)
        admissions = anyio.run(drive, server.endpoint, seconds, observers)
        for kind, p in observers.items():
            assert p.stdout is not None and p.stdin is not None
            cpu = float(p.stdout.readline())
            p.stdin.close()
            p.wait()
            per = round(cpu / max(admissions, 1) * 1e6, 1)
            line = {"observer": kind, "cpu_s": cpu, "us_per_admission": per}
            print(json.dumps({**line, "admissions": admissions}))
    finally:
        server.close()


def main() -> None:
    """Parse the arguments and run the driver (or, as a child, one observer)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="the driver's run (5 s)")
    parser.add_argument("--observe", nargs=2, metavar=("ENDPOINT", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.observe:
        endpoint, kind = args.observe
        if kind not in KINDS:
            parser.error(f"unknown observer kind {kind!r}")
        anyio.run(observe, endpoint, kind)
        return
    if not args.seconds > 0:
        parser.error("--seconds must be positive")
    run(args.seconds)


if __name__ == "__main__":
    main()
