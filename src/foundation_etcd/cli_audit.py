"""``foundation-etcd audit ...``: read and verify the tenant's audit log.

::

    audit list [-o table|json] [--since N]  the records after seq N (default: all)
    audit verify [--public-key FILE ...]    walk the chain from its first record (or
                                            checkpoint) to the head; with keys, every
                                            record must be signed by one of them

Registered by :mod:`foundation_etcd.cli` (:func:`add_commands`). Needs only read access to
the tenant's prefix (``--tenant``). Exit status of ``verify``: 0 the chain is valid, 1 a
problem was found (each printed, naming its seq) or etcd failed, 2 bad usage (a negative
``--since``, a public key file that cannot be read or is not an Ed25519 public key),
found before anything is sent.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import foundation_etcd as fe

from ._cli_out import Listing, add_output, show
from .lowlevel import open_transport

__all__ = ["add_commands"]


def _since(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if not 0 <= value < 10**12 - 1:  # the records' sequence numbers are 1..10**12 - 1
        raise argparse.ArgumentTypeError(f"must be 0 to {10**12 - 2}, not {value}")
    return value


def _public_key(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: {exc.strerror}") from None
    try:
        return fe.load_public_key(data)
    except fe.ConfigurationError as exc:
        raise argparse.ArgumentTypeError(f"{path!r}: {exc}") from None


def _log(cfg: fe.Config, t: Any) -> fe.AuditLog:
    return fe.AuditLog(t, cfg.keyspace, actor="cli")


def _record(r: Any) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "time": r.time,
        "at": datetime.fromtimestamp(r.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "actor": r.actor,
        "kind": r.kind,
        "details": dict(r.details),
        "prev": r.prev,
        "hash": r.digest,
        "signed": r.sig is not None,
    }


async def _list(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with open_transport(cfg) as t:

        async def build() -> Listing:
            rev = await t.revision()
            items = [_record(r) for r in await _log(cfg, t).records(args.since)]
            columns = [("SEQ", "seq"), ("TIME (UTC)", "at"), ("ACTOR", "actor")]
            columns += [("KIND", "kind"), ("SIGNED", "signed"), ("DETAILS", "details")]
            return Listing("AuditRecordList", columns, items, rev)

        return await show(t, args, build)


async def _verify(cfg: fe.Config, args: argparse.Namespace) -> int:
    keys = args.public_key or None
    async with open_transport(cfg) as t:
        report = await _log(cfg, t).verify(keys)
    for p in report.problems:
        print(str(p))
    signed = ", signatures checked" if report.signatures_checked else ", signatures not checked"
    span = f"seq {report.first_seq}..{report.head_seq}" if report.records else "empty"
    verdict = "valid" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"audit log {span}: {report.records} record(s){signed}: {verdict}")
    sys.stdout.flush()
    return 0 if report.ok else 1


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its subcommands to the CLI's subcommands (``sub``)."""
    a = sub.add_parser("audit", help="the tenant's audit log").add_subparsers(
        dest="audit_command", required=True
    )
    ls = a.add_parser("list", help="the audit records, oldest first")
    add_output(ls)
    ls.add_argument("--since", type=_since, default=0, metavar="N", help="records after seq N")
    ls.set_defaults(fn=_list, parser=ls)
    verify = a.add_parser("verify", help="check the chain; exit 1 when a problem is found")
    verify.add_argument(
        "--public-key",
        action="append",
        default=[],
        type=_public_key,
        metavar="FILE",
        help="an Ed25519 public key (PEM) whose signatures are accepted; repeatable",
    )
    verify.set_defaults(fn=_verify, parser=verify)
