"""``foundation-etcd``: inspect and operate a cluster from the shell (public API only).

::

    foundation-etcd [--endpoints H:P,...] [--namespace NS] [--tenant T] COMMAND

    nodes                                   live nodes, capacity, load, cordons
    agents [--live]                         spawned agents (state, node); --live: registry
    health                                  etcd reachable, version, a session round trip
    node run --id ID --agents MOD[,MOD] [--capacity cpu=4 ...] [--capability gpu ...]
             [--health-port P [--health-host H]]
                                            host the agents of the modules' @clustered classes
    node drain NODE                         cordon NODE, then move every agent off it
    node cordon NODE | node uncordon NODE   stop / resume placing new agents on NODE
    quota set RESOURCE LIMIT | quota show RESOURCE
    signals inbox AGENT [--limit N]         waiting signals, oldest first
    signals dead [AGENT]                    dead letters: agent, id, type, attempts, reason
    signals redrive AGENT ID                send a dead letter again (attempts reset)
    signals send AGENT TYPE [--data JSON] [--id ID]
                                            send a signal; its id, and whether a duplicate
    call AGENT ACTION [--args JSON] [--id ID] [--timeout S]
                                            run an action; its JSON result
    tools                                   the spawned agents' actions as tool definitions
    tenant create|list|grant|revoke|delete  tenants' etcd roles and users (``cli_tenant``)
    audit list|verify                       the audit log; verify exits 1 on a problem

Settings not given as flags come from ``FOUNDATION_ETCD_*`` variables.

Exit status:
    * 0: success.
    * 1: the command failed at run time: etcd unreachable, authentication refused, an
      unknown node, no limit set for the resource shown, a module of ``--agents`` that
      raised while being imported, an agent not spawned, no such dead letter, a full
      inbox, an action that raised, a call without a reply in time (``cli_signals``), any
      library error (one line on stderr, no traceback).
    * 2: bad usage, found before anything is sent to etcd: a malformed argument (an id, a
      limit, a capacity, an endpoint), a missing one, a module of ``--agents`` that does not
      exist or defines no ``@clustered`` class.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import os
import re
import signal
import socket
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from . import (
    Config,
    ConfigurationError,
    FoundationEtcdError,
    InvalidIdError,
    UnsafeEtcdVersionWarning,
    agent_classes,
    connect,
    validate_id,
)
from ._core.amounts import MAX_AMOUNT, check_capacity, check_limit
from .cli_audit import add_commands as add_audit_commands
from .cli_health import add_health_options, start_health
from .cli_signals import add_commands as add_signal_commands
from .cli_tenant import add_commands as add_tenant_commands

__all__ = ["main"]

PROG = "foundation-etcd"
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_DIGITS = len(str(MAX_AMOUNT)) + 1


class _UsageError(Exception):
    """A bad argument found after parsing (exit status 2, with the command's usage)."""


class _Failure(Exception):
    """A command that failed with a message of its own (exit status 1)."""


# argument types: the library's own rules, applied before anything is sent -----------------
def _id_type(kind: str) -> Callable[[str], str]:
    """An argparse type that accepts a valid id (``validate_id``) of ``kind``."""

    def check(value: str) -> str:
        try:
            return validate_id(value, kind)
        except InvalidIdError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    check.__name__ = kind
    return check


def _integer(text: str, what: str, rule: Callable[..., int]) -> int:
    """Parse a decimal integer and check it with ``rule`` (``check_limit``...)."""
    text = text.strip()
    if _INTEGER.fullmatch(text) and len(text.lstrip("+-")) > _MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"{what} must be at most {MAX_AMOUNT}, not {text}")
    value: object = int(text) if _INTEGER.fullmatch(text) else text
    return rule(value, what, argparse.ArgumentTypeError)


def _limit(text: str) -> int:
    """A quota limit: an integer from 0 (the rule of ``check_limit``)."""
    return _integer(text, "limit", check_limit)


def _capacity(item: str) -> tuple[str, int]:
    """``NAME=INT``: a resource id and a capacity from 0 (the rule of ``check_capacity``)."""
    name, sep, amount = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"capacity must be NAME=INT, not {item!r}")
    resource = _id_type("resource")(name)
    return resource, _integer(amount, f"capacity {resource!r}", check_capacity)


def _modules(text: str) -> list[str]:
    """A comma-separated list of dotted module names."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one module")
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise argparse.ArgumentTypeError(f"{name!r} is not a module name")
    return names


# commands ---------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for name in ("endpoints", "namespace", "tenant"):
        value = getattr(args, name)
        if value:
            overrides[name] = value
    return Config.from_env(**overrides)


def _client_id() -> str:
    return f"cli-{socket.gethostname()}-{os.getpid()}"


async def _nodes(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        rev = (await c.transport.status()).revision
        await c.wait_for(rev)
        cordoned = await c.cordoned()
        print(
            f"{'node':<24} {'hosts':<5} {'cordon':<6} {'capacity':<24} {'capabilities':<20} address"
        )
        for n in sorted(c.nodes().values(), key=lambda n: n.node_id):
            if n.node_id == c.node_id:
                continue
            cap = ",".join(f"{k}={v}" for k, v in sorted(n.capacity.items())) or "-"
            caps = ",".join(sorted(n.capabilities)) or "-"
            print(
                f"{n.node_id:<24} {'yes' if n.hosts_agents else 'no':<5} "
                f"{'yes' if n.node_id in cordoned else 'no':<6} {cap:<24} "
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


def _import_hint(module: str) -> str:
    """A PYTHONPATH suggestion when ``module`` is importable from the current directory only."""
    top = module.split(".")[0]
    cwd = Path.cwd().resolve()
    on_path = {Path(p or ".").resolve() for p in sys.path}
    if cwd in on_path or importlib.machinery.PathFinder.find_spec(top, [str(cwd)]) is None:
        return ""
    return (
        f"; {top!r} is in the current directory, which is not on the import path: "
        f"run with PYTHONPATH={cwd}"
    )


def _import_agents(modules: Sequence[str]) -> dict[str, type]:
    """Import the modules of ``--agents``; return the ``@clustered`` classes they define.

    Raises:
        _UsageError: a module does not exist, or none defines a ``@clustered`` class.
        _Failure: a module raised while being imported.
    """
    for module in modules:
        try:
            importlib.import_module(module)  # the operator names the code; etcd never does
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module == missing or module.startswith(missing + "."):
                raise _UsageError(
                    f"argument --agents: no module named {missing!r}{_import_hint(module)}"
                ) from None
            raise _Failure(f"importing {module!r} failed: {exc}") from None
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            raise _Failure(
                f"importing {module!r} failed: {type(exc).__name__}: {exc} "
                f"({where.filename}:{where.lineno})"
            ) from None
    classes = agent_classes()
    if not classes:
        raise _UsageError(f"argument --agents: no @clustered class in {', '.join(modules)}")
    return classes


async def _node_run(cfg: Config, args: argparse.Namespace) -> int:
    classes: dict[str, type] = args.classes
    print(f"node {args.id}: hosting {', '.join(sorted(classes))}", flush=True)
    async with connect(
        cfg, node_id=args.id, capacity=dict(args.capacity), capabilities=args.capability
    ) as c:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                await start_health(tg, c, args)
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
        print(f"node {args.node} stays cordoned: `{PROG} node uncordon {args.node}` to undo")
    return 0


async def _node_cordon(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        if await c.cordon(args.node):
            print(f"node {args.node} cordoned: no new agent will be placed on it")
        else:
            print(f"node {args.node} was already cordoned")
    return 0


async def _node_uncordon(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        if await c.uncordon(args.node):
            print(f"node {args.node} uncordoned: placement may choose it again")
        else:
            print(f"node {args.node} was not cordoned")
    return 0


async def _quota(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=_client_id(), hosts_agents=False) as c:
        if args.quota_command == "set":
            await c.quotas.set_limit(args.resource, args.limit)
        u = await c.quotas.open_usage(args.resource)
        if u.limit is None:
            raise _Failure(
                f"no quota limit is set for resource {args.resource!r} in tenant "
                f"{cfg.keyspace.tenant!r} (`{PROG} quota set {args.resource} LIMIT` sets one)"
            )
        print(
            f"{u.pool}: limit {u.limit}, used {u.used}, queued {u.queued}, "
            f"{u.reservations} reservation(s)"
        )
    return 0


# parsing and running ----------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        epilog="exit status: 0 success, 1 the command failed, 2 bad usage (nothing sent)",
    )
    p.add_argument("--endpoints", help="etcd endpoints, comma-separated")
    p.add_argument("--namespace", type=_id_type("namespace"))
    p.add_argument("--tenant", type=_id_type("tenant"))
    sub = p.add_subparsers(dest="command", required=True)
    nodes = sub.add_parser("nodes", help="live nodes")
    nodes.set_defaults(fn=_nodes, parser=nodes)
    a = sub.add_parser("agents", help="spawned agents")
    a.add_argument("--live", action="store_true", help="the registry's live agents instead")
    a.set_defaults(fn=_agents, parser=a)
    health = sub.add_parser("health", help="etcd and session health")
    health.set_defaults(fn=_health, parser=health)
    node = sub.add_parser("node", help="run, drain or cordon a node").add_subparsers(
        dest="node_command", required=True
    )
    run = node.add_parser("run", help="host agents")
    run.add_argument("--id", required=True, type=_id_type("node id"))
    run.add_argument(
        "--agents",
        required=True,
        type=_modules,
        metavar="MOD[,MOD]",
        help="modules defining @clustered classes",
    )
    run.add_argument("--capacity", action="append", default=[], type=_capacity, metavar="NAME=INT")
    run.add_argument("--capability", action="append", default=[], type=_id_type("capability"))
    run.add_argument("--no-scheduler", action="store_true")
    add_health_options(run)
    run.set_defaults(fn=_node_run, parser=run)
    for name, fn, text in (
        ("drain", _node_drain, "cordon a node, then move every agent off it"),
        ("cordon", _node_cordon, "place no new agent on a node"),
        ("uncordon", _node_uncordon, "let placement choose a node again"),
    ):
        cmd = node.add_parser(name, help=text)
        cmd.add_argument("node", type=_id_type("node id"), metavar="NODE")
        cmd.set_defaults(fn=fn, parser=cmd)
    q = sub.add_parser("quota", help="tenant quota limits").add_subparsers(
        dest="quota_command", required=True
    )
    qset = q.add_parser("set", help="set the tenant's limit of a resource")
    qset.add_argument("resource", type=_id_type("resource"), metavar="RESOURCE")
    qset.add_argument("limit", type=_limit, metavar="LIMIT", help="an integer >= 0")
    qset.set_defaults(fn=_quota, parser=qset)
    qshow = q.add_parser("show", help="the tenant's limit and usage of a resource")
    qshow.add_argument("resource", type=_id_type("resource"), metavar="RESOURCE")
    qshow.set_defaults(fn=_quota, parser=qshow)
    add_signal_commands(sub)
    add_tenant_commands(sub)
    add_audit_commands(sub)
    return p


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _fail(message: object) -> int:
    print(f"{PROG}: {' '.join(str(message).splitlines())}", file=sys.stderr)
    return 1


def _usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)  # prints the usage and the message; exits with status 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module's documentation)."""
    top = _parser()
    args = top.parse_args(argv)  # bad usage exits here, with status 2, before any I/O
    command: argparse.ArgumentParser = getattr(args, "parser", top)
    warnings.simplefilter("ignore", UnsafeEtcdVersionWarning)
    try:
        cfg = _config(args)
    except ConfigurationError as exc:
        if exc.field in ("endpoints", "namespace", "tenant") and getattr(args, exc.field):
            _usage(top, f"argument --{exc.field}: {str(exc).removeprefix(exc.field + ': ')}")
        return _fail(exc)  # from a FOUNDATION_ETCD_* variable
    except FoundationEtcdError as exc:
        return _fail(exc)
    try:
        if args.fn is _node_run:
            args.classes = _import_agents(args.agents)
        result: int = anyio.run(args.fn, cfg, args)
        return result
    except _UsageError as exc:
        _usage(command, str(exc))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        leaves = _leaves(exc)
        if all(isinstance(e, FoundationEtcdError | _Failure) for e in leaves):
            for e in leaves:
                _fail(e)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
