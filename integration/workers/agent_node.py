"""A node process hosting stateful ``@clustered`` agents, or a spawner; JSON lines on stdout.

Usage::

    python -m integration.workers.agent_node node NODE_ID ENDPOINTS NAMESPACE TTL CAPACITY
        [--capabilities gpu,...] [--classes it-counter,...]
    python -m integration.workers.agent_node spawn NAME ENDPOINTS NAMESPACE TTL PLAN

``CAPACITY`` is ``cpu=20,gpu=1``. A node registers the classes of this module (all of them,
or only those named by ``--classes``) and serves (hosts its assigned agents and campaigns for
the failover scheduler). A spawner connects as node ``spawner-NAME`` hosting no agents, waits
until the key ``it-go`` exists in the namespace, then spawns the agents of ``PLAN`` all at
once (one task each): ``id[+capability...]`` separated by commas, each an :class:`ItWorker`
taking one cpu and requiring the capabilities after ``+``. It exits when done.

Agents: :class:`ItCounter` (``it-counter``, critical) and :class:`ItWorker` (``it-worker``,
not critical), one cpu each. Both count up and checkpoint ``{"value": n}`` with
``ctx.save_state`` every ``PERIOD`` seconds, from the restored value when there is one.

Events (every line has ``event``, ``t`` = wall time, ``node``):

* ``ready`` (lease, pid, classes) once connected; ``lease`` for each later lease (generation);
  ``lost`` (lease, reason) when a lease is lost;
* every runtime event by name, with its fields (``started``, ``stopped``, ``cancelled``,
  ``crashed``, ``refused``, ``checkpoint``, ``waiting``, ``stopping``); ``refused`` also lists
  the ``integration*`` modules loaded in this process (``modules``);
* ``on-start`` (agent, incarnation, restored: the state given to the instance) and
  ``run-cancelled`` (agent, incarnation) when the agent's ``run`` is cancelled;
* ``saved`` (agent, incarnation, value, revision, remaining: seconds left before the
  lease's safe deadline) for each checkpoint etcd accepted; ``save-refused`` when etcd
  refused it (stale incarnation: the agent then fails); ``save-error`` when the outcome is
  unknown or it was not sent;
* ``log`` for library warnings and the scheduler's decisions;
* spawner: ``spawned`` (agent, on, revision), ``no-fit`` (agent, reasons, message), ``done``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from typing import Any

import anyio

from foundation_etcd import (
    AgentRunContext,
    Config,
    EtcdError,
    IncarnationLostError,
    Lease,
    NoNodeFitsError,
    clustered,
    connect,
)

PERIOD = 0.1
NODE = "?"


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), "node": NODE, **fields}), flush=True)


class _EventLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say("log", logger=record.name, level=record.levelname, message=record.getMessage())


class _Counting:
    """Counts up from its restored value, checkpointing every ``PERIOD`` seconds."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def restore_state(self, state: dict) -> None:
        self.value = int(state["value"])

    def get_state(self) -> dict:
        return {"value": self.value}

    async def on_start(self, ctx: AgentRunContext) -> None:
        say("on-start", agent=ctx.agent_id, incarnation=ctx.incarnation, restored=ctx.restored)

    async def run(self, ctx: AgentRunContext) -> None:
        try:
            while True:
                await self._step(ctx)
                await anyio.sleep(PERIOD)
        except anyio.get_cancelled_exc_class():
            say("run-cancelled", agent=ctx.agent_id, incarnation=ctx.incarnation)
            raise

    async def _step(self, ctx: AgentRunContext) -> None:
        self.value += 1
        fields = {"agent": ctx.agent_id, "incarnation": ctx.incarnation, "value": self.value}
        try:
            revision = await ctx.save_state(self.get_state())
        except IncarnationLostError:
            say("save-refused", **fields)
            raise
        except EtcdError as exc:
            say("save-error", error=repr(exc), **fields)
        else:
            lease = ctx.cluster.session.lease
            say("saved", revision=revision, remaining=lease.remaining(), **fields)


@clustered("it-counter", critical=True, resources={"cpu": 1})
class ItCounter(_Counting):
    """A critical counter: moved to another node when its node dies."""


@clustered("it-worker", resources={"cpu": 1})
class ItWorker(_Counting):
    """A non-critical counter: failed with its node."""


def _config(endpoints: str, namespace: str, ttl: str) -> Config:
    return Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=float(ttl))


def _on_event(name: str, **fields: Any) -> None:
    if name == "refused":
        fields["modules"] = sorted(m for m in sys.modules if m.startswith("integration"))
    say(name, **fields)


async def run_node(args: argparse.Namespace) -> None:
    global NODE
    NODE = args.node_id
    capacity = {}
    for item in filter(None, args.capacity.split(",")):
        resource, amount = item.split("=")
        capacity[resource] = int(amount)
    capabilities = [c for c in args.capabilities.split(",") if c]
    mine = {"it-counter": ItCounter, "it-worker": ItWorker}
    if args.classes is not None:
        mine = {name: cls for name, cls in mine.items() if name in args.classes.split(",")}
    cfg = _config(args.endpoints, args.namespace, args.ttl)
    async with connect(cfg, node_id=NODE, capacity=capacity, capabilities=capabilities) as c:

        def watch_lease(lease: Lease) -> None:
            lease.on_lost(lambda gone: say("lost", lease=gone.id, reason=gone.lost_reason))

        async def renewed(lease: Lease) -> None:
            watch_lease(lease)
            say("lease", lease=lease.id, generation=lease.generation)

        c.session.on_renewed(renewed)
        watch_lease(c.session.lease)
        say("ready", lease=c.session.lease.id, pid=os.getpid(), classes=sorted(mine))
        await c.serve(mine, on_event=_on_event)


async def run_spawner(args: argparse.Namespace) -> None:
    global NODE
    NODE = f"spawner-{args.name}"
    cfg = _config(args.endpoints, args.namespace, args.ttl)
    async with connect(cfg, node_id=NODE, hosts_agents=False) as c:
        go = cfg.keyspace.key("it-go")
        view = await c.view(go)
        arrived = anyio.Event()
        view.on_change(lambda _: view.get(go) is not None and arrived.set())
        say("ready", pid=os.getpid())
        with anyio.fail_after(60):
            if view.get(go) is None:
                await arrived.wait()

        async def spawn(agent_id: str, requires: list[str]) -> None:
            try:
                ref = await c.spawn(ItWorker, agent_id, requires=requires)
            except NoNodeFitsError as exc:
                say("no-fit", agent=agent_id, reasons=exc.reasons, message=str(exc))
            else:
                say("spawned", agent=agent_id, on=ref.node_id, revision=ref.revision)

        async with anyio.create_task_group() as tg:
            for item in filter(None, args.plan.split(",")):
                agent_id, *requires = item.split("+")
                tg.start_soon(spawn, agent_id, requires)
        say("done")


def main() -> None:
    parser = argparse.ArgumentParser(prog="agent_node")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node")
    for name in ("node_id", "endpoints", "namespace", "ttl", "capacity"):
        node.add_argument(name)
    node.add_argument("--capabilities", default="")
    node.add_argument("--classes", default=None)
    spawner = sub.add_parser("spawn")
    for name in ("name", "endpoints", "namespace", "ttl", "plan"):
        spawner.add_argument(name)
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    library = logging.getLogger("foundation_etcd")
    library.addHandler(_EventLog())
    library.setLevel(logging.WARNING)
    logging.getLogger("foundation_etcd.scheduler").setLevel(logging.INFO)
    anyio.run(run_node if args.command == "node" else run_spawner, args)


if __name__ == "__main__":
    main()
