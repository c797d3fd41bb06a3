"""The keys a tenant trusts to sign its signals: :class:`Tenants` ``trust``/``untrust``/``signers``.

Each trusted key is one record, ``/{namespace}/_system/signers/{tenant}/{key id}``, holding
the raw Ed25519 public key (base64), a label and when it was added. The key id is derived
from the public key (``ed25519-`` and 20 hex digits of its SHA-256), so the same key always
has the same id and a record cannot name another key than the one it holds.

The tenant's role reads the prefix and cannot write it: a tenant's user (or a process with
its credentials) cannot trust a key of its own. Delivering nodes read the records
(``_agents/protection.py``) and refuse a signal signed by a key that is not there.

Guarantees:
    * Idempotent: trusting a trusted key changes nothing (and writes nothing); untrusting
      an unknown id returns ``False``.
    * Each change is appended to the tenant's audit log (``signer-trust``,
      ``signer-untrust``).
    * Needs etcd's root role once authentication is on (like the rest of :class:`Tenants`).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._core import codec as _codec
from .._core.errors import ConfigurationError
from .._core.keys import Keyspace
from .._core.kv import Compare, Op
from .._core.signing import key_id_of, load_public_key, public_bytes
from .._transport import Transport

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = ["SignerInfo", "TrustMethods"]

_MAX_LABEL = 256


@dataclass(frozen=True, slots=True)
class SignerInfo:
    """A key the tenant trusts to sign signals.

    Attributes:
        key_id: its id (what a signed signal names).
        public_key: the 32 raw bytes of the Ed25519 public key.
        label: what the administrator called it (a node, a service).
        added: when it was trusted (seconds since the epoch).
    """

    key_id: str
    public_key: bytes
    label: str
    added: float


class TrustMethods:
    """Trusting and untrusting signing keys; mixed into :class:`Tenants`."""

    _transport: Transport

    if TYPE_CHECKING:  # provided by Tenants

        def keyspace(self, tenant: str) -> Keyspace: ...

        def _note(self, tenant: str, kind: str, details: dict[str, object]) -> Awaitable[None]: ...

    async def trust(self, tenant: str, public_key: bytes, *, label: str = "") -> str:
        """Trust ``public_key`` to sign the signals of ``tenant``.

        Args:
            tenant: the tenant (an id).
            public_key: an Ed25519 public key, PEM or its 32 raw bytes.
            label: what it is (shown by :meth:`signers`), at most 256 characters.

        Returns:
            The key's id.

        Raises:
            ConfigurationError: not an Ed25519 public key, or a bad label (nothing sent).
            AuthError: the transport's user lacks the root role.
        """
        ks = self.keyspace(tenant)
        key = load_public_key(public_key, "public key")
        if not isinstance(label, str) or len(label) > _MAX_LABEL or not label.isprintable():
            shown = repr(label[:40]) + ("..." if len(label) > 40 else "")
            raise ConfigurationError(
                "label", f"must be printable, at most {_MAX_LABEL} characters: {shown}"
            )
        key_id = key_id_of(key)
        record = {
            "public_key": base64.b64encode(public_bytes(key)).decode(),
            "label": label,
            "added": time.time(),
        }
        value = _codec.encode(record, "signer", 4096)
        res = await self._transport.txn(
            [Compare.create_revision(ks.signer(key_id)) == 0], [Op.put(ks.signer(key_id), value)]
        )
        if res.succeeded:
            await self._note(tenant, "signer-trust", {"key_id": key_id, "label": label})
        return key_id

    async def untrust(self, tenant: str, key_id: str) -> bool:
        """Stop trusting a key; ``False`` when it was not trusted.

        Delivering nodes refuse its signatures within ``TRUST_TTL`` (5 s) of this.

        Raises:
            InvalidIdError: ``key_id`` is not an id.
            AuthError: the transport's user lacks the root role.
        """
        ks = self.keyspace(tenant)
        res = await self._transport.delete(ks.signer(key_id))
        if res.deleted:
            await self._note(tenant, "signer-untrust", {"key_id": key_id})
        return bool(res.deleted)

    async def signers(self, tenant: str) -> list[SignerInfo]:
        """The keys ``tenant`` trusts, by id (records that do not parse are skipped)."""
        ks = self.keyspace(tenant)
        res = await self._transport.get_prefix(ks.signers_prefix())
        out = []
        for kv in res.kvs:
            try:
                d = _codec.decode(kv.value)
                raw = base64.b64decode(d["public_key"], validate=True)
                key_id = kv.key[len(ks.signers_prefix()) :].decode()
                if key_id != key_id_of(load_public_key(raw)):
                    continue  # a record not written by trust: it names another key
                out.append(SignerInfo(key_id, raw, str(d.get("label", "")), float(d["added"])))
            except (ValueError, TypeError, KeyError, ConfigurationError):
                continue
        return sorted(out, key=lambda s: s.key_id)
