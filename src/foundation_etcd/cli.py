"""``foundation-etcd``: inspect and operate a cluster from the shell (public API only).

::

    foundation-etcd [--endpoints H:P,...] [--namespace NS] [--tenant T] COMMAND

    nodes                                   live nodes, capacity and load
    agents [--live]                         spawned agents (state, node); --live: registry
    health                                  etcd reachable, version, a session round trip
    node run --id ID --agents MOD[,MOD] [--capacity cpu=4 ...] [--capability gpu ...]
                                            host the agents of the modules' @clustered classes
    node drain NODE                         move every agent off NODE (final checkpoints)
    quota set RESOURCE LIMIT | quota show RESOURCE

Settings not given as flags come from ``FOUNDATION_ETCD_*`` variables. Exit status: 0 on
success, 1 when a command fails (the error is printed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socket
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import anyio

from . import (
    Config,
    FoundationEtcdError,
    UnsafeEtcdVersionWarning,
    agent_classes,
    connect,
)

__all__ = ["main"]


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for name in ("endpoints", "namespace", "tenant"):
        value = getattr(args, name)
        if value:
            overrides[name] = value
    return Config.from_env(**overrides)


def _pairs(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, amount = item.partition("=")
        if not sep or not amount.isdigit():
            raise SystemExit(f"foundation-etcd: capacity must be NAME=INT, not {item!r}")
        out[name] = int(amount)
    return out


def _client_id() -> str:
    return f"cli-{socket.gethostname()}-{os.getpid()}"


async def _nodes(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        rev = (await c.transport.status()).revision
        await c.wait_for(rev)
        print(f"{'node':<24} {'hosts':<5} {'capacity':<24} {'capabilities':<20} address")
        for n in sorted(c.nodes().values(), key=lambda n: n.node_id):
            if n.node_id == c.node_id:
                continue
            cap = ",".join(f"{k}={v}" for k, v in sorted(n.capacity.items())) or "-"
            caps = ",".join(sorted(n.capabilities)) or "-"
            print(
                f"{n.node_id:<24} {'yes' if n.hosts_agents else 'no':<5} {cap:<24} "
                f"{caps:<20} {n.address or '-'}"
            )
    return 0


async def _agents(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        if args.live:
            await c.wait_for((await c.transport.status()).revision)
            print(f"{'agent':<28} {'node':<20} {'class':<20} {'incarnation':>11} capabilities")
            for a in c.registry.all():
                print(
                    f"{a.agent_id:<28} {a.node_id:<20} {a.class_name:<20} "
                    f"{a.incarnation:>11} {','.join(sorted(a.capabilities))}"
                )
            return 0
        print(f"{'agent':<28} {'class':<20} {'state':<8} {'node':<20} {'critical':<8} reason")
        for s in await c.agents():
            print(
                f"{s.agent_id:<28} {s.class_name:<20} {s.state:<8} {s.node_id or '-':<20} "
                f"{'yes' if s.critical else 'no':<8} {s.reason}"
            )
    return 0


async def _health(cfg: Config, args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsafeEtcdVersionWarning)
        async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
            status = await c.transport.status()
            stats = c.session.statistics()
            print(
                f"etcd {status.version} at {', '.join(cfg.endpoints)}: leader "
                f"{status.leader:x}, revision {status.revision}, db {status.db_size} bytes"
            )
            print(
                f"session lease {stats.lease_id:x} (ttl {c.session.lease.ttl}s), "
                f"{len(c.nodes()) - 1} other node(s)"
            )
            for err in status.errors:
                print(f"etcd reports: {err}")
    for w in caught:
        print(f"warning: {w.message}")
    return 1 if status.errors else 0


async def _node_run(cfg: Config, args: argparse.Namespace) -> int:
    for module in filter(None, args.agents.split(",")):
        importlib.import_module(module)  # the operator names the code; etcd never does
    classes = agent_classes()
    if not classes:
        print("foundation-etcd: the modules define no @clustered class", file=sys.stderr)
        return 1
    print(f"node {args.id}: hosting {', '.join(sorted(classes))}", flush=True)
    async with connect(
        cfg, node_id=args.id, capacity=_pairs(args.capacity), capabilities=args.capability
    ) as c:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: c.serve(classes, scheduler=not args.no_scheduler))
                async for _ in signals:
                    print(f"node {args.id}: stopping", flush=True)
                    tg.cancel_scope.cancel()
                    break
    return 0


async def _node_drain(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        moved = await c.drain(args.node)
        for agent, node in moved:
            print(f"{agent} -> {node}")
        print(f"{len(moved)} agent(s) moved off {args.node}")
    return 0


async def _quota(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        if args.action == "set":
            await c.quotas.set_limit(args.resource, int(args.limit))
        u = await c.quotas.open_usage(args.resource)
        print(
            f"{u.pool}: limit {u.limit}, used {u.used}, queued {u.queued}, "
            f"{u.reservations} reservation(s)"
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foundation-etcd", description=__doc__.split("\n")[0])
    p.add_argument("--endpoints", help="etcd endpoints, comma-separated")
    p.add_argument("--namespace")
    p.add_argument("--tenant")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("nodes", help="live nodes").set_defaults(fn=_nodes)
    a = sub.add_parser("agents", help="spawned agents")
    a.add_argument("--live", action="store_true", help="the registry's live agents instead")
    a.set_defaults(fn=_agents)
    sub.add_parser("health", help="etcd and session health").set_defaults(fn=_health)
    node = sub.add_parser("node", help="run or drain a node").add_subparsers(
        dest="node_command", required=True
    )
    run = node.add_parser("run", help="host agents")
    run.add_argument("--id", required=True)
    run.add_argument("--agents", required=True, help="modules defining @clustered classes")
    run.add_argument("--capacity", action="append", default=[], metavar="NAME=INT")
    run.add_argument("--capability", action="append", default=[])
    run.add_argument("--no-scheduler", action="store_true")
    run.set_defaults(fn=_node_run)
    drain = node.add_parser("drain", help="move every agent off a node")
    drain.add_argument("node")
    drain.set_defaults(fn=_node_drain)
    q = sub.add_parser("quota", help="tenant quota limits")
    q.add_argument("action", choices=["set", "show"])
    q.add_argument("resource")
    q.add_argument("limit", nargs="?", default="0")
    q.set_defaults(fn=_quota)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    warnings.simplefilter("ignore", UnsafeEtcdVersionWarning)
    try:
        cfg = _config(args)
        result: int = anyio.run(args.fn, cfg, args)
        return result
    except (FoundationEtcdError, ValueError) as exc:
        print(f"foundation-etcd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
