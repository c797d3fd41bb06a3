"""Signals: the envelope, its encoding and limits, and topic patterns. Pure, no I/O.

A signal is CloudEvents-shaped (:meth:`Signal.to_cloudevent` gives the CloudEvents 1.0 JSON
form): ``id`` (unique per target agent), ``type``, ``source``, ``subject`` (the target
agent), ``time``, a JSON ``data`` payload, the delivery ``attempt`` and optional trace
context (W3C ``traceparent``/``tracestate``). The library adds ``deadline`` (after which it
is dead-lettered, not delivered), ``parent`` (the signal whose handler emitted it),
``topic`` (for a broadcast) and ``reply`` (a call waiting for an answer).

Guarantees:
    * :func:`encode_signal` checks everything before anything is sent: ids and types are
      validated, the payload must be JSON, and the encoded signal must fit the configured
      limit (:class:`RequestTooLargeError` names the limit).
    * :func:`decode_signal` never raises on bad bytes: it returns ``None``, and the
      delivering node moves such a value to dead letters as ``undecodable``.
    * Topics are dot-separated segments of the id alphabet; in a pattern ``*`` matches one
      segment and ``**`` any number (zero included). :func:`topic_matches` is pure.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import codec as _codec
from .errors import DecryptionError, InvalidIdError, SerializationError
from .keys import validate_id
from .sealing import Keyring

__all__ = [
    "MAX_PATTERNS",
    "Signal",
    "decode_signal",
    "encode_signal",
    "new_signal_id",
    "signal_location",
    "signed_bytes",
    "topic_matches",
    "validate_pattern",
    "validate_topic",
    "validate_type",
]

MAX_TYPE_LENGTH = 256
MAX_TOPIC_LENGTH = 256
MAX_PATTERNS = 64
_TYPE_RE = re.compile(r"[A-Za-z0-9._:/-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_:-]+")
_TRACE_KEYS = ("traceparent", "tracestate")


def new_signal_id() -> str:
    """A fresh signal id (32 hex digits)."""
    return uuid.uuid4().hex


def validate_type(value: object) -> str:
    """Check a signal type (``[A-Za-z0-9._:/-]``, 1-256 characters) and return it.

    Raises:
        InvalidIdError: anything else.
    """
    if not isinstance(value, str) or not value:
        raise InvalidIdError("signal type", value, "must be a non-empty str")
    if len(value) > MAX_TYPE_LENGTH or _TYPE_RE.fullmatch(value) is None:
        raise InvalidIdError(
            "signal type", value, f"1-{MAX_TYPE_LENGTH} characters of A-Z a-z 0-9 . _ : / -"
        )
    return value


def _segments(value: object, kind: str, wildcards: bool) -> list[str]:
    if not isinstance(value, str) or not value:
        raise InvalidIdError(kind, value, "must be a non-empty str")
    if len(value) > MAX_TOPIC_LENGTH:
        raise InvalidIdError(kind, value, f"longer than {MAX_TOPIC_LENGTH} characters")
    parts = value.split(".")
    for part in parts:
        if wildcards and part in ("*", "**"):
            continue
        if _SEGMENT_RE.fullmatch(part) is None:
            why = "empty segment" if not part else f"bad segment {part!r}"
            allowed = "A-Z a-z 0-9 _ : -" + (", or * / **" if wildcards else "")
            raise InvalidIdError(kind, value, f"{why}; segments are {allowed}, split by '.'")
    return parts


def validate_topic(value: object) -> str:
    """Check a topic (dot-separated segments of ``[A-Za-z0-9_:-]``) and return it.

    Raises:
        InvalidIdError: an empty segment, a wildcard, another character, over 256.
    """
    _segments(value, "topic", wildcards=False)
    assert isinstance(value, str)
    return value


def validate_pattern(value: object) -> str:
    """Check a subscription pattern (a topic whose segments may be ``*`` or ``**``).

    Raises:
        InvalidIdError: as :func:`validate_topic`, wildcards allowed.
    """
    _segments(value, "topic pattern", wildcards=True)
    assert isinstance(value, str)
    return value


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (``*`` one segment, ``**`` any number)."""
    pat, top = pattern.split("."), topic.split(".")
    # positions in the pattern reachable after consuming a prefix of the topic
    states = {0}
    for seg in top:
        nxt: set[int] = set()
        for i in _closure(states, pat):
            if i < len(pat) and (pat[i] == "**"):
                nxt.add(i)  # ** swallows this segment and may go on
            elif i < len(pat) and (pat[i] == "*" or pat[i] == seg):
                nxt.add(i + 1)
        if not nxt:
            return False
        states = nxt
    return len(pat) in _closure(states, pat)


def _closure(states: set[int], pat: list[str]) -> set[int]:
    """Add the positions after any ``**`` that may match nothing."""
    out = set(states)
    stack = list(states)
    while stack:
        i = stack.pop()
        if i < len(pat) and pat[i] == "**" and i + 1 not in out:
            out.add(i + 1)
            stack.append(i + 1)
    return out


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal, as its handler receives it.

    Attributes:
        id: unique per target agent; with ``attempt``, the idempotency key for effects
            outside etcd (a handler's HTTP call should pass it on).
        type: what happened or what is asked (``[A-Za-z0-9._:/-]``).
        source: who sent it (a node id, or ``agent/{id}`` for a handler's emit).
        subject: the target agent's id.
        time: when it was sent (seconds since the epoch, the sender's clock).
        data: the JSON payload.
        attempt: 1 for the first delivery, higher after a failure or a crash.
        trace: W3C trace context (``traceparent``, ``tracestate``), if any.
        deadline: seconds since the epoch after which it is not delivered (dead letter).
        parent: ``{agent}/{signal}`` of the signal whose handling emitted it.
        topic: the topic it was published on, for a broadcast.
        reply: whether a caller waits for a reply (``cluster.call``).
        revision: the etcd revision at which it entered the inbox (0 before).
        last_error: why the previous attempt failed, if it did.
        signer: the id of the Ed25519 key that signed it (``None``: unsigned); a handler
            only ever sees a signature the tenant trusts and that verified.
        sealed: the payload as stored when it is encrypted (base64; ``data`` is the
            plaintext); a re-encoded signal (a retry, a dead letter) keeps it.
        signature: the base64 signature by ``signer``, over :func:`signed_bytes`.
    """

    id: str
    type: str
    source: str
    subject: str
    data: Any = None
    time: float = field(default_factory=time.time)
    attempt: int = 1
    trace: Mapping[str, str] | None = None
    deadline: float | None = None
    parent: str | None = None
    topic: str | None = None
    reply: bool = False
    revision: int = 0
    last_error: str | None = None
    signer: str | None = None
    sealed: str | None = field(default=None, repr=False, compare=False)
    signature: str | None = field(default=None, repr=False, compare=False)

    def to_cloudevent(self) -> dict[str, Any]:
        """The signal as a CloudEvents 1.0 JSON object (extensions in lower case)."""
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": self.data,
            "attempt": self.attempt,
        }
        for key, value in (self.trace or {}).items():
            event[key] = value
        if self.deadline is not None:
            event["deadline"] = self.deadline
        if self.parent is not None:
            event["parent"] = self.parent
        if self.topic is not None:
            event["topic"] = self.topic
        if self.signer is not None:
            event["signer"] = self.signer
        return event

    def with_attempt(self, attempt: int, revision: int, last_error: str | None) -> Signal:
        """The same signal at another attempt (no I/O)."""
        return replace(self, attempt=attempt, revision=revision, last_error=last_error)


def _check_trace(trace: object) -> dict[str, str] | None:
    if trace is None:
        return None
    if not isinstance(trace, Mapping):
        raise SerializationError("trace", "must be a mapping of traceparent/tracestate")
    out: dict[str, str] = {}
    for key, value in trace.items():
        if key not in _TRACE_KEYS or not isinstance(value, str) or len(value) > 512:
            raise SerializationError(
                "trace", f"only {', '.join(_TRACE_KEYS)} as str of at most 512 characters"
            )
        out[key] = value
    return out


def signal_location(context: bytes, subject: str, signal_id: str) -> bytes:
    """Where a signal's payload is sealed for: its tenant prefix, agent and id.

    Not its inbox key: the same sealed payload moves to dead letters and back.
    """
    return context + f"signal/{subject}/{signal_id}".encode()


def signed_bytes(signal: Signal, context: bytes) -> bytes:
    """What a signature covers: the tenant prefix and every field the sender set.

    The delivery bookkeeping (attempt, failures, backoff, last error) is not covered: the
    delivering node rewrites it. The plaintext payload is covered, so re-encrypting under
    another key keeps the signature valid; the subject and id are, so a signal copied to
    another agent or renamed does not verify.
    """
    body = {
        "tenant": context.decode(),
        "id": signal.id,
        "type": signal.type,
        "source": signal.source,
        "subject": signal.subject,
        "time": signal.time,
        "data": signal.data,
        "trace": dict(signal.trace) if signal.trace else None,
        "deadline": signal.deadline,
        "parent": signal.parent,
        "topic": signal.topic,
        "reply": signal.reply,
        "signer": signal.signer,
    }
    return b"foundation-etcd signal v1\n" + _codec.encode(body, "signal", 2**22)


def encode_signal(
    signal: Signal,
    limit: int,
    *,
    failures: int = 0,
    not_before: float = 0.0,
    keyring: Keyring | None = None,
    context: bytes = b"",
) -> bytes:
    """Encode a signal for its inbox, validating it first (nothing is sent on error).

    Args:
        signal: the signal.
        limit: the largest encoding allowed (``Config.signal_max_bytes``).
        failures: failed deliveries so far (the delivering node rewrites it).
        not_before: do not deliver before this time (backoff after a failure).
        keyring: seal the payload under its primary key, bound to
            :func:`signal_location` (a signal whose ``sealed`` is set keeps it).
        context: the tenant prefix (``Keyspace.prefix``), for the location.

    Raises:
        InvalidIdError: a bad id, type, subject or topic.
        SerializationError: the payload or trace context is not JSON / not allowed.
        RequestTooLargeError: over ``limit``.
    """
    validate_id(signal.id, "signal id")
    validate_id(signal.subject, "agent id")
    validate_type(signal.type)
    if signal.topic is not None:
        validate_topic(signal.topic)
    if not isinstance(signal.source, str) or len(signal.source) > 300:
        raise InvalidIdError("signal source", signal.source, "a str of at most 300 characters")
    value: dict[str, Any] = {
        "id": signal.id,
        "type": signal.type,
        "source": signal.source,
        "subject": signal.subject,
        "time": signal.time,
    }
    if signal.sealed is not None:
        value["sealed"] = signal.sealed
    elif keyring is not None:
        plain = _codec.encode(signal.data, "signal", limit)
        value["sealed"] = keyring.seal_text(
            plain, signal_location(context, signal.subject, signal.id)
        )
    else:
        value["data"] = signal.data
    if signal.signature is not None:
        value["sig"] = {"key": signal.signer, "value": signal.signature}
    trace = _check_trace(signal.trace)
    if trace:
        value["trace"] = trace
    for name in ("deadline", "parent", "topic", "last_error"):
        v = getattr(signal, name)
        if v is not None:
            value[name] = v
    if signal.reply:
        value["reply"] = True
    if failures:
        value["failures"] = failures
    if not_before:
        value["not_before"] = not_before
    return _codec.encode(value, "signal", limit)


@dataclass(frozen=True, slots=True)
class Stored:
    """A decoded inbox value: the signal and its delivery bookkeeping."""

    signal: Signal
    failures: int = 0
    not_before: float = 0.0
    error: str | None = None  # why the payload could not be read (then ``data`` is None)


def _unseal(d: dict[str, Any], keyring: Keyring | None, context: bytes) -> tuple[Any, str | None]:
    """The sealed payload of a decoded value, and why it is unreadable (``None``: readable)."""
    if keyring is None:
        return None, "the payload is encrypted and this process has no encryption keys"
    where = signal_location(context, str(d["subject"]), str(d["id"]))
    try:
        return _codec.decode(keyring.open_text(d["sealed"], where)), None
    except DecryptionError as exc:
        return None, str(exc)
    except ValueError as exc:
        return None, f"the sealed payload is not JSON: {exc}"


def decode_signal(
    value: bytes, revision: int = 0, *, keyring: Keyring | None = None, context: bytes = b""
) -> Stored | None:
    """Decode an inbox value; ``None`` when the library would not have written it.

    An encrypted payload is opened with ``keyring`` (bound to the signal's location under
    ``context``); when it cannot be, the result's ``error`` says why and ``data`` is None.
    """
    try:
        d = _codec.decode(value)
        if not isinstance(d, dict):
            return None
        trace = d.get("trace")
        sig = d.get("sig")
        if sig is not None and not (
            isinstance(sig, dict) and isinstance(sig.get("key"), str) and "value" in sig
        ):
            return None
        data, error = (d.get("data"), None) if "sealed" not in d else _unseal(d, keyring, context)
        signal = Signal(
            id=validate_id(d["id"], "signal id"),
            type=validate_type(d["type"]),
            source=str(d.get("source", "")),
            subject=validate_id(d["subject"], "agent id"),
            data=data,
            time=float(d.get("time", 0.0)),
            trace=_check_trace(trace) if trace is not None else None,
            deadline=None if d.get("deadline") is None else float(d["deadline"]),
            parent=None if d.get("parent") is None else str(d["parent"]),
            topic=None if d.get("topic") is None else str(d["topic"]),
            reply=bool(d.get("reply", False)),
            revision=revision,
            last_error=None if d.get("last_error") is None else str(d["last_error"]),
            signer=None if sig is None else sig["key"],
            sealed=None if d.get("sealed") is None else str(d["sealed"]),
            signature=None if sig is None else str(sig["value"]),
        )
        failures = int(d.get("failures", 0))
        return Stored(signal, max(0, failures), float(d.get("not_before", 0.0)), error)
    except (ValueError, TypeError, KeyError, RecursionError, InvalidIdError, SerializationError):
        return None


def patterns_of(value: object) -> tuple[str, ...]:
    """Validated, distinct subscription patterns (at most :data:`MAX_PATTERNS`).

    Raises:
        InvalidIdError: a bad pattern, one str instead of a list, or too many.
    """
    if isinstance(value, str):
        raise InvalidIdError("subscribe", value, "must be a list of patterns, not one str")
    items: Iterable[object] = value if isinstance(value, Iterable) else ()
    out = tuple(dict.fromkeys(validate_pattern(p) for p in items))
    if len(out) > MAX_PATTERNS:
        raise InvalidIdError("subscribe", value, f"at most {MAX_PATTERNS} patterns")
    return out
