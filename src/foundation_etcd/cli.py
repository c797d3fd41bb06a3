"""``foundation-etcd``: inspect and operate a cluster from the shell (public API only).

::

    foundation-etcd [GLOBAL] COMMAND [ARGS] [GLOBAL]
        GLOBAL: --endpoints H:P,...  --namespace NS  --tenant T  -v|-vv (logs with timestamps)
    foundation-etcd --version

    status | nodes | leaders | locks | quotas | agents [--live]     [-o table|json] [-w]
                                            listings (``cli_listings``): one screen, live
                                            nodes, election leaders, lock holders, quota
                                            usage, spawned (or live) agents
    health [-o table|json]                  this process's health report; exit 1 unless ok
    node run --id ID --agents MOD[,MOD] [--capacity cpu=4 ...] [--capability gpu ...]
             [--health-port P [--health-host H]]
                                            host the agents of the modules' @clustered classes
    node drain NODE                         cordon NODE, then move every agent off it, with
                                            progress ([done/total] agent -> node)
    node cordon NODE | node uncordon NODE   stop / resume placing new agents on NODE
    quota set RESOURCE LIMIT | quota show RESOURCE     [-o table|json]
    signals inbox AGENT | signals dead [AGENT]         [-o table|json] [-w]
    signals redrive AGENT ID | signals send AGENT TYPE [--data JSON] [--id ID]
    call AGENT ACTION [--args JSON] [--id ID] [--timeout S]
                                            run an action; its JSON result
    tools                                   the spawned agents' actions as tool definitions
    tenant create|list|grant|revoke|delete  tenants' etcd roles and users (``cli_tenant``)
    tenant trust|untrust|signers, encryption keygen|rotate, signing keygen
                                            keys of signed signals and encryption (``cli_keys``)
    audit list [-o table|json] [-w] | audit verify     verify exits 1 on a problem

``-o json`` prints ``{"kind": K, "revision": R, "items": [...]}`` (``_cli_out``; each kind's
fields are in docs/cli.md); ``-w`` prints the listing again whenever it changes,
until Ctrl-C, which ends any command quietly (exit 130).

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
import json
import logging
import os
import re
import signal
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
    NoSpaceError,
    UnsafeEtcdVersionWarning,
    __version__,
    agent_classes,
    connect,
)
from ._cli_args import PROG, client_id, fail, id_type
from ._cli_out import add_output, setup_logging
from ._core.admission import decode_or_none
from ._core.amounts import MAX_AMOUNT, check_capacity, check_limit, stored_limit
from .cli_audit import add_commands as add_audit_commands
from .cli_health import add_health_options, health_command, start_health
from .cli_keys import add_commands as add_key_commands
from .cli_listings import add_commands as add_listing_commands
from .cli_signals import add_commands as add_signal_commands
from .cli_tenant import add_commands as add_tenant_commands

__all__ = ["main"]

log = logging.getLogger("foundation_etcd.cli")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_DIGITS = len(str(MAX_AMOUNT)) + 1


class _UsageError(Exception):
    """A bad argument found after parsing (exit status 2, with the command's usage)."""


class _Failure(Exception):
    """A command that failed with a message of its own (exit status 1)."""


# argument types: the library's own rules, applied before anything is sent -----------------
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
    resource = id_type("resource")(name)
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
        if value is not None:  # given, even empty (refused below, not the default)
            overrides[name] = value
    return Config.from_env(**overrides)


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
        got = signal.SIGTERM
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                await start_health(tg, c, args)
                tg.start_soon(lambda: c.serve(classes, scheduler=not args.no_scheduler))
                async for received in signals:
                    got = received
                    print(f"node {args.id}: stopping", flush=True)
                    tg.cancel_scope.cancel()
                    break
    # a graceful stop either way; Ctrl-C reports 130 as every command does, SIGTERM (a
    # service manager's stop) 0
    return 130 if got == signal.SIGINT else 0


async def _node_drain(cfg: Config, args: argparse.Namespace) -> int:
    def progress(done: int, total: int, agent: str, node: str) -> None:
        if not agent:
            log.info("node %s cordoned; moving %d agent(s) off it", args.node, total)
            print(f"node {args.node} cordoned: {total} agent(s) to move", flush=True)
        else:
            log.info("moved %s to %s (%d/%d)", agent, node, done, total)
            print(f"[{done}/{total}] {agent} -> {node}", flush=True)

    async with connect(cfg, node_id=client_id(), hosts_agents=False) as c:
        moved = await c.drain(args.node, progress=progress)
        print(f"{len(moved)} agent(s) moved off {args.node}")
        print(f"node {args.node} stays cordoned: `{PROG} node uncordon {args.node}` to undo")
    return 0


async def _node_cordon(cfg: Config, args: argparse.Namespace) -> int:
    cordon = args.node_command == "cordon"
    async with connect(cfg, node_id=client_id(), hosts_agents=False) as c:
        changed = await (c.cordon(args.node) if cordon else c.uncordon(args.node))
    if cordon:
        done = "cordoned: no new agent will be placed on it"
        print(f"node {args.node} {done if changed else 'was already cordoned'}")
    else:
        done = "uncordoned: placement may choose it again"
        print(f"node {args.node} {done if changed else 'was not cordoned'}")
    return 0


async def _quota(cfg: Config, args: argparse.Namespace) -> int:
    async with connect(cfg, node_id=client_id(), hosts_agents=False) as c:
        if args.quota_command == "set":
            await c.quotas.set_limit(args.resource, args.limit)
        stored = await c.transport.get(c.keyspace.quota_limit(args.resource))
        if stored is not None and stored_limit(decode_or_none(stored.value)) is None:
            raise _Failure(
                f"the stored quota limit of resource {args.resource!r} is malformed (another "
                f"client wrote it; nothing is admitted against it): `{PROG} quota set "
                f"{args.resource} LIMIT` replaces it"
            )
        u = await c.quotas.open_usage(args.resource)
        if u.limit is None:
            raise _Failure(
                f"no quota limit is set for resource {args.resource!r} in tenant "
                f"{cfg.keyspace.tenant!r} (`{PROG} quota set {args.resource} LIMIT` sets one)"
            )
        if args.output == "json":
            fields = ("pool", "limit", "used", "queued", "reservations", "revision", "malformed")
            print(json.dumps({"kind": "QuotaUsage", **{f: getattr(u, f) for f in fields}}))
        else:
            print(
                f"{u.pool}: limit {u.limit}, used {u.used}, queued {u.queued}, "
                f"{u.reservations} reservation(s)"
            )
    return 0


# parsing and running ----------------------------------------------------------------------
def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name (etcdctl, kubectl).

    On the subcommands their default is "not given", so that a value given before the
    command name is kept.
    """
    # below the top they are left out of the usage and help (``foundation-etcd -h`` has them)
    keep: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    g = p.add_argument_group("global options") if top else p
    g.add_argument("--endpoints", **({"help": "etcd endpoints, comma-separated"} | keep))
    g.add_argument("--namespace", type=id_type("namespace"), **keep)
    g.add_argument("--tenant", type=id_type("tenant"), **keep)
    verbose: dict[str, Any] = {"help": "log to stderr, timestamped (-v: info, -vv: debug)"}
    verbose["default"] = 0
    g.add_argument("-v", "--verbose", action="count", **(verbose | keep))


_GLOBALS_AFTER = (
    "global options (--endpoints, --namespace, --tenant, -v) may also follow the command"
)


def _subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``p`` (commands, and their subcommands)."""
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out += [child, *_subparsers(child)]
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0].replace("``", ""),
        epilog="exit status: 0 success, 1 the command failed, 2 bad usage (nothing sent)",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_listing_commands(sub)
    health = sub.add_parser("health", help="this process's health report against etcd")
    add_output(health, watch=False)
    health.set_defaults(fn=health_command, parser=health)
    node = sub.add_parser("node", help="run, drain or cordon a node").add_subparsers(
        dest="node_command", required=True
    )
    run = node.add_parser("run", help="host agents")
    run.add_argument("--id", required=True, type=id_type("node id"))
    run.add_argument(
        "--agents",
        required=True,
        type=_modules,
        metavar="MOD[,MOD]",
        help="modules defining @clustered classes",
    )
    run.add_argument("--capacity", action="append", default=[], type=_capacity, metavar="NAME=INT")
    run.add_argument("--capability", action="append", default=[], type=id_type("capability"))
    run.add_argument("--no-scheduler", action="store_true")
    add_health_options(run)
    run.set_defaults(fn=_node_run, parser=run)
    for name, fn, text in (
        ("drain", _node_drain, "cordon a node, then move every agent off it"),
        ("cordon", _node_cordon, "place no new agent on a node"),
        ("uncordon", _node_cordon, "let placement choose a node again"),
    ):
        cmd = node.add_parser(name, help=text)
        cmd.add_argument("node", type=id_type("node id"), metavar="NODE")
        cmd.set_defaults(fn=fn, parser=cmd)
    q = sub.add_parser("quota", help="set or show one quota limit").add_subparsers(
        dest="quota_command", required=True
    )
    qset = q.add_parser("set", help="set the tenant's limit of a resource")
    qset.add_argument("resource", type=id_type("resource"), metavar="RESOURCE")
    qset.add_argument("limit", type=_limit, metavar="LIMIT", help="an integer >= 0")
    qshow = q.add_parser("show", help="the tenant's limit and usage of a resource")
    qshow.add_argument("resource", type=id_type("resource"), metavar="RESOURCE")
    for cmd in (qset, qshow):
        add_output(cmd, watch=False)
        cmd.set_defaults(fn=_quota, parser=cmd)
    add_signal_commands(sub)
    add_key_commands(sub, add_tenant_commands(sub))
    add_audit_commands(sub)
    for child in _subparsers(p):
        _global_options(child, top=False)
        child.epilog = child.epilog or _GLOBALS_AFTER
    return p


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)  # prints the usage and the message; exits with status 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module's documentation)."""
    top = _parser()
    args = top.parse_args(argv)  # bad usage exits here, with status 2, before any I/O
    command: argparse.ArgumentParser = getattr(args, "parser", top)
    warnings.simplefilter("ignore", UnsafeEtcdVersionWarning)
    setup_logging(args.verbose)
    try:
        cfg = _config(args)
    except ConfigurationError as exc:
        if (
            exc.field in ("endpoints", "namespace", "tenant")
            and getattr(args, exc.field) is not None
        ):
            _usage(top, f"argument --{exc.field}: {str(exc).removeprefix(exc.field + ': ')}")
        return fail(exc)  # from a FOUNDATION_ETCD_* variable
    except FoundationEtcdError as exc:
        return fail(exc)
    try:
        if args.fn is _node_run:
            if args.health_host is not None and args.health_port is None:
                raise _UsageError("argument --health-host: needs --health-port")
            args.classes = _import_agents(args.agents)
        result: int = anyio.run(args.fn, cfg, args)
        return result
    except _UsageError as exc:
        _usage(command, str(exc))
    except KeyboardInterrupt:
        return 130  # Ctrl-C: quietly, with the shell's status for SIGINT
    except BaseException as exc:
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 130
        if any(isinstance(e, BrokenPipeError) for e in leaves):
            return _closed_pipe()
        if all(isinstance(e, FoundationEtcdError | _Failure) for e in leaves):
            for e in leaves:
                no_session = isinstance(e, NoSpaceError) and "lease grant" in str(e)
                fail(f"{e}; this command needs a session: `{PROG} health` works without one"
                     if no_session else e)  # fmt: skip
            return 1
        raise


def _closed_pipe() -> int:
    """The reader of standard output went away (``| head``): stop quietly, as SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return 141  # 128 + SIGPIPE, what a shell reports for a process its pipe ended


if __name__ == "__main__":
    sys.exit(main())
