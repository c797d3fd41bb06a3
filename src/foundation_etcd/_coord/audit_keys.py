"""The Ed25519 keys of the audit log: loading them, and checking a record's signature.

``cryptography`` is imported only when a key is loaded or a signature checked: without it,
those raise :class:`ConfigurationError` naming the package, and an unsigned log works.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._core.errors import ConfigurationError
from .._core.records import AuditRecord
from .._core.signing import load_private_key
from .._core.signing import load_public_key as _load_public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = ["load_public_key", "load_signing_key", "signed_by", "signing_key_file"]


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
    return load_private_key(data, "audit_signing_key", password)


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (or 32 raw bytes).

    Raises:
        ConfigurationError: ``cryptography`` is not installed, or not an Ed25519 key.
    """
    return _load_public_key(data, "audit public key")


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
