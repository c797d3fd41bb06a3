"""Ed25519 keys: loading them, their ids, signing and verifying bytes. Pure, no I/O on etcd.

Used by signed signals (``_agents/trust.py``) and the audit log (``_coord/audit_keys.py``).
A key's id is derived from its public key (``ed25519-`` and 20 hex digits of its SHA-256),
so a signature names the key that made it without anyone choosing names, and two processes
that load the same key agree on its id.

``cryptography`` is imported only when a key is loaded: without it, loading raises
:class:`ConfigurationError` naming the package.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "Signer",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "load_signer",
    "public_bytes",
    "verify",
]


def _ed25519(what: str) -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigurationError(
            what,
            "signing and verifying with Ed25519 needs the 'cryptography' package "
            "(pip install 'foundation-etcd[crypto]')",
        ) from None
    return ed25519


def _load(data: bytes, what: str, private: bool, password: bytes | None = None) -> Any:
    """An Ed25519 key (private or public) from PEM or its 32 raw bytes."""
    ed = _ed25519(what)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    kind = ed.Ed25519PrivateKey if private else ed.Ed25519PublicKey
    try:
        if len(data) == 32:
            key = kind.from_private_bytes(data) if private else kind.from_public_bytes(data)
        elif private:
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(what, f"cannot load it: {exc}") from None
    if not isinstance(key, kind):
        raise ConfigurationError(what, f"not an Ed25519 {'private' if private else 'public'} key")
    return key


def load_private_key(
    data: bytes, what: str = "signing_key", password: bytes | None = None
) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (or its 32 raw bytes).

    Raises:
        ConfigurationError: ``cryptography`` is not installed, or not an Ed25519 key.
    """
    private: Ed25519PrivateKey = _load(data, what, True, password)
    return private


def load_public_key(data: bytes, what: str = "public key") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (or its 32 raw bytes).

    Raises:
        ConfigurationError: ``cryptography`` is not installed, or not an Ed25519 key.
    """
    public: Ed25519PublicKey = _load(data, what, False)
    return public


def public_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    from cryptography.hazmat.primitives import serialization

    raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def key_id_of(key: Ed25519PublicKey) -> str:
    """The id of a public key: ``ed25519-`` and 20 hex digits of its SHA-256 (an id)."""
    return "ed25519-" + hashlib.sha256(public_bytes(key)).hexdigest()[:20]


def verify(key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    """Whether ``signature`` (base64) is ``key``'s signature of ``message``."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Signer:
    """A private key that signs, and the id of its public key.

    Attributes:
        key_id: :func:`key_id_of` its public key.
    """

    key_id: str
    key: Ed25519PrivateKey = field(repr=False)

    def sign(self, message: bytes) -> str:
        """The base64 Ed25519 signature of ``message``."""
        return base64.b64encode(self.key.sign(message)).decode()

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public key, for the tenant's trust store."""
        return self.key.public_key()


@functools.lru_cache(maxsize=8)
def load_signer(path: Path) -> Signer:
    """The signer in key file ``path`` (PEM or 32 raw bytes), loaded once per path.

    Raises:
        ConfigurationError: unreadable, or not an unencrypted Ed25519 private key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        why = f"cannot read {str(path)!r}: {exc.strerror}"
        raise ConfigurationError("signing_key", why) from None
    key = load_private_key(data, "signing_key")
    return Signer(key_id_of(key.public_key()), key)
