"""Section ``wire``: what one etcd round trip costs in each Python wire layer, same run.

The library speaks gRPC through ``grpc.aio``. Issue 16 asks whether another wire layer
would make its operations cheaper before the Python above it is blamed. Each stack runs in
a process of its own (``scripts/bench_wire.py``; grpclib and etcd-client-py in a venv of
their own made by ``standalone_python``), against this run's etcd, in rounds whose order
rotates so that noise falls on every stack alike:

- ``grpc-aio``: etcd3aio's stubs on ``grpc.aio`` (the raw column of every other section);
- ``grpc-sync``: the same stubs on grpc's blocking channel;
- ``grpclib``: a pure-Python HTTP/2 gRPC client on asyncio;
- ``etcd-client-py``: the Rust etcd client (tonic, tokio) through PyO3;
- ``transport``: the library's ``Transport``.

Rows give each stack's p50 and its process CPU per operation (the median of its batches)
beside grpc.aio's: the ratio is stack / grpc.aio.
"""

from __future__ import annotations

import asyncio
import sys

from benchmarks.children import SCRIPTS, ChildFailed, run_json
from benchmarks.harness import Bench, Figure, Row, percentile

WIRE_SCRIPT = SCRIPTS / "bench_wire.py"
WIRE_REQUIREMENTS = ("grpclib==0.4.9", "etcd-client-py==0.5.1", "etcd3aio==0.3.0")
STACKS = ("grpc-aio", "grpc-sync", "grpclib", "etcd-client-py", "transport")
OWN_VENV = {"grpclib", "etcd-client-py"}  # the stacks that run in the standalone venv
ROUNDS = 6  # short rounds, often rotated: the machine's noise falls on every stack alike


async def section_wire(bench: Bench) -> list[Row]:
    """Each wire layer's round trip (own process), p50 and CPU per operation, same run."""
    from bench_sync import standalone_python

    own = await asyncio.to_thread(standalone_python, "wire", WIRE_REQUIREMENTS)
    stacks = [s for s in STACKS if own is not None or s not in OWN_VENV]
    n = max(50, bench.settings.ops)
    rounds = 1 if bench.settings.rounds < 4 else ROUNDS
    samples: dict[str, dict[str, list[float]]] = {
        s: {"cycle": [], "get": [], "cycle_cpu": [], "get_cpu": []} for s in stacks
    }
    failed: dict[str, str] = {}
    for r in range(rounds):
        order = stacks[r % len(stacks) :] + stacks[: r % len(stacks)]
        bench.progress(f"round {r + 1}/{rounds}: {n} cycles and {n} gets per stack, in turn")
        for stack in order:
            if stack in failed:
                continue
            python = str(own) if stack in OWN_VENV else sys.executable
            key = f"/bench-{bench.run_id}-wire/{stack}"
            try:
                got = await run_json(python, str(WIRE_SCRIPT), stack, bench.endpoint, key, str(n))
            except ChildFailed as exc:
                failed[stack] = str(exc)
                continue
            for name, values in got.items():
                samples[stack][name].extend(values)
    return _rows(samples, failed, n, rounds, own is not None)


def _rows(
    samples: dict[str, dict[str, list[float]]],
    failed: dict[str, str],
    n: int,
    rounds: int,
    installed: bool,
) -> list[Row]:
    rows: list[Row] = []
    ref = samples.get("grpc-aio")
    if ref is None or "grpc-aio" in failed:
        why = failed.get("grpc-aio", "not run")
        return [Figure("wire layers", None, None, "", 0, note=f"grpc-aio failed: {why}")]
    what = {
        "cycle": "Txn (create if absent) + DeleteRange",
        "get": "Range of one key",
    }
    versions = ", ".join(WIRE_REQUIREMENTS[:2])
    for op, label in what.items():
        ref_p50 = percentile(ref[op], 0.5) * 1000
        ref_cpu = percentile(ref[op + "_cpu"], 0.5) * 1e6
        for stack, got in samples.items():
            if stack == "grpc-aio":
                continue
            if stack in failed:
                rows.append(Figure(f"{label}: {stack}", None, None, "", 0, note=failed[stack]))
                continue
            p50 = percentile(got[op], 0.5) * 1000
            cpu = percentile(got[op + "_cpu"], 0.5) * 1e6
            note = f"{rounds} round(s) of {n} per stack, each stack its own process"
            rows.append(
                Figure(f"{label}, p50: grpc-aio / {stack}", ref_p50, p50, "ms", len(got[op]), note)
            )
            rows.append(
                Figure(
                    f"{label}, client CPU per op: grpc-aio / {stack}",
                    ref_cpu,
                    cpu,
                    "µs",
                    len(got[op + "_cpu"]),
                    note="median of batches; process_time, every thread of the process",
                )
            )
    if not installed:
        rows.append(Figure("grpclib, etcd-client-py", None, None, "", 0, note="not installable"))
    else:
        rows.append(Figure("versions", None, None, "", 0, note=f"{versions}, own venv"))
    return rows
