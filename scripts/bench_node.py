"""A node process for ``scripts/bench.py``'s runtime failover run; JSON lines on stdout.

Usage::

    python scripts/bench_node.py ENDPOINT NAMESPACE NODE_ID TTL

Connects as ``NODE_ID`` (capacity ``cpu=8``) with a session of ``TTL`` seconds and serves
(hosts its assigned agents, campaigns for the failover scheduler) until it is killed. It can
host one class, ``bench-critical`` (critical), whose ``run`` checkpoints its state once and
then waits forever: the benchmark kills this process and times how long the surviving node
takes to run the agent again from that checkpoint.

Lines (each has ``event``): ``ready`` (node, lease, ttl as granted) once connected; every
runtime event by name with its fields; ``saved`` (agent, incarnation, revision) after the
checkpoint.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from typing import Any

import anyio

from foundation_etcd import AgentRunContext, Config, clustered, connect


def say(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


@clustered("bench-critical", critical=True)
class BenchCritical:
    """Checkpoints ``{"value": n}`` once, then waits to be killed."""

    def __init__(self) -> None:
        self.value = 0

    def restore_state(self, state: dict[str, int]) -> None:
        """Continue from a checkpoint."""
        self.value = int(state["value"])

    def get_state(self) -> dict[str, int]:
        """The state to checkpoint."""
        return {"value": self.value}

    async def run(self, ctx: AgentRunContext) -> None:
        """Checkpoint once, then run until stopped."""
        self.value += 1
        revision = await ctx.save_state(self.get_state())
        say("saved", agent=ctx.agent_id, incarnation=ctx.incarnation, revision=revision)
        await anyio.sleep_forever()


def on_event(name: str, **fields: Any) -> None:
    """Report a runtime event."""
    say(name, **fields)


async def main(endpoint: str, namespace: str, node_id: str, ttl: str) -> None:
    """Connect, announce ``ready``, serve forever."""
    cfg = Config(endpoints=(endpoint,), namespace=namespace, ttl=float(ttl))
    async with connect(cfg, node_id=node_id, capacity={"cpu": 8}) as cluster:
        lease = cluster.session.lease
        say("ready", node=node_id, lease=lease.id, ttl=lease.ttl)
        await cluster.serve({"bench-critical": BenchCritical}, on_event=on_event)


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # etcd version warnings would only clutter stderr
    anyio.run(functools.partial(main, *sys.argv[1:5]))
