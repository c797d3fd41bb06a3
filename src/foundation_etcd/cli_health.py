"""``node run --health-port P [--health-host H]``: serve the node's health over HTTP.

And the ``health`` command: the report of a fresh session, or, when etcd refuses it a
session (its space alarm is on), the member's status alone, ``degraded`` with the alarm named.

The endpoints (``/health``, ``/live``, ``/ready``, ``/leader/{election}``) are those of
``foundation_etcd._agents.health_http``; docs/cli.md and docs/operations.md "Health" list
them. A bad port is a usage error (exit status 2), found before anything is sent; an
address that cannot be bound is a failure (exit status 1) before the node hosts anything.
"""

from __future__ import annotations

import argparse
import json
import warnings

from anyio.abc import TaskGroup

import foundation_etcd as fe

from ._agents.health_http import serve_health
from ._cli_args import client_id
from .lowlevel import open_transport

__all__ = ["add_health_options", "health_command", "health_without_session", "start_health"]


class HealthBindError(fe.FoundationEtcdError):
    """The health address could not be bound (reported as one line, exit status 1)."""


def _port(text: str) -> int:
    """A TCP port, 1-65535."""
    try:
        port = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, not {port}")
    return port


def add_health_options(run: argparse.ArgumentParser) -> None:
    """Add ``--health-port`` and ``--health-host`` to ``node run``."""
    run.add_argument(
        "--health-port",
        type=_port,
        metavar="PORT",
        help="serve /health, /live, /ready and /leader/NAME over HTTP on this port",
    )
    run.add_argument(
        "--health-host",
        metavar="HOST",
        help="the address the health endpoints bind (default 127.0.0.1; needs --health-port)",
    )


async def start_health(tg: TaskGroup, cluster: fe.Cluster, args: argparse.Namespace) -> None:
    """Start the health server in ``tg`` when ``--health-port`` was given (bound on return).

    Raises:
        HealthBindError: the address cannot be bound.
    """
    if args.health_port is None:
        return
    args.health_host = args.health_host or "127.0.0.1"
    where = f"{args.health_host}:{args.health_port}"
    try:
        await tg.start(serve_health, cluster, args.health_port, args.health_host)
    except OSError as exc:
        raise HealthBindError(f"cannot serve health on {where}: {exc.strerror or exc}") from None
    print(f"node {cluster.node_id}: health on http://{where}/", flush=True)


async def health_without_session(cfg: fe.Config, refused: fe.NoSpaceError) -> fe.HealthReport:
    """The health ``health`` reports when etcd refused its session for the space alarm.

    Sessions already open keep their leases (keepalives are not writes), so the cluster is
    ``degraded``, not down: the report says why, with the member's alarms and leader.
    """
    async with open_transport(cfg) as t:
        status = await t.status()
    reasons = (
        f"etcd refused a new session: {refused}",
        *(f"etcd reports: {e}" for e in status.errors),
    )
    return fe.HealthReport(
        status="degraded" if status.leader else "failing",
        reasons=reasons if status.leader else (*reasons, "the member has no raft leader"),
        node_id="",
        lease_id=0,
        lease_alive=False,
        lease_margin=0.0,
        etcd_reachable=True,
        etcd_leader=status.leader,
        etcd_revision=status.revision,
        etcd_errors=tuple(status.errors),
    )


async def health_command(cfg: fe.Config, args: argparse.Namespace) -> int:
    """``health [-o json]``: the report of a fresh session (or of none, in the space alarm).

    Exit status 0 when ``ok``, 1 otherwise; each warning (an unsafe etcd version) once.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fe.UnsafeEtcdVersionWarning)
        try:
            async with fe.connect(cfg, node_id=client_id(), hosts_agents=False) as c:
                report = await c.health()
        except fe.NoSpaceError as exc:  # no new lease while the space alarm is on
            report = await health_without_session(cfg, exc)
    warned = list(dict.fromkeys(str(w.message) for w in caught))  # once each (two connects)
    if args.output == "json":
        print(json.dumps({"kind": "Health", **report.to_dict(), "warnings": warned}, indent=2))
    else:
        lease = (
            f"session lease {report.lease_id:x}, {report.lease_margin:.1f} s before its safe "
            "deadline"
            if report.lease_id
            else "no session"
        )
        print(
            f"{report.status}: etcd at {', '.join(cfg.endpoints)} "
            f"{'reachable' if report.etcd_reachable else 'unreachable'}, leader "
            f"{report.etcd_leader:x}, revision {report.etcd_revision}; {lease}"
        )
        for reason in report.reasons:  # etcd's alarms and errors among them
            print(f"  {reason}")
        for w in warned:
            print(f"warning: {w}")
    return 0 if report.status == "ok" else 1
