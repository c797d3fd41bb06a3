"""A node process for ``scripts/bench.py``'s signals section; JSON lines on stdout.

Usage::

    python scripts/bench_signal_node.py ENDPOINT NAMESPACE NODE_ID

Connects as ``NODE_ID`` and serves (hosts its assigned agents; no failover scheduler) until
it is killed. It can host one class, ``bench-sink`` (``benchmarks.signals.Sink``): it counts
the signals it handles and has the actions ``echo`` and ``usage`` (this process's
``time.process_time`` and RSS), through which the benchmark reads the node's CPU.

Lines (each has ``event``): ``ready`` (node) once connected; ``started`` (agent, ``n`` =
agents started so far) for each agent started; ``crashed``, ``refused`` and ``stopped``
with their fields. Nothing per signal (a pipe nobody reads would stall the node).
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.signals import Sink
from foundation_etcd import Config, connect


def say(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


class Events:
    """The runtime's ``on_event``: counts started agents, reports the rare events."""

    def __init__(self) -> None:
        self.started = 0

    def __call__(self, name: str, **fields: Any) -> None:
        """Report ``started`` with the running count, and failures; nothing per signal."""
        if name == "started":
            self.started += 1
            say("started", agent=fields.get("agent"), n=self.started)
        elif name in ("crashed", "refused", "stopped"):
            say(name, **fields)


async def main(endpoint: str, namespace: str, node_id: str) -> None:
    """Connect, announce ``ready``, serve forever."""
    cfg = Config(endpoints=(endpoint,), namespace=namespace)
    async with connect(cfg, node_id=node_id) as cluster:
        say("ready", node=node_id)
        await cluster.serve({"bench-sink": Sink}, scheduler=False, on_event=Events())


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # etcd version warnings would only clutter stderr
    anyio.run(functools.partial(main, *sys.argv[1:4]))
