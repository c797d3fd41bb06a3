"""A node process hosting signal-counting and call-counting agents; JSON lines on stdout.

Usage::

    python -m integration.workers.signal_node NODE_ID ENDPOINTS NAMESPACE TTL [--cpu 20]

The node connects with ``capacity={"cpu": CPU}``, reports ``ready``, and serves: it hosts
the agents assigned to it and campaigns for the failover scheduler. It registers two
critical classes of one cpu each:

* :class:`NemesisCounter` (``sig-nemesis-counter``): ``handle_signal`` appends the signal's
  id to ``seen`` and adds ``data["n"]`` to ``total``; a signal of type ``relay`` also emits
  (``ctx.send``) a ``count`` of ``n = 1`` with id ``r-{id}`` to the next agent
  (``a07`` -> ``a08``, modulo ``AGENTS``). Each handling sleeps a few milliseconds (work),
  one in ten 0.2 s.
* :class:`CallCounter` (``call-counter``): actions ``add``, ``boom`` (raises after changing
  the count), ``slow_add`` (reports ``action-start``, sleeps, increments, reports
  ``action-end``) and ``relay_add`` (calls ``add`` on another agent from inside an action).

Events (every line has ``event``, ``t`` = wall time, ``node``): ``ready`` (lease, pid),
``lease`` (lease, generation) for each later lease, ``lost`` (lease, reason); every runtime
event by name with its fields (``started``, ``stopped``, ``cancelled``, ``crashed``,
``signal`` with its ``attempt``, ``signal-failed``, ``signal-dead``, ...); ``thawed`` (agent,
incarnation, signal, attempt, frozen: seconds) when a handler was frozen in the middle of its
work and went on (it then tries to commit, as a possibly stale incarnation);
``action-start`` / ``action-end``; ``log`` for library warnings and the scheduler's decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import logging
import os
import random
import signal
import sys
import time
import warnings
from typing import Any

import anyio

import foundation_etcd as fe

AGENTS = 20
NODE = "?"


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), "node": NODE, **fields}), flush=True)


class _EventLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say("log", logger=record.name, level=record.levelname, message=record.getMessage())


def next_agent(agent_id: str) -> str:
    """``a07`` -> ``a08``; the last one wraps to ``a00``."""
    return f"a{(int(agent_id[1:]) + 1) % AGENTS:02d}"


@fe.clustered("sig-nemesis-counter", critical=True, resources={"cpu": 1})
class NemesisCounter:
    """Counts the signals it handles and remembers their ids, in handling order."""

    def __init__(self) -> None:
        self.total = 0
        self.seen: list[str] = []

    def get_state(self) -> dict[str, Any]:
        return {"total": self.total, "seen": self.seen}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.total, self.seen = int(state["total"]), list(state["seen"])

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.seen.append(signal.id)
        self.total += int(signal.data["n"])
        if signal.type == "relay":
            ctx.send(next_agent(ctx.agent_id), "count", {"n": 1}, signal_id=f"r-{signal.id}")
        # work (now and then longer), so that a fault lands in the middle of some handlings
        work = 0.2 if random.random() < 0.1 else random.uniform(0.0, 0.01)
        began = time.monotonic()
        await anyio.sleep(work)
        if time.monotonic() - began > work + 1.0:  # frozen (SIGSTOP) in the middle of it
            say(
                "thawed",
                agent=ctx.agent_id,
                incarnation=ctx.incarnation,
                signal=signal.id,
                attempt=signal.attempt,
                frozen=time.monotonic() - began - work,
            )


@fe.clustered("call-counter", critical=True, resources={"cpu": 1})
class CallCounter:
    """A counter driven by actions."""

    def __init__(self) -> None:
        self.count = 0
        self.ctx: fe.AgentContext | None = None

    def get_state(self) -> dict[str, Any]:
        return {"count": self.count}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])

    async def on_start(self, ctx: fe.AgentContext) -> None:
        self.ctx = ctx

    def _who(self) -> dict[str, Any]:
        assert self.ctx is not None
        return {"agent": self.ctx.agent_id, "incarnation": self.ctx.incarnation}

    @fe.action
    async def add(self, n: int) -> int:
        """Add ``n`` to the count and return it."""
        self.count += n
        return self.count

    @fe.action
    def boom(self, kind: str) -> None:
        """Change the count, then raise ``ValueError`` or ``KeyError`` (the change is undone)."""
        self.count += 1000
        if kind == "value":
            raise ValueError("no such value")
        raise KeyError("no such key")

    @fe.action
    async def slow_add(self, n: int, seconds: float) -> dict[str, Any]:
        """Work for ``seconds``, then add ``n``; return the count and who computed it."""
        say("action-start", count=self.count, **self._who())
        await anyio.sleep(seconds)
        self.count += n
        say("action-end", count=self.count, **self._who())
        return {"count": self.count, "node": NODE, **self._who()}

    @fe.action
    async def relay_add(self, to: str, n: int) -> dict[str, Any]:
        """Call ``add`` on agent ``to`` (wherever it runs) and return its answer with ours."""
        assert self.ctx is not None
        theirs = await self.ctx.cluster.call(to, "add", {"n": n})
        self.count += 1
        return {"theirs": theirs, "ours": self.count, "node": NODE}


def _on_event(name: str, **fields: Any) -> None:
    say(name, **fields)


def _dump_tasks() -> None:
    """SIGUSR1: where every suspended coroutine of the library is, on stderr.

    The test asks for it when a node does not come up; the await chains of asyncio tasks
    stop at async generators, so every suspended coroutine and async generator is listed.
    """
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}: {task.get_coro()!r}", file=sys.stderr)
    for obj in gc.get_objects():
        if not (inspect.iscoroutine(obj) or inspect.isasyncgen(obj)):
            continue
        frame = obj.cr_frame if inspect.iscoroutine(obj) else obj.ag_frame
        if frame is not None and "foundation_etcd" in frame.f_code.co_filename:
            code = frame.f_code
            print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
    sys.stderr.flush()


async def run_node(args: argparse.Namespace) -> None:
    global NODE
    NODE = args.node_id
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    cfg = fe.Config(
        endpoints=tuple(args.endpoints.split(",")), namespace=args.namespace, ttl=float(args.ttl)
    )
    async with fe.connect(cfg, node_id=NODE, capacity={"cpu": args.cpu}) as c:

        def watch_lease(lease: fe.Lease) -> None:
            lease.on_lost(lambda gone: say("lost", lease=gone.id, reason=gone.lost_reason))

        async def renewed(lease: fe.Lease) -> None:
            watch_lease(lease)
            say("lease", lease=lease.id, generation=lease.generation)

        c.session.on_renewed(renewed)
        watch_lease(c.session.lease)
        say("ready", lease=c.session.lease.id, pid=os.getpid())
        await c.serve(
            {"sig-nemesis-counter": NemesisCounter, "call-counter": CallCounter},
            on_event=_on_event,
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="signal_node")
    for name in ("node_id", "endpoints", "namespace", "ttl"):
        parser.add_argument(name)
    parser.add_argument("--cpu", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    library = logging.getLogger("foundation_etcd")
    library.addHandler(_EventLog())
    library.setLevel(logging.WARNING)
    logging.getLogger("foundation_etcd.scheduler").setLevel(logging.INFO)
    anyio.run(run_node, args)


if __name__ == "__main__":
    main()
