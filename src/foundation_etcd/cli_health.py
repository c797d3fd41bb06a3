"""``node run --health-port P [--health-host H]``: serve the node's health over HTTP.

The endpoints (``/health``, ``/live``, ``/ready``, ``/leader/{election}``) are those of
``foundation_etcd._agents.health_http``; docs/cli.md and docs/operations.md "Health" list
them. A bad port is a usage error (exit status 2), found before anything is sent; an
address that cannot be bound is a failure (exit status 1) before the node hosts anything.
"""

from __future__ import annotations

import argparse

from anyio.abc import TaskGroup

import foundation_etcd as fe

from ._agents.health_http import serve_health

__all__ = ["add_health_options", "start_health"]


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
