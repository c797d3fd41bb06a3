"""The Ed25519 keys of the audit log: loading them, and checking a record's signature.

``cryptography`` is imported only when a key is loaded or a signature checked: without it,
those raise :class:`ConfigurationError` naming the package, and an unsigned log works.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.errors import ConfigurationError
from .._core.records import AuditRecord

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = ["load_public_key", "load_signing_key", "signed_by", "signing_key_file"]


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigurationError(
            "audit signing key",
            "signing or verifying audit records needs the 'cryptography' package "
            "(pip install cryptography)",
        ) from None
    return ed25519


@functools.lru_cache(maxsize=8)
def signing_key_file(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in file ``path`` (PEM or 32 raw bytes), loaded once.

    Raises:
        ConfigurationError: unreadable, or not an unencrypted Ed25519 private key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError("audit_signing_key", f"cannot read {str(path)!r}") from exc
    return load_signing_key(data)


def load_signing_key(data: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (or 32 raw bytes).

    Raises:
        ConfigurationError: ``cryptography`` is not installed, or not an Ed25519 key.
    """
    ed = _ed25519()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = (
            ed.Ed25519PrivateKey.from_private_bytes(data)
            if len(data) == 32
            else serialization.load_pem_private_key(data, password)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError("audit_signing_key", f"cannot load it: {exc}") from None
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ConfigurationError("audit_signing_key", "not an Ed25519 private key")
    private: Ed25519PrivateKey = key
    return private


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (or 32 raw bytes).

    Raises:
        ConfigurationError: ``cryptography`` is not installed, or not an Ed25519 key.
    """
    ed = _ed25519()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = (
            ed.Ed25519PublicKey.from_public_bytes(data)
            if len(data) == 32
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError("audit public key", f"cannot load it: {exc}") from None
    if not isinstance(key, ed.Ed25519PublicKey):
        raise ConfigurationError("audit public key", "not an Ed25519 public key")
    public: Ed25519PublicKey = key
    return public


def signed_by(rec: AuditRecord, keys: Sequence[Ed25519PublicKey]) -> bool:
    """Whether ``rec`` carries a valid signature by one of ``keys``."""
    if rec.sig is None:
        return False
    try:
        sig = bytes.fromhex(rec.sig)
    except ValueError:
        return False
    from cryptography.exceptions import InvalidSignature

    for key in keys:
        try:
            key.verify(sig, rec.canonical())
            return True
        except InvalidSignature:
            continue
    return False
