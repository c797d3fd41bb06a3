"""Benchmarks: foundation_etcd against the raw etcd gRPC calls, measured in the same run.

Usage::

    .venv/bin/python scripts/bench.py                       # full run, report on stdout
    .venv/bin/python scripts/bench.py --write docs/benchmarks.md
    .venv/bin/python scripts/bench.py --quick               # smoke run: fewer rounds (minutes)
    .venv/bin/python scripts/bench.py --only kv --only watch
    .venv/bin/python scripts/bench.py --only consensus --write docs/benchmarks.md   # one section
    .venv/bin/python scripts/bench.py --endpoints 127.0.0.1:2379   # an existing etcd

Without ``--endpoints`` a private single-member etcd is started with
``foundation_etcd.testing.EtcdServer`` and stopped at the end.

``--write FILE`` keeps FILE's hand-written text above the marker line and replaces what is
below it. With ``--only`` it replaces only the sections that ran (the ``## {title}`` blocks
below the marker) and keeps the others, in the order of ``SECTIONS``; the report's ``Run``
block then has a table giving each section's run (date and command) and the description of
each of those runs (etcd, CPUs and load, versions, settings). Without ``--only`` the whole
generated part is replaced.

Method: every comparison runs the raw call (etcd3aio's generated stubs on a plain
``grpc.aio`` insecure channel) and the library's operation in alternating rounds (raw first
in odd rounds, library first in even ones), so that machine noise falls on both alike. Each
sample is one operation's wall time (``time.perf_counter``); the report gives p50, p90 and
the ratio library p50 / raw p50.

The coordination sections (election, quotas, runtime) compare whole protocols: the raw
side is the same etcd requests sent by hand in the order a hand-rolled client would send
them (or etcd's own v3lock/v3election services through the JSON gateway built into etcd, or
a compare-and-swap counter for quotas and counters). Failover runs kill a child process
with SIGKILL: ``scripts/bench_leader.py`` for elections, ``scripts/bench_node.py`` for the
runtime. The consensus section runs the measurements of ``scripts/bench_state.py`` and
``scripts/bench_counter.py`` (imported from them; those scripts still run on their own).

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
