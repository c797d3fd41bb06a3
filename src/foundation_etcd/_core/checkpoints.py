"""Agent state checkpoints (``agents/state/{id}``): stamped, encoded, optionally sealed.

A checkpoint is the JSON ``{"incarnation", "state", "at"}``; with a keyring it is sealed
(``sealing.py``) for its own etcd key, so a checkpoint copied under another agent's key does
not decrypt. Pure, no I/O.
"""

from __future__ import annotations

import time
from typing import Any

from . import codec as _codec
from .errors import DecryptionError, RequestTooLargeError
from .kv import KeyValue
from .records import MAX_STATE_BYTES
from .sealing import Keyring, is_sealed

__all__ = ["decode_state", "encode_state"]


def encode_state(
    incarnation: int, state: Any, keyring: Keyring | None = None, key: bytes = b""
) -> bytes:
    """An agent's checkpoint, stamped with the incarnation that wrote it.

    With ``keyring``, the checkpoint is sealed for its etcd ``key`` (``sealing.py``).

    Raises:
        SerializationError: ``state`` is not JSON.
        RequestTooLargeError: over :data:`MAX_STATE_BYTES`.
    """
    value = _codec.encode(
        {"incarnation": incarnation, "state": state, "at": time.time()},
        "agent state",
        MAX_STATE_BYTES,
    )
    if keyring is None:
        return value
    sealed = keyring.seal(value, key)
    if len(sealed) > MAX_STATE_BYTES:
        raise RequestTooLargeError(len(sealed), MAX_STATE_BYTES, "agent state (encrypted)")
    return sealed


def decode_state(kv: KeyValue | None, keyring: Keyring | None = None) -> Any:
    """The state in a checkpoint, ``None`` when there is none.

    Raises:
        DecryptionError: the checkpoint is sealed and ``keyring`` cannot open it (or
            there is none).
    """
    if kv is None:
        return None
    value = kv.value
    if is_sealed(value):
        if keyring is None:
            raise DecryptionError(
                kv.key.decode(errors="replace"),
                "it is encrypted and this process has no encryption keys (Config.encryption)",
            )
        value = keyring.open(value, kv.key)
    return _codec.decode(value).get("state")
