"""What a handler works with: its context and outbox, actions, the retention lease.

Guarantees: an action is called only with the arguments its signature takes (checked
against it first, no coercion); its result must be JSON within ``Config.signal_max_bytes``
or the caller gets the encoding error instead. Nothing here writes to etcd except the
retention lease's grant.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._core import codec as _codec
from .._core.errors import RequestTooLargeError, SerializationError
from .._core.kv import KeyValue
from .._core.schema import check_arguments
from .._core.signals import Signal
from .._transport import Transport
from .agent import AgentContext, actions_of, in_thread, is_async_callable

__all__ = [
    "ActionFailed",
    "RetentionLease",
    "SignalContext",
    "decoded",
    "done_by",
    "run_action",
]

MAX_EMITS = 32


class RetentionLease:
    """The lease done records live under: one per process, renewed by replacement.

    A lease of ``retention * 25 / 24`` seconds is granted and used for ``retention / 24``;
    then a new one is granted. Nobody keeps it alive: each done record lives between
    ``retention`` and ``retention * 25 / 24`` seconds (longer if a raft leader change
    extends the lease), and etcd drops it by itself.
    """

    def __init__(self, transport: Transport, retention: float) -> None:
        self._t = transport
        self._use = max(60, retention) / 24  # how long one lease takes new records
        self._ttl = math.ceil(max(60, retention) * 25 / 24)
        self._lease = 0
        self._until = 0.0
        self._lock = anyio.Lock()

    async def get(self) -> int:
        """The lease id to put a done record under."""
        if self._lease and time.monotonic() < self._until:
            return self._lease
        async with self._lock:
            if not self._lease or time.monotonic() >= self._until:
                asked = time.monotonic()  # the lease's time runs from about then, not later
                grant = await self._t.lease_grant(self._ttl)
                self._lease, self._until = grant.id, asked + self._use
        return self._lease


@dataclass(frozen=True, slots=True)
class SignalContext(AgentContext):
    """What a handler gets besides the signal: who it is, and its outbox.

    Attributes:
        signal: the signal being handled.
    """

    signal: Signal | None = None
    _outbox: list[tuple[Signal, bytes]] = field(default_factory=list)
    _make: Callable[..., tuple[Signal, bytes]] | None = None

    def send(self, agent_id: str, type: str, data: Any = None, **options: Any) -> str:
        """Emit a signal to ``agent_id``: it is sent if and only if this handling commits.

        Returns:
            The emitted signal's id (derived from the parent's id unless given, so a
            redelivered handler emits the same ids).

        Raises:
            InvalidIdError, SerializationError, RequestTooLargeError: bad input.
            ValueError: more than 32 emits from one handling.
        """
        assert self._make is not None and self.signal is not None
        if len(self._outbox) >= MAX_EMITS:
            raise ValueError(f"at most {MAX_EMITS} signals may be emitted per handling")
        if options.get("signal_id") is None:
            seed = f"{self.agent_id}/{self.signal.id}/{len(self._outbox)}".encode()
            options["signal_id"] = hashlib.sha256(seed).hexdigest()[:32]
        item = self._make(
            agent_id,
            type,
            data,
            source=f"agent/{self.agent_id}",
            parent=f"{self.agent_id}/{self.signal.id}",
            **options,
        )
        self._outbox.append(item)
        return item[0].id


async def run_action(agent: object, signal: Signal, max_bytes: int) -> Any:
    """Run the action a call names; its reply, or :class:`ActionFailed`."""
    data = signal.data if isinstance(signal.data, dict) else {}
    name, args = data.get("action"), data.get("args") or {}
    actions = actions_of(type(agent))
    if not isinstance(name, str) or name not in actions:
        raise ActionFailed("UnknownAction", f"the agent has no action {name!r}")
    try:
        kwargs = check_arguments(actions[name], args)
    except TypeError as exc:
        raise ActionFailed("TypeError", str(exc)) from None
    try:
        method = getattr(agent, name)
        if is_async_callable(method):
            result = await method(**kwargs)
        else:  # a plain action runs in a worker thread, never on the event loop
            result = await in_thread(functools.partial(method, **kwargs))
    except Exception as exc:
        raise ActionFailed(type(exc).__name__, str(exc)) from None
    try:
        _codec.encode(result, "reply", max_bytes)
    except (SerializationError, RequestTooLargeError) as exc:
        raise ActionFailed(type(exc).__name__, str(exc)) from None
    return {"result": result}


class ActionFailed(Exception):
    """An action raised, or could not be called: the error its caller gets."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name, self.message = type_name, message
        self.summary = f"{type_name}: {message}"


def decoded(value: bytes) -> object:
    """Decoded JSON, or ``None`` when ``value`` is not JSON (never raises)."""
    try:
        return _codec.decode(value)
    except (ValueError, RecursionError):
        return None


def done_by(kv: KeyValue) -> tuple[object, object]:
    """``(incarnation, inbox create revision)`` of a done record (``None``s if unreadable)."""
    d = decoded(kv.value)
    return (d.get("inc"), d.get("rev")) if isinstance(d, dict) else (None, None)
