"""``foundation-etcd`` listings: ``status``, ``nodes``, ``agents``, ``leaders``, ``locks``...

::

    status                   one screen: nodes, leaders, locks, quotas, agents, inboxes,
                             dead letters
    nodes                    live nodes, capacity, capabilities, cordons
    agents [--live]          spawned agents (state, node); --live: the registry's live agents
    leaders                  every election with a candidate, its leader and token
    locks                    every held lock, its holder, token and waiters
    quotas                   every resource with a limit: limit, used, queued

Each takes ``-o table|json`` and ``-w`` (see ``_cli_out``): the JSON of each kind is listed
in ``docs/cli.md``. Registered by :mod:`foundation_etcd.cli` (:func:`add_commands`);
uses only the public API. A listing connects without hosting agents and changes nothing in
etcd but its own short-lived node key and lease (removed when it exits).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import foundation_etcd as fe

from ._cli_args import client_id
from ._cli_out import Listing, add_output, show

__all__ = ["add_commands"]


def _text(value: bytes) -> str:
    return value.decode(errors="replace")


async def _caught_up(c: fe.Cluster) -> int:
    rev = (await c.transport.status()).revision
    await c.wait_for(rev)
    return rev


async def nodes_listing(c: fe.Cluster) -> Listing:
    """The live nodes (this command-line process left out)."""
    rev = await _caught_up(c)
    cordoned = await c.cordoned()
    items = [
        {
            "node": n.node_id,
            "hosts_agents": n.hosts_agents,
            "cordoned": n.node_id in cordoned,
            "capacity": dict(sorted(n.capacity.items())),
            "capabilities": sorted(n.capabilities),
            "address": n.address,
            "hostname": n.hostname,
            "pid": n.pid,
            "lease_id": n.lease_id,
        }
        for n in sorted(c.nodes().values(), key=lambda n: n.node_id)
        if n.node_id != c.node_id
    ]
    columns = [
        ("NODE", "node"),
        ("HOSTS", "hosts_agents"),
        ("CORDON", "cordoned"),
        ("CAPACITY", "capacity"),
        ("CAPABILITIES", "capabilities"),
        ("ADDRESS", "address"),
    ]
    return Listing("NodeList", columns, items, rev)


async def agents_listing(c: fe.Cluster) -> Listing:
    """The spawned agents: class, state, node, and why when not running."""
    rev = await _caught_up(c)
    items = [
        {
            "agent": s.agent_id,
            "class": s.class_name,
            "state": s.state,
            "node": s.node_id,
            "critical": s.critical,
            "incarnation": s.incarnation,
            "reason": s.reason,
        }
        for s in await c.agents()
    ]
    columns = [
        ("AGENT", "agent"),
        ("CLASS", "class"),
        ("STATE", "state"),
        ("NODE", "node"),
        ("CRITICAL", "critical"),
        ("REASON", "reason"),
    ]
    return Listing("AgentList", columns, items, rev)


async def live_agents_listing(c: fe.Cluster) -> Listing:
    """The registry's live agents: where each runs, under which incarnation."""
    rev = await _caught_up(c)
    items = [
        {
            "agent": a.agent_id,
            "node": a.node_id,
            "class": a.class_name,
            "incarnation": a.incarnation,
            "capabilities": sorted(a.capabilities),
            "lease_id": a.lease_id,
        }
        for a in c.registry.all()
    ]
    columns = [
        ("AGENT", "agent"),
        ("NODE", "node"),
        ("CLASS", "class"),
        ("INCARNATION", "incarnation"),
        ("CAPABILITIES", "capabilities"),
    ]
    return Listing("LiveAgentList", columns, items, rev)


def _owners(kind: str, owners: list[fe.OwnershipSummary], rev: int) -> Listing:
    who = "leader" if kind == "ElectionList" else "holder"
    items = [
        {
            "name": o.name,
            who: _text(o.owner.value),
            "key": _text(o.owner.key),
            "lease_id": o.owner.lease_id,
            "lease": f"{o.owner.lease_id:x}",
            "token": o.owner.token,
            "waiting": o.waiting,
        }
        for o in owners
    ]
    columns = [
        ("NAME", "name"),
        (who.upper(), who),
        ("TOKEN", "token"),
        ("LEASE", "lease"),
        ("WAITING", "waiting"),
    ]
    return Listing(kind, columns, items, owners[0].revision if owners else rev)


async def leaders_listing(c: fe.Cluster) -> Listing:
    """Every election with a candidate: its leader's value, token and lease."""
    before = await c.transport.revision()  # an empty listing says it was read after this
    return _owners("ElectionList", await c.elections(), before)


async def locks_listing(c: fe.Cluster) -> Listing:
    """Every held lock: its holder, token, lease and waiters."""
    before = await c.transport.revision()  # (-w reads again once etcd moves past it)
    return _owners("LockList", await c.locks(), before)


async def quotas_listing(c: fe.Cluster) -> Listing:
    """Every resource with a limit: limit, used, queued, reservations."""
    items = []
    rev = await c.transport.revision()  # read before: -w reads again once etcd moves past it
    for resource in await c.quota_limits():
        u = await c.quotas.open_usage(resource)
        rev = max(rev, u.revision)
        items.append(
            {
                "resource": resource,
                "limit": u.limit,
                "used": u.used,
                "queued": u.queued,
                "reservations": u.reservations,
                "malformed": u.malformed,
            }
        )
    columns = [
        ("RESOURCE", "resource"),
        ("LIMIT", "limit"),
        ("USED", "used"),
        ("QUEUED", "queued"),
        ("RESERVATIONS", "reservations"),
    ]
    return Listing("QuotaList", columns, items, rev)


async def status_listing(c: fe.Cluster) -> Listing:
    """Everything an operator looks at first, each section read once."""
    sections = {
        "nodes": await nodes_listing(c),
        "leaders": await leaders_listing(c),
        "locks": await locks_listing(c),
        "quotas": await quotas_listing(c),
        "agents": await agents_listing(c),
    }
    depths = await c.inbox_depths()
    waiting = [{"agent": a, "waiting": n} for a, n in depths.items()]
    sections["inboxes"] = Listing(
        "",
        [("AGENT", "agent"), ("WAITING", "waiting")],
        waiting,
        title=f"{sum(depths.values())} waiting",
    )
    dead = await c.dead_letters()
    sections["dead_letters"] = Listing(
        "",
        [("AGENT", "agent"), ("ID", "id"), ("ATTEMPTS", "attempts"), ("REASON", "reason")],
        [
            {"agent": d.agent_id, "id": d.signal_id, "attempts": d.attempts, "reason": d.reason}
            for d in sorted(dead, key=lambda d: (d.agent_id, d.at))
        ],
    )
    status = await c.transport.status()
    etcd = {
        "version": status.version,
        "leader": f"{status.leader:x}",
        "db_size": status.db_size,
        "errors": list(status.errors),
    }
    ks = c.keyspace
    title = (
        f"tenant {ks.namespace}/{ks.tenant} at revision {status.revision}; etcd "
        f"{status.version}, leader {etcd['leader']}, db {status.db_size} bytes"
        + (f"; etcd reports: {'; '.join(status.errors)}" if status.errors else "")
    )
    extra = {"namespace": ks.namespace, "tenant": ks.tenant, "etcd": etcd}
    return Listing("Status", [], [], status.revision, extra, sections, title)


def _command(build: Callable[[fe.Cluster], Awaitable[Listing]]) -> Any:
    async def run(cfg: fe.Config, args: argparse.Namespace) -> int:
        async with fe.connect(cfg, node_id=client_id(), hosts_agents=False) as c:
            return await show(c.transport, args, lambda: build(c))

    return run


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the listings on the top-level parser's subcommands."""
    for name, build, text in (
        ("status", status_listing, "one screen: nodes, leaders, locks, quotas, agents, inboxes"),
        ("nodes", nodes_listing, "live nodes: capacity, capabilities, cordons"),
        ("leaders", leaders_listing, "every election's leader, token and lease"),
        ("locks", locks_listing, "every held lock: holder, token, waiters"),
        ("quotas", quotas_listing, "every resource with a limit: limit, used, queued"),
    ):
        cmd = sub.add_parser(name, help=text)
        add_output(cmd)
        cmd.set_defaults(fn=_command(build), parser=cmd)
    a = sub.add_parser("agents", help="spawned agents: class, state, node")
    a.add_argument("--live", action="store_true", help="the registry's live agents instead")
    add_output(a)

    async def agents(cfg: fe.Config, args: argparse.Namespace) -> int:
        build = live_agents_listing if args.live else agents_listing
        return int(await _command(build)(cfg, args))

    a.set_defaults(fn=agents, parser=a)
