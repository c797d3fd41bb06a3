"""``foundation-etcd tenant ...``: provision the etcd roles and users of tenants.

::

    tenant create TENANT [--user NAME] [--password-stdin | --no-password] [-o table|json]
                                            the tenant's role, its permissions, its user
    tenant list [-o table|json] [-w]        the namespace's tenants, users, permissions
    tenant grant TENANT USER [--password-stdin | --no-password]
                                            grant the tenant's role to a (new) user
    tenant revoke TENANT USER               take the tenant's role from a user
    tenant delete TENANT [--delete-keys]    delete the role and the users it leaves
                                            without a role; the keys only if asked
    tenant trust|untrust|signers ...        the keys that sign its signals (``cli_keys``)

Registered by :mod:`foundation_etcd.cli` (:func:`add_commands`), with its options and exit
statuses; run with the credentials of ``root`` or of a user granted etcd's ``root`` role
(``FOUNDATION_ETCD_USER``, ``FOUNDATION_ETCD_PASSWORD``, or a client certificate). The
namespace is the CLI's ``--namespace``. Tenant ids and user names are checked before
anything is sent (exit 2); a password is read from standard input (``--password-stdin``),
never from the command line. Exit 1, one line on stderr: etcd refused (the message says
when the root role is missing), a new user without ``--password-stdin`` or
``--no-password``, granting a tenant that was not created. Every command is idempotent.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import foundation_etcd as fe

from ._cli_args import id_type, usage_error
from ._cli_out import Listing, add_output, show
from .lowlevel import open_transport, prefix_end

__all__ = ["add_commands"]

PROG = "foundation-etcd"


def _user(value: str) -> str:
    if not value or len(value) > 256 or not value.isprintable() or value != value.strip():
        raise argparse.ArgumentTypeError(
            f"invalid user {value!r}: 1-256 printable characters, no surrounding spaces"
        )
    if value == "root":
        raise argparse.ArgumentTypeError("root holds every permission; it is never a tenant's")
    return value


def _password(args: argparse.Namespace) -> str | None:
    """The password on standard input (its first line), when ``--password-stdin``.

    Raises:
        _NoPassword: standard input holds no password.
    """
    if not args.password_stdin:
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise _NoPassword
    return line


class _NoPassword(Exception):
    """``--password-stdin`` found an empty first line."""


def _read_password(args: argparse.Namespace) -> tuple[str | None, int]:
    try:
        return _password(args), 0
    except _NoPassword:
        return None, usage_error(args, "argument --password-stdin: no password on standard input")


def _text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _perm(p: fe.KeyPermission) -> dict[str, Any]:
    scope = "prefix" if p.range_end and p.range_end == prefix_end(p.key) else "range"
    if not p.range_end:
        scope = "key"
    return {"kind": p.kind, "scope": scope, "key": _text(p.key), "range_end": _text(p.range_end)}


def _as_json(t: fe.TenantInfo) -> dict[str, Any]:
    return {
        "namespace": t.namespace,
        "tenant": t.tenant,
        "role": t.role,
        "users": list(t.users),
        "permissions": [_perm(p) for p in t.permissions],
        "missing": [_perm(p) for p in t.missing],
        "extra": [_perm(p) for p in t.extra],
    }


def _state(t: fe.TenantInfo) -> str:
    parts = [f"{len(t.missing)} missing"] if t.missing else []
    parts += [f"{len(t.extra)} extra"] if t.extra else []
    return ", ".join(parts) or "ok"


def _show(t: fe.TenantInfo) -> None:
    print(
        f"tenant {t.tenant} (namespace {t.namespace}): role {t.role}, "
        f"users {', '.join(t.users) or '-'}, permissions {_state(t)}"
    )
    for p in t.permissions:
        d = _perm(p)
        print(f"  {d['kind']:<9} {d['scope']:<6} {d['key']!r}")


async def _create(cfg: fe.Config, args: argparse.Namespace) -> int:
    password, status = _read_password(args)
    if status:
        return status
    async with open_transport(cfg) as t:
        info = await fe.Tenants(t).create(
            args.tenant, args.user, password=password, no_password=args.no_password
        )
    if args.output == "json":
        print(json.dumps({"kind": "Tenant", **_as_json(info)}, indent=2))
    else:
        _show(info)
    return 0


async def _list(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with open_transport(cfg) as t:

        async def build() -> Listing:
            rev = await t.revision()
            items = [_as_json(x) | {"state": _state(x)} for x in await fe.Tenants(t).list()]
            columns = [("TENANT", "tenant"), ("ROLE", "role"), ("PERMISSIONS", "state")]
            return Listing("TenantList", [*columns, ("USERS", "users")], items, rev)

        return await show(t, args, build)


async def _grant(cfg: fe.Config, args: argparse.Namespace) -> int:
    password, status = _read_password(args)
    if status:
        return status
    async with open_transport(cfg) as t:
        info = await fe.Tenants(t).grant(
            args.tenant, args.user, password=password, no_password=args.no_password
        )
    print(f"user {args.user} holds role {info.role}: users {', '.join(info.users)}")
    return 0


async def _revoke(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with open_transport(cfg) as t:
        tenants = fe.Tenants(t)
        held = await tenants.revoke(args.tenant, args.user)
    role = tenants.role(args.tenant)
    print(f"user {args.user} {'no longer holds' if held else 'did not hold'} role {role}")
    return 0


async def _delete(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with open_transport(cfg) as t:
        tenants = fe.Tenants(t)
        done = await tenants.delete(args.tenant, delete_keys=args.delete_keys)
    role = tenants.role(args.tenant)
    print(f"role {role} {'deleted' if done.role_deleted else 'did not exist'}")
    print(f"users deleted: {', '.join(done.users_deleted) or '-'}")
    if args.delete_keys:
        print(f"keys deleted: {done.keys_deleted}")
    else:
        again = f"{PROG} --namespace {cfg.namespace} tenant delete {args.tenant} --delete-keys"
        print(f"keys kept (`{again}` deletes them)")
    return 0


def _password_options(cmd: argparse.ArgumentParser) -> None:
    how = cmd.add_mutually_exclusive_group()
    how.add_argument(
        "--password-stdin",
        action="store_true",
        help="read a new user's password from the first line of standard input",
    )
    how.add_argument(
        "--no-password",
        action="store_true",
        help="a new user without a password (a client certificate's CN)",
    )


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``tenant`` and its subcommands to the CLI's subcommands (``sub``); return them."""
    tenant = id_type("tenant")
    t = sub.add_parser("tenant", help="provision tenants: etcd roles and users").add_subparsers(
        dest="tenant_command", required=True
    )
    create = t.add_parser("create", help="create a tenant's role and user (idempotent)")
    create.add_argument("tenant", type=tenant, metavar="TENANT")
    create.add_argument("--user", type=_user, metavar="NAME", help="default: the role's name")
    _password_options(create)
    add_output(create, watch=False)
    create.set_defaults(fn=_create, parser=create)
    ls = t.add_parser("list", help="the namespace's tenants")
    add_output(ls)
    ls.set_defaults(fn=_list, parser=ls)
    grant = t.add_parser("grant", help="grant a tenant's role to a user (created if missing)")
    grant.add_argument("tenant", type=tenant, metavar="TENANT")
    grant.add_argument("user", type=_user, metavar="USER")
    _password_options(grant)
    grant.set_defaults(fn=_grant, parser=grant)
    revoke = t.add_parser("revoke", help="take a tenant's role from a user")
    revoke.add_argument("tenant", type=tenant, metavar="TENANT")
    revoke.add_argument("user", type=_user, metavar="USER")
    revoke.set_defaults(fn=_revoke, parser=revoke)
    delete = t.add_parser("delete", help="delete a tenant's role and users")
    delete.add_argument("tenant", type=tenant, metavar="TENANT")
    delete.add_argument(
        "--delete-keys", action="store_true", help="also delete every key of the tenant"
    )
    delete.set_defaults(fn=_delete, parser=delete)
    return t
