"""Benchmarks: foundation_etcd against the raw etcd gRPC calls, measured in the same run.

Usage::

    .venv/bin/python scripts/bench.py                       # full run, report on stdout
    .venv/bin/python scripts/bench.py --write docs/benchmarks.md
    .venv/bin/python scripts/bench.py --quick               # smoke run, < 30 s
    .venv/bin/python scripts/bench.py --only kv --only watch
    .venv/bin/python scripts/bench.py --endpoints 127.0.0.1:2379   # an existing etcd

Without ``--endpoints`` a private single-member etcd is started with
``foundation_etcd.testing.EtcdServer`` and stopped at the end.

Method: every comparison runs the raw call (etcd3aio's generated stubs on a plain
``grpc.aio`` insecure channel) and the library's operation in alternating rounds (raw first
in odd rounds, library first in even ones), so that machine noise falls on both alike. Each
sample is one operation's wall time (``time.perf_counter``); the report gives p50, p90 and
the ratio library p50 / raw p50.

The coordination sections (election, quotas, runtime) compare whole protocols: the raw
side is the same etcd requests sent by hand in the order a hand-rolled client would send
them (or etcd's own v3lock/v3election services through the JSON gateway built into etcd, or
a compare-and-swap counter for quotas). Failover runs kill a child process with SIGKILL:
``scripts/bench_leader.py`` for elections, ``scripts/bench_node.py`` for the runtime.

This file is the entry point only; the code is the package ``scripts/benchmarks/`` (see its
docstring for the layout). Adding a section: write a module there with
``async def section_x(bench: Bench) -> list[Row]`` and append a ``Section`` to ``SECTIONS``
in ``benchmarks/cli.py``. ``run_rounds`` does the interleaving.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ``python scripts/bench.py`` already has scripts/ first on sys.path; importing this file
# from elsewhere does not.
SCRIPTS = str(Path(__file__).resolve().parent)
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
