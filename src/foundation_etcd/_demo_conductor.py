"""The demo's conductor: node processes, their events, the timeline and the checks.

:mod:`foundation_etcd.demo` plays its acts through a :class:`Demo`: it starts each node
(``python -m foundation_etcd.demo node ...``), reads the JSON lines the nodes print into one
event stream, prints every event worth seeing on a timeline with timestamps (seconds since
the demo began), and records the invariants checked and the summary lines.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Demo", "Node", "describe", "say"]

T0 = time.time()  # the timeline's zero


@dataclass
class Node:
    """One node process and the events it has reported."""

    name: str
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)

    def send(self, command: str) -> None:
        """Write one command line to the node's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()


@dataclass
class Demo:
    """The conductor's state: the nodes, their merged events, the checks and the summary."""

    endpoint: str
    namespace: str
    nodes: dict[str, Node] = field(default_factory=dict)
    send: MemoryObjectSendStream[dict[str, Any]] | None = None
    events: MemoryObjectReceiveStream[dict[str, Any]] | None = None
    failures: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        """Print one invariant as ok or FAIL; remember a failure."""
        say(("ok   " if ok else "FAIL ") + what)
        if not ok:
            self.failures.append(what)

    def start(self, tg: Any, name: str, *, serve: bool = True, cpu: int = 8) -> Node:
        """Start a node process, its events pumped into the stream in ``tg``."""
        cmd = [
            sys.executable,
            "-m",
            "foundation_etcd.demo",
            "node",
            "--id",
            name,
            "--endpoints",
            self.endpoint,
            "--namespace",
            self.namespace,
            "--cpu",
            str(cpu),
        ]
        if not serve:
            cmd.append("--no-serve")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        node = self.nodes[name] = Node(name, proc)
        assert self.send is not None
        tg.start_soon(pump, node, self.send.clone())
        return node

    async def until(self, pred: Any, limit: float, what: str) -> dict[str, Any]:
        """Print events until one matches ``pred`` (within ``limit`` seconds); return it."""
        assert self.events is not None
        with anyio.fail_after(limit):
            async for ev in self.events:
                describe(ev)
                if pred(ev):
                    return ev
        raise RuntimeError(f"nodes exited before: {what}")


async def pump(node: Node, send: MemoryObjectSendStream[dict[str, Any]]) -> None:
    """Read a node's JSON lines into its event list and the shared stream."""
    assert node.proc.stdout is not None
    async with send:
        while True:
            line = await anyio.to_thread.run_sync(node.proc.stdout.readline, abandon_on_cancel=True)
            if not line:
                return
            with contextlib.suppress(json.JSONDecodeError):
                ev = json.loads(line)
                node.events.append(ev)
                await send.send(ev)


def say(text: str, at: float | None = None) -> None:
    """Print one timeline line, stamped with seconds since the demo began."""
    print(f"[{(at or time.time()) - T0:7.3f}s] {text}", flush=True)


_QUIET = {"rt-checkpoint", "rt-stopping", "rt-waiting"}


def describe(ev: dict[str, Any]) -> None:
    """Print an event on the timeline, unless it is routine runtime chatter."""
    kind = ev["event"]
    if kind in _QUIET or (kind.startswith("rt-") and kind not in ("rt-started", "rt-refused")):
        return
    fields = {k: v for k, v in ev.items() if k not in ("event", "t")}
    say(f"{kind:<14} {json.dumps(fields)}", ev["t"])
