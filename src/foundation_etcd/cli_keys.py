"""``foundation-etcd encryption ...`` and ``signing ...``, and ``tenant trust|untrust|signers``.

::

    encryption keygen ID                   print a key file with one new AES-256 key
    encryption rotate [--dry-run] [-o table|json]
                                           seal every checkpoint, payload and reply of the
                                           tenant under the first key of
                                           FOUNDATION_ETCD_ENCRYPTION (progress on stderr)
    signing keygen FILE                    write a new Ed25519 private key to FILE (0600)
                                           and its public key to FILE.pub; print its id
    tenant trust TENANT PUBLIC_KEY_FILE [--label TEXT]
                                           trust a public key to sign the tenant's signals
    tenant untrust TENANT KEY_ID           stop trusting it
    tenant signers TENANT [-o table|json] [-w]
                                           the keys the tenant trusts

Registered by :mod:`foundation_etcd.cli`. ``rotate`` runs as the tenant (its user may),
``trust``/``untrust`` need etcd's root role. Exit 2 before anything is sent for a bad id or
a file that does not hold a key; exit 1 when etcd refuses, when the process has no keys, or
when ``rotate`` left values it could not decrypt (listed on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import foundation_etcd as fe

from ._agents.rotation import reencrypt
from ._cli_args import id_type, usage_error
from ._cli_out import Listing, add_output, show
from ._core.sealing import new_key
from ._core.signing import key_id_of, load_public_key
from .lowlevel import open_transport

__all__ = ["add_commands"]


async def _keygen(cfg: fe.Config, args: argparse.Namespace) -> int:
    print(fe.Keyring([new_key(args.id)]).to_json())
    print(f"# a secret: keep it out of version control ({args.id})", file=sys.stderr)
    return 0


def _label(text: str) -> str:
    """A signer's label: printable, at most 256 characters (checked before anything is sent)."""
    if len(text) > 256 or not text.isprintable():
        shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
        raise argparse.ArgumentTypeError(f"must be printable, at most 256 characters: {shown}")
    return text


async def _rotate(cfg: fe.Config, args: argparse.Namespace) -> int:
    if cfg.keyring is None:
        print(
            "foundation-etcd: no encryption keys: set FOUNDATION_ETCD_ENCRYPTION to "
            "the key file (its first key seals)",
            file=sys.stderr,
        )
        return 1

    done = "would rewrite" if args.dry_run else "rewritten"

    def progress(r: fe.ReencryptReport, what: str) -> None:  # totals so far, at each section
        print(f"{what}: {r.scanned} read, {r.rewritten} {done} (totals so far)", file=sys.stderr)

    async with open_transport(cfg) as t:
        report = await reencrypt(
            t, cfg.keyspace, cfg.keyring, progress=progress, dry_run=args.dry_run
        )
    doc: dict[str, Any] = {
        "kind": "EncryptionRotation",
        "key_id": report.key_id,
        "dry_run": args.dry_run,
        "scanned": report.scanned,
        "rewritten": report.rewritten,
        "current": report.current,
        "vanished": report.vanished,
        "failed": [{"key": k, "reason": why} for k, why in report.failed],
    }
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        verb = "would rewrite" if args.dry_run else "rewritten"
        print(
            f"under key {report.key_id}: {report.scanned} values read, {report.rewritten} "
            f"{verb}, {report.current} already current, {report.vanished} gone meanwhile, "
            f"{len(report.failed)} failed"
        )
    for key, why in report.failed:
        print(f"foundation-etcd: {key}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def _write_keypair(path: Path) -> str | None:
    """A new key in ``path`` (0600) and ``path.pub``; its id, or ``None`` if either exists.

    Raises:
        OSError: a file cannot be created (no such directory, no permission).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key()
    pub = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        pub_fd = os.open(f"{path}.pub", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        os.close(pub_fd)
        os.unlink(f"{path}.pub")  # made just now: no half of a pair is left
        if isinstance(exc, FileExistsError):
            return None
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with os.fdopen(pub_fd, "wb") as f:
        f.write(pub)
    return key_id_of(public)


async def _signing_keygen(cfg: fe.Config, args: argparse.Namespace) -> int:
    try:
        key_id = _write_keypair(args.file)
    except OSError as exc:
        return usage_error(args, f"argument FILE: cannot create {str(args.file)!r}: {exc.strerror}")
    if key_id is None:
        return usage_error(
            args, f"argument FILE: {str(args.file)!r} or its .pub exists (neither overwritten)"
        )
    print(key_id)
    return 0


def _public_key_file(value: str) -> bytes:
    try:
        data = Path(value).read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value!r}: {exc.strerror}") from None
    try:
        load_public_key(data)
    except fe.ConfigurationError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None
    return data


async def _trust(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with open_transport(cfg) as t:
        key_id = await fe.Tenants(t).trust(args.tenant, args.public_key, label=args.label)
    print(key_id)
    return 0


async def _untrust(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with open_transport(cfg) as t:
        was = await fe.Tenants(t).untrust(args.tenant, args.key_id)
    print(f"key {args.key_id} {'no longer trusted' if was else 'was not trusted'}")
    return 0


async def _signers(cfg: fe.Config, args: argparse.Namespace) -> int:
    async with open_transport(cfg) as t:

        async def build() -> Listing:
            rev = await t.revision()
            found = await fe.Tenants(t).signers(args.tenant)
            items = [{"key_id": s.key_id, "label": s.label, "added": s.added} for s in found]
            return Listing("SignerList", [("KEY ID", "key_id"), ("LABEL", "label")], items, rev)

        return await show(t, args, build)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    tenant: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``encryption``, ``signing`` and the ``tenant`` key subcommands."""
    enc = sub.add_parser("encryption", help="encryption at rest of state and signals")
    e = enc.add_subparsers(dest="encryption_command", required=True)
    keygen = e.add_parser("keygen", help="print a key file with one new AES-256 key")
    keygen.add_argument("id", type=id_type("key id"), metavar="ID")
    keygen.set_defaults(fn=_keygen, parser=keygen)
    rotate = e.add_parser("rotate", help="seal everything stored under the newest key")
    rotate.add_argument("--dry-run", action="store_true", help="count, write nothing")
    add_output(rotate, watch=False)
    rotate.set_defaults(fn=_rotate, parser=rotate)
    sign = sub.add_parser("signing", help="Ed25519 keys that sign signals")
    s = sign.add_subparsers(dest="signing_command", required=True)
    skey = s.add_parser("keygen", help="write a new private key to FILE and FILE.pub")
    skey.add_argument("file", type=Path, metavar="FILE")
    skey.set_defaults(fn=_signing_keygen, parser=skey)
    tenant_id = id_type("tenant")
    trust = tenant.add_parser("trust", help="trust a public key to sign a tenant's signals")
    trust.add_argument("tenant", type=tenant_id, metavar="TENANT")
    trust.add_argument("public_key", type=_public_key_file, metavar="PUBLIC_KEY_FILE")
    trust.add_argument("--label", default="", type=_label, metavar="TEXT", help="what the key is")
    trust.set_defaults(fn=_trust, parser=trust)
    untrust = tenant.add_parser("untrust", help="stop trusting a signing key")
    untrust.add_argument("tenant", type=tenant_id, metavar="TENANT")
    untrust.add_argument("key_id", type=id_type("key id"), metavar="KEY_ID")
    untrust.set_defaults(fn=_untrust, parser=untrust)
    signers = tenant.add_parser("signers", help="the keys a tenant trusts")
    signers.add_argument("tenant", type=tenant_id, metavar="TENANT")
    add_output(signers)
    signers.set_defaults(fn=_signers, parser=signers)
