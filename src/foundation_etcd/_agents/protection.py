"""Signed signals and sealed replies: what the delivering node checks before a handler runs.

Signing (``Config.signing_key``): the sender signs :func:`~.._core.signals.signed_bytes`
of each signal (every field it set, the plaintext payload and the tenant prefix) with its
Ed25519 key; the value carries the key id and the signature. The tenant's trusted public
keys live in etcd under ``/{namespace}/_system/signers/{tenant}/{key id}``, which the
tenant's role may read and not write: only an administrator trusts a key
(``foundation-etcd tenant trust``, :meth:`Tenants.trust`).

Before a signal is handled, :meth:`Trust.refusal` decides, and a refused signal goes to dead
letters with the reason, never to the handler:

* ``undecryptable: ...``: an encrypted payload that this process's keys do not open
  (another location, changed bytes, an unknown key id);
* ``forged: ...``: a signature that does not verify (any signed field changed, or the
  signal copied to another agent, tenant or id);
* ``untrusted signer: ...``: signed by a key the tenant does not trust (or no longer);
* ``stale signature: ...``: signed longer ago than ``Config.signal_retention``: its id's
  dedupe record may be gone, so a copy replayed then would run twice;
* ``unsigned``: no signature while ``Config.require_signed_signals`` is on.

Guarantees:
    * A handler never sees a refused signal; its state and outbox are untouched.
    * Trusted keys are read from etcd (linearizable) and cached per connection for at most
      :data:`TRUST_TTL` seconds: a key untrusted by an administrator is refused everywhere
      within that time. A key not found is not cached.
    * Call replies are sealed like payloads, for their signal's location (``#reply``).

On lease loss: nothing here holds a lease.
"""

from __future__ import annotations

import base64
import time
import weakref
from typing import TYPE_CHECKING, Any

from .._core import codec as _codec
from .._core.errors import ConfigurationError, DecryptionError
from .._core.keys import Keyspace
from .._core.sealing import Keyring
from .._core.signals import Stored, signal_location, signed_bytes
from .._core.signing import load_public_key, verify
from .._transport import Transport

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["TRUST_TTL", "Trust", "open_reply", "reply_location", "seal_reply"]

TRUST_TTL = 5.0
_REPLY = b"#reply"


class Trust:
    """The trusted signing keys of one tenant, as one connection reads them."""

    _of: weakref.WeakKeyDictionary[Transport, dict[bytes, Trust]] = weakref.WeakKeyDictionary()

    def __init__(self, transport: Transport, keyspace: Keyspace) -> None:
        self._t, self._ks = transport, keyspace
        self._keys: dict[str, tuple[float, Ed25519PublicKey]] = {}

    @classmethod
    def of(cls, transport: Transport, keyspace: Keyspace) -> Trust:
        """The one cache of ``keyspace``'s trusted keys on ``transport``."""
        per = cls._of.setdefault(transport, {})
        found = per.get(keyspace.prefix)
        if found is None:
            found = per[keyspace.prefix] = cls(transport, keyspace)
        return found

    async def key(self, key_id: str) -> Ed25519PublicKey | None:
        """The trusted public key ``key_id``, or ``None`` when the tenant does not trust it."""
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit is not None and now - hit[0] < TRUST_TTL:
            return hit[1]
        try:
            key = self._ks.signer(key_id)
        except ValueError:  # not an id: no such record can exist
            return None
        kv = await self._t.get(key)
        if kv is None:
            self._keys.pop(key_id, None)
            return None
        try:
            d = _codec.decode(kv.value)
            public = load_public_key(base64.b64decode(d["public_key"], validate=True))
        except (ValueError, TypeError, KeyError, ConfigurationError):
            return None
        self._keys[key_id] = (now, public)
        return public

    async def refusal(self, stored: Stored, *, required: bool, retention: float) -> str | None:
        """Why ``stored`` must not be handled (its dead letter's reason), or ``None``."""
        if stored.error is not None:
            return f"undecryptable: {stored.error}"
        signal = stored.signal
        if signal.signature is None or signal.signer is None:
            return "unsigned (Config.require_signed_signals is on)" if required else None
        public = await self.key(signal.signer)
        if public is None:
            return f"untrusted signer: tenant {self._ks.tenant!r} does not trust {signal.signer!r}"
        if not verify(public, signal.signature, signed_bytes(signal, self._ks.prefix)):
            return (
                f"forged: the signature by {signal.signer!r} does not verify (a signed field "
                "was changed, or the signal was copied to another agent, id or tenant)"
            )
        age = time.time() - signal.time
        if age > retention:
            return f"stale signature: signed {age:.0f} s ago, over signal_retention {retention:g} s"
        return None


def seal_reply(
    keyring: Keyring | None, ks: Keyspace, agent_id: str, signal_id: str, reply: Any, limit: int
) -> dict[str, Any]:
    """The done record's reply field: ``{"reply": ...}`` or, with keys, ``{"sealed": ...}``."""
    if keyring is None:
        return {"reply": reply}
    plain = _codec.encode(reply, "reply", limit)
    return {"sealed": keyring.seal_text(plain, reply_location(ks, agent_id, signal_id))}


def open_reply(
    keyring: Keyring | None, ks: Keyspace, agent_id: str, signal_id: str, done: Any
) -> Any:
    """The reply in a decoded done record (``None`` when there is none).

    Raises:
        DecryptionError: it is sealed and cannot be opened here.
    """
    if not isinstance(done, dict) or "sealed" not in done:
        return done.get("reply") if isinstance(done, dict) else None
    where = reply_location(ks, agent_id, signal_id)
    if keyring is None:
        raise DecryptionError(where.decode(), "the reply is encrypted and this process has no keys")
    return _codec.decode(keyring.open_text(done["sealed"], where))


def reply_location(ks: Keyspace, agent_id: str, signal_id: str) -> bytes:
    """Where a call's reply is sealed for: its signal's location and ``#reply``."""
    return signal_location(ks.prefix, agent_id, signal_id) + _REPLY
