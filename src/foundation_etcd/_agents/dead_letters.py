"""Inboxes and dead letters: reading what waits or was given up on, and redriving it.

A dead letter (``signals/dead/{agent}/{id}``, no lease) holds the signal, the reason
(``expired``, ``undecodable``, ``N attempts failed; last: ...``, ``NoHandler``), when and
after how many attempts. :func:`redrive` moves it back to the end of the inbox in one
transaction that also deletes it, admitted like a send (the inbox bound holds).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .._core import codec as _codec
from .._core import metrics
from .._core.errors import (
    AgentNotFoundError,
    EtcdError,
    InboxFullError,
    RequestTooLargeError,
    SerializationError,
    SignalError,
)
from .._core.keys import Keyspace, prefix_end
from .._core.kv import Compare, KeyValue, Op
from .._core.sealing import Keyring
from .._core.signals import Signal, decode_signal, encode_signal
from .signals import SEND_ATTEMPTS, SendResult, Signals, admission, probe

__all__ = ["DeadLetter", "dead_letter_of", "dead_letters", "encode_letter", "inbox", "redrive"]

log = logging.getLogger("foundation_etcd.signals")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A signal given up on: the agent, the signal, why, when, after how many attempts."""

    agent_id: str
    signal: Signal | None
    signal_id: str
    reason: str
    at: float
    attempts: int
    revision: int


def encode_letter(value: bytes, signal: Signal | None, reason: str, attempts: int) -> bytes:
    """A dead letter's value: the signal, the reason, when, after how many attempts.

    The signal is kept as stored (a sealed payload stays sealed, a signature stays); one
    that could not be decoded is kept as the start of its raw ``value``.
    """
    letter = {
        "signal": None if signal is None else _codec.decode(encode_signal(signal, 2**21)),
        "raw": None if signal is not None else value[:4096].decode(errors="replace"),
        "reason": reason,
        "at": time.time(),
        "attempts": attempts,
    }
    try:
        return _codec.encode(letter, "dead letter", 2**21)
    except (SerializationError, RequestTooLargeError, EtcdError):
        return _codec.encode({"reason": reason, "at": time.time()}, "dead letter", 4096)


def dead_letter_of(ks: Keyspace, kv: KeyValue, keyring: Keyring | None = None) -> DeadLetter:
    """Decode a dead letter (never raises: an unreadable one is shown as such).

    A sealed payload is opened with ``keyring`` (its ``data`` is None when it cannot be).
    """
    rest = kv.key[len(ks.dead_letters_prefix()) :].decode(errors="replace")
    agent_id, _, signal_id = rest.partition("/")
    try:
        d = _codec.decode(kv.value)
        raw = _codec.encode(d.get("signal"), "signal", 2**21)
        stored = decode_signal(raw, keyring=keyring, context=ks.prefix)
        return DeadLetter(
            agent_id,
            None if stored is None else stored.signal,
            signal_id,
            str(d.get("reason", "")),
            float(d.get("at", 0.0)),
            int(d.get("attempts", 0)),
            kv.mod_revision,
        )
    except (ValueError, TypeError, AttributeError, SerializationError):
        return DeadLetter(
            agent_id, None, signal_id, "unreadable dead letter", 0.0, 0, kv.mod_revision
        )


async def inbox(s: Signals, agent_id: str, *, limit: int = 1000) -> list[Signal]:
    """The signals waiting for ``agent_id``, oldest first (a linearizable read)."""
    prefix = s.keyspace.inbox_prefix(agent_id)
    res = await s.transport.range(
        Op.get(prefix, range_end=prefix_end(prefix), sort_by_create=True, limit=limit)
    )
    out = []
    for kv in res.kvs:
        stored = decode_signal(
            kv.value, kv.create_revision, keyring=s.config.keyring, context=s.keyspace.prefix
        )
        if stored is not None:
            out.append(stored.signal.with_attempt(stored.failures + 1, kv.create_revision, None))
    if len(out) < len(res.kvs):  # said, not hidden: the deliverer dead-letters them
        log.warning(
            "inbox of %r: %d of %d entries are no signal (left out; delivery dead-letters them)",
            agent_id,
            len(res.kvs) - len(out),
            len(res.kvs),
        )
    return out


async def dead_letters(s: Signals, agent_id: str | None = None) -> list[DeadLetter]:
    """The dead letters of one agent or of all (a linearizable read)."""
    prefix = s.keyspace.dead_letters_prefix(agent_id)
    res = await s.transport.get_prefix(prefix)
    return [dead_letter_of(s.keyspace, kv, s.config.keyring) for kv in res.kvs]


async def redrive(s: Signals, agent_id: str, signal_id: str) -> SendResult:
    """Put a dead letter back at the end of its agent's inbox, attempts reset.

    Raises:
        KeyError: no such dead letter.
        AgentNotFoundError: the agent is no longer spawned.
        InboxFullError: no room (the dead letter stays).
        SignalError: the dead letter holds no signal that can be read (another client's).
    """
    ks = s.keyspace
    dead_key = ks.dead_letter(agent_id, signal_id)
    for _ in range(SEND_ATTEMPTS):
        dead = await s.transport.get(dead_key)
        if dead is None:
            raise KeyError(f"no dead letter {signal_id!r} for agent {agent_id!r}")
        letter = dead_letter_of(ks, dead)
        if letter.signal is None:
            raise SignalError(
                f"dead letter {signal_id!r} of {agent_id!r} holds no readable signal: nothing "
                f"to redrive (delete it with etcdctl: {dead.key.decode(errors='replace')})"
            )
        value = encode_signal(letter.signal, s.config.signal_max_bytes)
        bound, bump = admission(ks, agent_id, s.window(agent_id), s.config.signal_inbox_limit)
        res = await s.transport.txn(
            [
                Compare.create_revision(ks.agent_spec(agent_id)) > 0,
                Compare.mod_revision(dead_key) == dead.mod_revision,
                *bound,
            ],
            [Op.put(ks.inbox(agent_id, signal_id), value), *bump, Op.delete(dead_key)],
            probe(ks, agent_id, signal_id),
        )
        s.learn(agent_id, res, 1)
        if res.succeeded:
            metrics.signal_sent(ks.tenant)  # newly in an inbox, as a send puts it
            return SendResult(signal_id, res.revision)
        if res.range(0).first is None:
            raise AgentNotFoundError(agent_id, f"agent {agent_id!r} is not spawned")
        sent, acked = s.window(agent_id)
        if sent - acked >= s.config.signal_inbox_limit:
            raise InboxFullError(agent_id, waiting=sent - acked, limit=s.config.signal_inbox_limit)
    sent, acked = s.window(agent_id)
    limit = s.config.signal_inbox_limit
    raise InboxFullError(agent_id, waiting=max(sent - acked, limit), limit=limit)
