"""The command line: choose sections, start etcd unless given one, run, report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import secrets
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import grpc
import grpc.aio
from etcd3aio import _protobuf as pb

import foundation_etcd
from benchmarks.auth import section_auth
from benchmarks.consensus import section_consensus
from benchmarks.election import section_election
from benchmarks.harness import FULL, QUICK, Bench, Row, Section
from benchmarks.keepalive import section_keepalive
from benchmarks.kv import section_kv
from benchmarks.metrics_cost import section_metrics
from benchmarks.protection import section_protection
from benchmarks.quotas import section_quotas
from benchmarks.raw import rpc
from benchmarks.registry import section_registry
from benchmarks.report import (
    command_line,
    git_revision,
    merge_report,
    render_report,
    version_of,
    write_report,
)
from benchmarks.runtime import section_runtime
from benchmarks.signals import section_signals
from benchmarks.tooz import section_tooz
from benchmarks.watch import section_watch
from benchmarks.wire import section_wire
from foundation_etcd import UnsafeEtcdVersionWarning

DESCRIPTION = (
    "Benchmarks: foundation_etcd against the raw etcd gRPC calls, measured in the same run."
)

# The report's sections, in order; ``--only NAME`` picks some. A new section is a module
# with ``async def section_x(bench: Bench) -> list[Row]`` and a line here.
SECTIONS = [
    Section("kv", "Key-value: Transport.get / put / txn", section_kv),
    Section("wire", "Wire layers: one round trip in each Python gRPC stack", section_wire),
    Section("keepalive", "Lease keepalive and Session", section_keepalive),
    Section("watch", "Put to watch event", section_watch),
    Section("registry", "Registry (issue 3)", section_registry),
    Section("tooz", "tooz: lock and group join (etcd3gw driver)", section_tooz),
    Section("election", "Election and locks", section_election),
    Section("quotas", "Quotas", section_quotas),
    Section("runtime", "Runtime: spawn and failover", section_runtime),
    Section("signals", "Signals: send, call, throughput, many agents", section_signals),
    Section("consensus", "Consensus: shared state, transactions, counters", section_consensus),
    Section("metrics", "Metrics cost: the OpenTelemetry SDK installed", section_metrics),
    Section("auth", "Auth cost: register as a tenant user, by keys on the lease", section_auth),
    Section("protection", "Encryption and signed signals: what they cost", section_protection),
]

Done = list[tuple[Section, list[Row], float]]


async def run(
    args: argparse.Namespace, endpoint: str, etcd_note: str, started: str
) -> tuple[dict[str, str], Done]:
    """Run the chosen sections against ``endpoint``: the run's description, the sections."""
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.ops:
        settings = dataclasses.replace(settings, ops=args.ops)
    chosen = [s for s in SECTIONS if not args.only or s.name in args.only]
    channel = grpc.aio.insecure_channel(endpoint)
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        status = await pb.MaintenanceStub(channel).Status(rpc.StatusRequest())
        bench = Bench(endpoint, channel, settings, secrets.token_hex(3))
        t_start = time.perf_counter()
        load_before = os.getloadavg()
        done: Done = []
        for section in chosen:
            bench.section = section.name
            bench.progress(f"start: {section.title}")
            t0 = time.perf_counter()
            rows = await section.run(bench)
            elapsed = time.perf_counter() - t0
            bench.progress(f"done in {elapsed:.1f} s")
            done.append((section, rows, elapsed))
        total = time.perf_counter() - t_start
    finally:
        await channel.close()
    load_after = os.getloadavg()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    info = {
        "command": f"`{command_line()}`",
        "date": started,
        "etcd": f"{status.version} at {endpoint} ({etcd_note})",
        "CPUs": f"{os.cpu_count()} (usable by this process: {affinity}); load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
        "Python": f"{platform.python_implementation()} {platform.python_version()}, "
        f"grpcio {grpc.__version__}, etcd3aio {version_of('etcd3aio')}, "
        f"protobuf {version_of('protobuf')}",
        "foundation_etcd": f"{foundation_etcd.__version__} at {git_revision()}",
        "settings": f"{settings.rounds} rounds x {settings.ops} ops per side "
        f"(+{settings.warmup} warm-up); {settings.agents:,} agents; "
        f"{'--quick' if args.quick else 'full run'}",
        "measured time": f"{total:.1f} s (sections only)",
    }
    return info, done


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start etcd unless given one, run, print and optionally write."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help="write the report to FILE below its marker line; with --only, replace only "
        "the sections run and keep the others",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds (minutes)")
    parser.add_argument(
        "--endpoints",
        metavar="HOST:PORT",
        help="use this existing etcd member instead of starting one",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[s.name for s in SECTIONS],
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(s.name for s in SECTIONS)}",
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--ops", type=int, help="override the operations per side per round")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UnsafeEtcdVersionWarning)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.endpoints:
            if "," in args.endpoints:
                parser.error("--endpoints takes one member (raw and library share it)")
            endpoint = args.endpoints
            etcd_note = "existing member"
        else:
            from foundation_etcd.testing import EtcdServer

            print("[etcd] starting a private etcd", file=sys.stderr, flush=True)
            etcd = stack.enter_context(EtcdServer(name="bench"))
            endpoint = etcd.endpoint
            etcd_note = "started by the script: one member, loopback, --unsafe-no-fsync"
        info, done = asyncio.run(run(args, endpoint, etcd_note, started))
    print(render_report(info, done))
    if args.write:
        if args.only:
            kept = merge_report(args.write, info, done, [s.title for s in SECTIONS])
            print(f"kept from {args.write}: {', '.join(kept) or 'nothing'}", file=sys.stderr)
        else:
            write_report(args.write, render_report(info, done))
        print(f"wrote {args.write}", file=sys.stderr)
    print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
