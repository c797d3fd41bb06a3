"""``foundation-etcd signals ...``, ``call`` and ``tools``: signals and actions from the shell.

::

    signals inbox AGENT [--limit N] [-o table|json] [-w]
                                            waiting signals, oldest first
    signals dead [AGENT] [-o table|json] [-w]
                                            dead letters (of one agent, or of all)
    signals redrive AGENT ID                send a dead letter again (attempts reset)
    signals send AGENT TYPE [--data JSON] [--id ID]
                                            send a signal; prints its id, says if a duplicate
    call AGENT ACTION [--args JSON] [--id ID] [--timeout S]
                                            run an action; prints its JSON result
    tools                                   every spawned agent's actions as tool definitions

Registered by :mod:`foundation_etcd.cli` (:func:`add_commands`), with its options and exit
statuses. Uses only the public API. Ids, types, JSON, limits and timeouts are checked
before anything is sent (exit 2), and so is the size of a signal (its envelope as the
library encodes it, against ``Config.signal_max_bytes``). Exit 1, one line on stderr: the
agent is not spawned, no such dead letter, the inbox is full, the action raised (its type
and message), the call got no reply in time (the action may still run: the message gives
the ``--id`` to wait for its one outcome), a send whose result is unknown (the message gives
the ``--id`` to send it again without a duplicate).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

import foundation_etcd as fe

from ._cli_args import PROG, client_id, fail, id_type, usage_error
from ._cli_out import Listing, add_output, show

__all__ = ["add_commands"]

_TYPE = re.compile(r"[A-Za-z0-9._:/-]{1,256}")  # the library's rule for a signal type
_MAX_LIMIT = 1_000_000
_MAX_TIMEOUT = 86400.0


# argument types: checked before anything is sent ----------------------------------------


def _signal_type(value: str) -> str:
    if _TYPE.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(
            f"invalid signal type {value!r}: 1-256 characters of A-Z a-z 0-9 . _ : / -"
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: a float JSON cannot carry back
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _json_object(text: str) -> dict[str, Any]:
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object of argument names to values, not {text!r}"
        )
    return value


def _limit(text: str) -> int:
    if not re.fullmatch(r"\+?[0-9]{1,7}", text.strip()) or not 1 <= int(text) <= _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {_MAX_LIMIT}, not {text!r}")
    return int(text)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= _MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0, at most {_MAX_TIMEOUT:g}, not {text!r}"
        )
    return value


# helpers ------------------------------------------------------------------------------------
def _connect(cfg: fe.Config) -> AbstractAsyncContextManager[fe.Cluster]:
    """Join as an observer: placement never chooses this process."""
    return fe.connect(cfg, node_id=client_id(), hosts_agents=False)


def _too_large(cfg: fe.Config, agent_id: str, type: str, data: Any, sid: str) -> str | None:
    """Why the signal would be refused for its size (its envelope as the library encodes it)."""
    envelope = {
        "id": sid,
        "type": type,
        "source": client_id(),
        "subject": agent_id,
        "time": time.time(),
        "data": data,
    }
    size = len(json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode())
    if size > cfg.signal_max_bytes:
        return f"the signal would be {size} bytes, over signal_max_bytes ({cfg.signal_max_bytes})"
    return None


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at > 0 else "-"


async def _known(c: fe.Cluster, agent_id: str) -> bool:
    """Whether signals can reach ``agent_id``: it is spawned, or live (hosted) somewhere."""
    for key in (c.keyspace.agent_spec(agent_id), c.keyspace.agent_live(agent_id)):
        if await c.transport.get(key) is not None:
            return True
    return False


def _unknown(agent_id: str) -> str:
    return f"agent {agent_id!r} is not spawned (nor live on any node)"


# commands -----------------------------------------------------------------------------------
async def _inbox(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with _connect(cfg) as c:
        if not await _known(c, args.agent):
            return fail(_unknown(args.agent))

        async def build() -> Listing:
            rev = await c.transport.revision()
            now = time.time()
            items = [
                {
                    "id": s.id,
                    "type": s.type,
                    "attempt": s.attempt,
                    "age": _age(now - s.time),
                    "time": s.time,
                    "source": s.source,
                    "subject": s.subject,
                    "data": s.data,
                }
                for s in await c.inbox(args.agent, limit=args.limit)
            ]
            columns = [("ID", "id"), ("TYPE", "type"), ("ATTEMPT", "attempt")]
            columns += [("AGE", "age"), ("SOURCE", "source")]
            return Listing("SignalList", columns, items, rev)

        return await show(c.transport, args, build)


async def _dead(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with _connect(cfg) as c:
        if args.agent is not None and not await _known(c, args.agent):
            return fail(_unknown(args.agent))

        async def build() -> Listing:
            rev = await c.transport.revision()
            letters = sorted(await c.dead_letters(args.agent), key=lambda d: (d.agent_id, d.at))
            items = [
                {
                    "agent": d.agent_id,
                    "id": d.signal_id,
                    "type": d.signal.type if d.signal is not None else None,
                    "attempts": d.attempts,
                    "when": _when(d.at),
                    "at": d.at,
                    "reason": d.reason,
                }
                for d in letters
            ]
            columns = [("AGENT", "agent"), ("ID", "id"), ("TYPE", "type")]
            columns += [("ATTEMPTS", "attempts"), ("WHEN", "when"), ("REASON", "reason")]
            return Listing("DeadLetterList", columns, items, rev)

        return await show(c.transport, args, build)


async def _redrive(cfg: fe.Config, args: argparse.Namespace) -> int:
    agent, sid = args.agent, args.id
    async with _connect(cfg) as c:
        try:
            r = await c.redrive(agent, sid)
        except fe.AgentNotFoundError:
            return fail(f"cannot redrive {sid!r}: {_unknown(agent)}")
        except fe.InboxFullError as exc:
            return fail(f"cannot redrive {sid!r}: {exc}; the dead letter stays")
        except KeyError:
            why = "" if await _known(c, agent) else f" ({_unknown(agent)})"
            return fail(f"no dead letter {sid!r} for agent {agent!r}{why}")
        print(f"dead letter {sid} sent again to {agent} (revision {r.revision}, attempts reset)")
    return 0


async def _send(cfg: fe.Config, args: argparse.Namespace) -> int:
    agent, sid = args.agent, args.id or uuid.uuid4().hex
    why = _too_large(cfg, agent, args.type, args.data, sid)
    if why is not None:
        return usage_error(args, f"argument --data: {why}")
    async with _connect(cfg) as c:
        try:
            r = await c.send(agent, args.type, args.data, signal_id=sid)
        except fe.AmbiguousResultError as exc:
            return fail(
                f"{exc}; signal {sid} may have been sent: `{PROG} signals send {agent} "
                f"{args.type} --id {sid}` again sends it at most once"
            )
        if r.duplicate:
            seen = "waiting, handled or dead-lettered already"
            print(f"signal {sid} to {agent}: duplicate ({seen}), nothing sent")
        else:
            print(f"signal {sid} sent to {agent} (revision {r.revision})")
    return 0


async def _call(cfg: fe.Config, args: argparse.Namespace) -> int:
    agent, action, cid = args.agent, args.action, args.id or uuid.uuid4().hex
    payload = {"action": action, "args": args.args or {}}
    why = _too_large(cfg, agent, "foundation.call", payload, cid)
    if why is not None:
        return usage_error(args, f"argument --args: {why}")
    async with _connect(cfg) as c:
        try:
            with anyio.fail_after(args.timeout):
                result = await c.call(agent, action, args.args, call_id=cid)
        except TimeoutError:  # CallTimeoutError, or the deadline before the call was sent
            return fail(
                f"call {cid} of {agent}.{action}: no reply within {args.timeout:g}s; the action "
                f"may still run (`{PROG} call {agent} {action} --id {cid}` waits for its one "
                "outcome, never a second run)"
            )
        except fe.ActionError as exc:
            return fail(f"{agent}.{action} raised {exc.error_type}: {exc.error_message}")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


async def _tools(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with _connect(cfg) as c:
        tools = await c.tools()
    print(json.dumps(tools, indent=2, ensure_ascii=False))
    return 0


# registration -------------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signals``, ``call`` and ``tools`` to the CLI's subcommands (``sub``)."""
    agent_id, signal_id = id_type("agent id"), id_type("signal id")
    sig = sub.add_parser("signals", help="inboxes, dead letters, send, redrive").add_subparsers(
        dest="signals_command", required=True
    )
    inbox = sig.add_parser("inbox", help="signals waiting for an agent, oldest first")
    inbox.add_argument("agent", type=agent_id, metavar="AGENT")
    inbox.add_argument("--limit", type=_limit, default=1000, metavar="N", help="default 1000")
    add_output(inbox)
    inbox.set_defaults(fn=_inbox, parser=inbox)
    dead = sig.add_parser("dead", help="dead letters: signals given up on, with the reason")
    dead.add_argument("agent", type=agent_id, metavar="AGENT", nargs="?")
    add_output(dead)
    dead.set_defaults(fn=_dead, parser=dead)
    redrive = sig.add_parser("redrive", help="send a dead letter again, attempts reset")
    redrive.add_argument("agent", type=agent_id, metavar="AGENT")
    redrive.add_argument("id", type=signal_id, metavar="ID")
    redrive.set_defaults(fn=_redrive, parser=redrive)
    send = sig.add_parser("send", help="send a signal (durable once this returns)")
    send.add_argument("agent", type=agent_id, metavar="AGENT")
    send.add_argument("type", type=_signal_type, metavar="TYPE")
    send.add_argument("--data", type=_json, metavar="JSON", help="the payload (JSON)")
    send.add_argument("--id", type=signal_id, metavar="ID", help="the signal id (dedupe key)")
    send.set_defaults(fn=_send, parser=send)
    call = sub.add_parser("call", help="run an agent's action and print its JSON result")
    call.add_argument("agent", type=agent_id, metavar="AGENT")
    call.add_argument("action", type=id_type("action"), metavar="ACTION")
    call.add_argument("--args", type=_json_object, metavar="JSON", help="a JSON object")
    call.add_argument("--id", type=id_type("call id"), metavar="ID", help="the call id")
    call.add_argument("--timeout", type=_timeout, default=30.0, metavar="S", help="default 30")
    call.set_defaults(fn=_call, parser=call)
    tools = sub.add_parser("tools", help="the spawned agents' actions as tool definitions")
    tools.set_defaults(fn=_tools, parser=tools)
