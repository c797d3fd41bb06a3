"""Many sessions against one etcd: what etcd and the clients spend, idle and under churn.

Usage::

    python scripts/sim_sessions.py [--processes 8] [--sessions 125] [--agents 20]
                                   [--idle 20] [--churn 20] [--rate 50] [--watch-agents]
                                   [--endpoints H:P]

Starts an etcd of its own (the test harness's, as ``make demo`` does) unless ``--endpoints``
is given, then ``--processes`` child processes (this script with ``child``). Each child opens
``--sessions`` sessions (``connect``, one node id each, not hosting agents) and registers
``--agents`` agents in each. The sessions open no view of the agents
(``connect(watch_agents=False)``: registering needs none) unless ``--watch-agents`` is given,
when each keeps one, as a session that reads the registry does. Then, measured from here:

* **idle** for ``--idle`` seconds: nothing is asked of the sessions;
* **churn** for ``--churn`` seconds: each child unregisters and registers again ``--rate``
  agents per second in all (spread over its sessions).

For each phase it prints etcd's gRPC messages received per second (by method, from its
``/metrics``), and each child's CPU (percent of one core) and resident memory. Progress goes
to stderr; the result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "sim"
READY_TIMEOUT = 600.0  # seconds for a child to open its sessions and register its agents


def say(*parts: object) -> None:
    """Progress, on stderr."""
    print(*parts, file=sys.stderr, flush=True)


# the parent ---------------------------------------------------------------------------------
def etcd_messages(endpoint: str) -> Counter[str]:
    """The gRPC messages etcd has received, by method (``grpc_server_msg_received_total``)."""
    host, _, port = endpoint.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("grpc_server_msg_received_total{"):
            labels, _, value = line.rpartition(" ")
            method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
            out[method] += int(float(value))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from ``/proc``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(
    endpoint: str, children: Sequence[subprocess.Popen[str]], seconds: float
) -> dict[str, Any]:
    """The etcd messages per second and the children's CPU and memory over ``seconds``."""
    m0, c0, t0 = etcd_messages(endpoint), [cpu_seconds(p.pid) for p in children], time.time()
    time.sleep(seconds)
    m1, c1, t1 = etcd_messages(endpoint), [cpu_seconds(p.pid) for p in children], time.time()
    wall = t1 - t0
    by_method = {k: round((m1[k] - m0[k]) / wall, 1) for k in m1 if m1[k] != m0[k]}
    cpu = [round(100 * (b - a) / wall, 1) for a, b in zip(c0, c1, strict=True)]
    return {
        "seconds": round(wall, 1),
        "etcd_messages_per_s": round(sum(by_method.values()), 1),
        "by_method": dict(sorted(by_method.items(), key=lambda kv: -kv[1])),
        "child_cpu_percent": cpu,
        "child_cpu_percent_total": round(sum(cpu), 1),
        "child_rss_mib": [round(rss_mib(p.pid), 1) for p in children],
    }


def send(child: subprocess.Popen[str], line: str) -> None:
    """One command line to a child."""
    assert child.stdin is not None
    child.stdin.write(line + "\n")
    child.stdin.flush()


def expect(child: subprocess.Popen[str], event: str, timeout: float) -> dict[str, Any]:
    """The child's next JSON line, which must be ``event`` (its stderr goes to ours)."""
    assert child.stdout is not None
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"child {child.pid} exited (code {child.wait()})")
        msg: dict[str, Any] = json.loads(line)
        if msg.get("event") == event:
            return msg
    raise TimeoutError(f"child {child.pid}: no {event!r} within {timeout:g} s")


@contextlib.contextmanager
def etcd(endpoints: str | None) -> Any:
    """The endpoint to use: the given one, or a new server of the test harness."""
    if endpoints:
        yield endpoints
        return
    from foundation_etcd.testing import EtcdServer

    server = EtcdServer("sim-etcd", watch_progress_notify_interval=None)
    server.start()
    try:
        yield server.endpoint
    finally:
        server.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the children, measure the two phases, stop them."""
    with etcd(args.endpoints) as endpoint:
        say(
            f"etcd at {endpoint}; {args.processes} processes x {args.sessions} sessions x "
            f"{args.agents} agents"
        )
        children: list[subprocess.Popen[str]] = []
        try:
            t0 = time.time()
            started = []
            # one child at a time: each new session's announcement reaches every session
            # already up (the node view), so starting all at once is N^2 events in a burst
            for i in range(args.processes):
                argv = [
                    sys.executable,
                    __file__,
                    "child",
                    endpoint,
                    str(i),
                    str(args.sessions),
                    str(args.agents),
                    "watch" if args.watch_agents else "lazy",
                ]
                children.append(
                    subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                )
                started.append(expect(children[-1], "ready", READY_TIMEOUT))
                say(f"child {i} ready after {time.time() - t0:.1f} s")
            up = time.time() - t0
            say(f"all ready after {up:.1f} s")
            idle = measure(endpoint, children, args.idle)
            say(
                f"idle: {idle['etcd_messages_per_s']} etcd messages/s, children's CPU "
                f"{idle['child_cpu_percent_total']}% of a core"
            )
            per_child = args.rate / args.processes
            for c in children:
                send(c, f"churn {per_child}")
            time.sleep(1.0)  # the churn under way before measuring
            churn = measure(endpoint, children, args.churn)
            say(
                f"churn: {churn['etcd_messages_per_s']} etcd messages/s, children's CPU "
                f"{churn['child_cpu_percent_total']}% of a core"
            )
            for c in children:
                send(c, "stop")
            done = [expect(c, "stopped", 60) for c in children]
        finally:
            for c in children:
                with contextlib.suppress(ProcessLookupError):
                    c.kill()
                c.wait()
        return {
            "processes": args.processes,
            "sessions": args.processes * args.sessions,
            "agents": args.processes * args.sessions * args.agents,
            "agents_view_per_session": args.watch_agents,
            "startup_seconds": round(up, 1),
            "children_started": [s.get("seconds") for s in started],
            "idle": idle,
            "churn": {
                **churn,
                "registrations_per_s_asked": args.rate,
                "churned": sum(d.get("churned", 0) for d in done),
            },
            # sessions whose lease was lost and granted again between ready and stop (a
            # measurement with any is of a cluster in trouble, not at rest)
            "leases_lost": sum(d.get("leases_lost", 0) for d in done),
        }


# a child ------------------------------------------------------------------------------------
def emit(event: str, **fields: Any) -> None:
    """One JSON line for the parent."""
    print(json.dumps({"event": event, **fields}), flush=True)


async def child(endpoint: str, index: int, sessions: int, agents: int, watch: bool) -> None:
    """Open the sessions, register the agents, then obey the parent's commands."""
    from foundation_etcd import Cluster, Config, connect

    cfg = Config(endpoints=(endpoint,), namespace=NAMESPACE)
    t0 = time.time()
    async with contextlib.AsyncExitStack() as stack:
        clusters: list[Cluster] = []
        for j in range(sessions):
            node = f"sim-{index}-{j}"
            c = await stack.enter_async_context(
                connect(cfg, node_id=node, hosts_agents=False, watch_agents=watch)
            )
            await asyncio.gather(
                *(c.registry.register(f"{node}-a{k}", capabilities=["sim"]) for k in range(agents))
            )
            clusters.append(c)
        leases = [c.session.lease.id for c in clusters]
        emit("ready", seconds=round(time.time() - t0, 1))
        churned = 0
        task: asyncio.Task[None] | None = None

        async def churn(rate: float) -> None:
            nonlocal churned
            pairs = itertools.cycle(
                [(c, f"{c.node_id}-a{k}") for c in clusters for k in range(agents)]
            )
            interval = 1.0 / rate
            next_at = time.monotonic()
            while True:
                c, agent_id = next(pairs)
                await c.registry.unregister(agent_id)
                await c.registry.register(agent_id, capabilities=["sim"])
                churned += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        async for line in lines(sys.stdin):
            cmd, *rest = line.split()
            if cmd == "churn":
                task = asyncio.ensure_future(churn(float(rest[0])))
            elif cmd == "stop":
                break
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lost = sum(c.session.lease.id != lease for c, lease in zip(clusters, leases, strict=True))
        emit("stopped", churned=churned, leases_lost=lost)


async def lines(stream: IO[str]) -> AsyncIterator[str]:
    """Lines of a blocking stream, read in a thread."""
    while True:
        line = await asyncio.to_thread(stream.readline)
        if not line:
            return
        yield line.strip()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments; run the parent or a child."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.simplefilter("ignore")  # the harness's etcd version warning would clutter stderr
    if argv[:1] == ["child"]:
        endpoint, index, sessions, agents = argv[1], *map(int, argv[2:5])
        asyncio.run(child(endpoint, index, sessions, agents, argv[5] == "watch"))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=8)
    p.add_argument("--sessions", type=int, default=125, help="sessions per process")
    p.add_argument("--agents", type=int, default=20, help="agents registered per session")
    p.add_argument("--idle", type=float, default=20.0, help="seconds measured idle")
    p.add_argument("--churn", type=float, default=20.0, help="seconds measured under churn")
    p.add_argument("--rate", type=float, default=50.0, help="re-registrations per second, all")
    p.add_argument(
        "--watch-agents", action="store_true", help="every session keeps a view of the agents"
    )
    p.add_argument("--endpoints", help="an existing etcd member (HOST:PORT)")
    args = p.parse_args(argv)
    for name in ("processes", "sessions", "agents"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.idle <= 0 or args.churn <= 0 or args.rate <= 0:
        p.error("--idle, --churn and --rate must be positive")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
