"""Encryption at rest of agent state and signal payloads: AES-256-GCM under a keyring.

The model is Kubernetes' ``EncryptionConfiguration``: an ordered list of keys, each with an
id; the **first** encrypts, **every** key decrypts, and each stored value names the key that
sealed it, so keys rotate without downtime:

1. add the new key *second* on every process (all can read it), then
2. move it *first* (new writes use it), then
3. re-encrypt what is stored (``foundation-etcd encryption rotate``), then
4. drop the old key.

A sealed value is ``fe:enc:aesgcm:v1:{key id}:`` followed by a 12-byte random nonce and the
AES-GCM ciphertext with its 16-byte tag. Its authenticated data is the format, the key id
and the **location** the value was written for (the etcd key of a checkpoint, the agent and
id of a signal): a value copied to another location, relabelled with another key id, or
changed in any byte does not decrypt (:class:`DecryptionError`, saying which).

Guarantees:
    * Values that do not start with the prefix are plaintext and are read as they are, so a
      cluster migrates to encryption (and back) without downtime; ``rotate`` encrypts them.
    * Nonces are 96 random bits per value (``os.urandom``): the NIST bound of 2**32 values
      per key is far above what one key seals between rotations.
    * Secrets never appear in a ``repr`` or an error.
    * ``cryptography`` is imported only when a keyring is built; without it, building one
      raises :class:`ConfigurationError` naming the package.

The key file (``Config.encryption``, ``FOUNDATION_ETCD_ENCRYPTION``) is JSON::

    {"keys": [{"id": "2026-12", "secret": "<base64 of 32 random bytes>"},
              {"id": "2026-06", "secret": "..."}]}
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, DecryptionError

__all__ = ["PREFIX", "EncryptionKey", "Keyring", "is_sealed", "new_key"]

PREFIX = b"fe:enc:aesgcm:v1:"
_AAD = b"foundation-etcd/aesgcm/v1\0"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE = 12
_TAG = 16
_SECRET_SIZES = (16, 24, 32)


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ConfigurationError(
            "encryption",
            "encrypting state and signals needs the 'cryptography' package "
            "(pip install 'foundation-etcd[crypto]')",
        ) from None
    return AESGCM


def is_sealed(value: bytes) -> bool:
    """Whether ``value`` is a sealed value (else it is plaintext)."""
    return value.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """One key of a keyring.

    Attributes:
        id: the key's id, stored in each value it seals (1-64 of ``A-Z a-z 0-9 . _ -``).
        secret: 16, 24 or 32 bytes (AES-128, -192, -256); 32 is what :func:`new_key` makes.

    Raises:
        ConfigurationError: a bad id or secret size.
    """

    id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or _KEY_ID_RE.fullmatch(self.id) is None:
            raise ConfigurationError(
                "encryption", f"key id must be 1-64 of A-Z a-z 0-9 . _ -, not {self.id!r}"
            )
        if not isinstance(self.secret, bytes) or len(self.secret) not in _SECRET_SIZES:
            size = len(self.secret) if isinstance(self.secret, bytes) else type(self.secret)
            raise ConfigurationError(
                "encryption", f"key {self.id!r}: the secret must be 16, 24 or 32 bytes, not {size}"
            )


def new_key(key_id: str) -> EncryptionKey:
    """A fresh AES-256 key (32 bytes from ``os.urandom``) with id ``key_id``."""
    return EncryptionKey(key_id, os.urandom(32))


class Keyring:
    """An ordered list of keys: the first seals, all open.

    Args:
        keys: at least one key; ids distinct.

    Raises:
        ConfigurationError: no key, a repeated id, or ``cryptography`` is missing.
    """

    __slots__ = ("_ciphers", "keys")

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        keys = tuple(keys)
        if not keys or not all(isinstance(k, EncryptionKey) for k in keys):
            raise ConfigurationError("encryption", "a keyring needs at least one EncryptionKey")
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("encryption", f"key ids repeat: {ids}")
        aesgcm = _aesgcm()
        self.keys: tuple[EncryptionKey, ...] = keys
        self._ciphers = {k.id: aesgcm(k.secret) for k in keys}

    @property
    def primary(self) -> str:
        """The id of the key that seals new values (the first)."""
        return self.keys[0].id

    def __repr__(self) -> str:
        return f"Keyring({[k.id for k in self.keys]!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and other.keys == self.keys

    def __hash__(self) -> int:
        return hash(self.keys)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "key file") -> Keyring:
        """A keyring from its JSON form (see the module docstring).

        Raises:
            ConfigurationError: not that JSON, or a bad key (the message names which).
        """
        try:
            doc = json.loads(text)
            entries = doc["keys"]
            if not isinstance(entries, list):
                raise TypeError("'keys' is not a list")
            keys = []
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict) or set(entry) - {"id", "secret"}:
                    raise TypeError(f"key {i} must be an object with 'id' and 'secret'")
                secret = base64.b64decode(str(entry["secret"]), validate=True)
                keys.append(EncryptionKey(entry["id"], secret))
        except ConfigurationError as exc:
            reason = str(exc).removeprefix("encryption: ")
            raise ConfigurationError("encryption", f"{source}: {reason}") from None
        except (ValueError, TypeError, KeyError, binascii.Error) as exc:
            why = f"{source}: expected {{'keys': [{{'id': ..., 'secret': <base64>}}]}} ({exc})"
            raise ConfigurationError("encryption", why) from None
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path | str) -> Keyring:
        """A keyring from a key file.

        Raises:
            ConfigurationError: unreadable, or not a valid key file.
        """
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                "encryption", f"cannot read {str(path)!r}: {exc.strerror}"
            ) from None
        return cls.from_json(text, repr(str(path)))

    def to_json(self) -> str:
        """The key file's JSON for this keyring (**it holds the secrets**)."""
        keys = [{"id": k.id, "secret": base64.b64encode(k.secret).decode()} for k in self.keys]
        return json.dumps({"keys": keys}, indent=2)

    def seal(self, plaintext: bytes, location: bytes) -> bytes:
        """Encrypt ``plaintext`` for ``location`` under the primary key."""
        kid = self.primary.encode()
        nonce = os.urandom(_NONCE)
        ct: bytes = self._ciphers[self.primary].encrypt(
            nonce, plaintext, _AAD + kid + b"\0" + location
        )
        return PREFIX + kid + b":" + nonce + ct

    def seal_text(self, plaintext: bytes, location: bytes) -> str:
        """:meth:`seal`, as base64 text (how a sealed field sits in a JSON record)."""
        return base64.b64encode(self.seal(plaintext, location)).decode()

    def open_text(self, text: object, location: bytes) -> bytes:
        """:meth:`open` of a sealed field in base64 text.

        Raises:
            DecryptionError: not base64, or as :meth:`open`.
        """
        try:
            sealed = base64.b64decode(str(text), validate=True)
        except binascii.Error:
            raise DecryptionError(location.decode(errors="replace"), "not base64") from None
        return self.open(sealed, location)

    def is_current(self, text: object) -> bool:
        """Whether a sealed field (base64 text) is sealed under the primary key."""
        try:
            return self.key_of(base64.b64decode(str(text), validate=True)) == self.primary
        except binascii.Error:
            return False

    def key_of(self, value: bytes) -> str | None:
        """The key id a sealed value names; ``None`` for plaintext or a malformed value."""
        if not is_sealed(value):
            return None
        kid, sep, _ = value[len(PREFIX) : len(PREFIX) + 66].partition(b":")
        return kid.decode("ascii", "replace") if sep else None

    def open(self, value: bytes, location: bytes) -> bytes:
        """The plaintext of ``value`` read at ``location`` (plaintext is returned as it is).

        Raises:
            DecryptionError: an unknown key id, another location, or a changed value.
        """
        if not is_sealed(value):
            return value
        where = location.decode(errors="replace")
        kid = self.key_of(value)
        if kid is None:
            raise DecryptionError(where, "malformed sealed value (no key id)")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(
                where, f"key {kid!r} is not configured (have {[k.id for k in self.keys]})", kid
            )
        body = value[len(PREFIX) + len(kid) + 1 :]
        if len(body) < _NONCE + _TAG:
            raise DecryptionError(where, "truncated sealed value", kid)
        from cryptography.exceptions import InvalidTag

        try:
            plain: bytes = cipher.decrypt(
                body[:_NONCE], body[_NONCE:], _AAD + kid.encode() + b"\0" + location
            )
        except InvalidTag:
            raise DecryptionError(
                where,
                f"authentication failed under key {kid!r}: the value was written for another "
                "location (copied) or has been changed",
                kid,
            ) from None
        return plain
