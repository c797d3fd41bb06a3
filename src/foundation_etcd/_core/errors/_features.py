"""The errors of the coordination and agent features (see the tree in the package)."""

from __future__ import annotations

from typing import Any, Self

from ._base import FoundationEtcdError

__all__ = [
    "ActionError",
    "AgentExistsError",
    "AgentNotFoundError",
    "CallTimeoutError",
    "InboxFullError",
    "IncarnationLostError",
    "InvalidReservationError",
    "LeadershipLostError",
    "LockBusyError",
    "LockLostError",
    "NoNodeFitsError",
    "NodeExistsError",
    "NodeNotFoundError",
    "OwnershipLostError",
    "QuotaError",
    "QuotaExceededError",
    "RegistrationsFailedError",
    "SerializationError",
    "SignalError",
]


class AgentExistsError(FoundationEtcdError):
    """An agent id is already registered and live, or already spawned.

    Attributes:
        agent_id: the id asked for.
        node_id: the node that holds it, when known.
        lease_id: the lease that holds it (0 for a spawned agent's spec, which has none).
    """

    def __init__(
        self, agent_id: str, *, node_id: str | None, lease_id: int, message: str = ""
    ) -> None:
        holder = f"node {node_id!r}" if node_id else "another holder"
        super().__init__(
            message or f"agent {agent_id!r} is already live on {holder} (lease {lease_id:x})"
        )
        self.agent_id, self.node_id, self.lease_id = agent_id, node_id, lease_id


class RegistrationsFailedError(ExceptionGroup[Exception], FoundationEtcdError):
    """Some agents of one ``Registry.register_many`` call were not registered; the rest are.

    An exception group (``except* AgentExistsError`` picks those out) with one exception per
    agent not registered; agents sent in one request share its exception when the whole
    request failed.

    Attributes:
        failed: each agent id not registered, with its error.
        registered: the registrations that were made, by agent id.
    """

    failed: dict[str, Exception]
    registered: dict[str, Any]

    def __new__(cls, failed: dict[str, Exception], registered: dict[str, Any]) -> Self:
        self = super().__new__(cls, _not_registered(failed, registered), list(failed.values()))
        self.failed, self.registered = failed, registered
        return self

    def __init__(self, failed: dict[str, Exception], registered: dict[str, Any]) -> None:
        super().__init__(_not_registered(failed, registered), list(failed.values()))


def _not_registered(failed: dict[str, Exception], registered: dict[str, Any]) -> str:
    ids = ", ".join(repr(a) for a in list(failed)[:5]) + (", ..." if len(failed) > 5 else "")
    return f"{len(failed)} of {len(failed) + len(registered)} agents not registered ({ids})"


class AgentNotFoundError(FoundationEtcdError, KeyError):
    """No live agent has this id, or this process does not hold its registration.

    Attributes:
        agent_id: the id asked for.
    """

    def __init__(self, agent_id: str, message: str = "") -> None:
        super().__init__(message or f"agent {agent_id!r} is not registered")
        self.agent_id = agent_id

    def __str__(self) -> str:
        return str(self.args[0])


class NodeExistsError(FoundationEtcdError):
    """A node id is already announced by another live process.

    Attributes:
        node_id: the id asked for.
        lease_id: the lease that holds it.
    """

    def __init__(self, node_id: str, *, lease_id: int) -> None:
        super().__init__(f"node {node_id!r} is already announced (lease {lease_id:x})")
        self.node_id, self.lease_id = node_id, lease_id


class NodeNotFoundError(FoundationEtcdError, KeyError):
    """No node with this id is announced.

    Attributes:
        node_id: the id asked for.
    """

    def __init__(self, node_id: str, message: str = "") -> None:
        super().__init__(message or f"node {node_id!r} is not announced")
        self.node_id = node_id

    def __str__(self) -> str:
        return str(self.args[0])


class SerializationError(FoundationEtcdError, TypeError):
    """A payload (metadata, state, arguments) cannot be encoded as JSON.

    Raised before anything is written.

    Attributes:
        what: which payload it was.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} is not JSON-serializable: {reason}")
        self.what = what


class OwnershipLostError(FoundationEtcdError):
    """A leadership or lock ended while it was in use; the write that found out was refused.

    Raised by a guarded write whose fencing compare failed (etcd refused it: nothing was
    written), and at the exit of a leadership or lock block whose body was cancelled
    because the ownership ended (session lost, own key deleted).

    Attributes:
        name: the election or lock name.
        key: the owner's key.
        token: the fencing token that is no longer current.
        reason: what ended it.
    """

    def __init__(self, name: str, *, key: bytes, token: int, reason: str) -> None:
        super().__init__(f"{name!r}: ownership with token {token} ended: {reason}")
        self.name, self.key, self.token, self.reason = name, key, token, reason


class LeadershipLostError(OwnershipLostError):
    """This process is no longer the leader of an election."""


class LockLostError(OwnershipLostError):
    """This process no longer holds a lock."""


class LockBusyError(FoundationEtcdError):
    """``acquire_nowait`` found the lock held or waited for; nothing was written.

    Attributes:
        name: the lock name.
        holder_key: the key of the current holder (or first waiter), if known.
        holder_token: its create revision, if known.
    """

    def __init__(self, name: str, *, holder_key: bytes | None, holder_token: int) -> None:
        super().__init__(f"lock {name!r} is busy (held with token {holder_token})")
        self.name, self.holder_key, self.holder_token = name, holder_key, holder_token


class QuotaError(FoundationEtcdError):
    """Base class of quota errors."""


class QuotaExceededError(QuotaError):
    """``reserve_nowait`` could not be admitted now; its queued keys were withdrawn.

    Attributes:
        pool: the pool without room.
        requested: the amount asked for.
        used: the amount held in that pool when refused.
        limit: the pool's limit.
    """

    def __init__(self, pool: str, *, requested: int, used: int, limit: int) -> None:
        super().__init__(
            f"quota {pool!r}: {requested} requested, {used} of {limit} in use or queued ahead"
        )
        self.pool, self.requested, self.used, self.limit = pool, requested, used, limit


class InvalidReservationError(QuotaError, ValueError):
    """A reservation or limit that can never be valid; raised before anything is written.

    Zero, negative or non-integer amounts, a resource with no limit, or an amount larger
    than the limit (never admissible).
    """


class NoNodeFitsError(FoundationEtcdError):
    """No live node can host an agent.

    Attributes:
        agent_id: the agent.
        reasons: node id to why it does not fit (empty when no node is live).
    """

    def __init__(self, agent_id: str, reasons: dict[str, str]) -> None:
        detail = "; ".join(f"{n}: {r}" for n, r in sorted(reasons.items())) or "no live nodes"
        super().__init__(f"no node fits agent {agent_id!r} ({detail})")
        self.agent_id, self.reasons = agent_id, reasons


class IncarnationLostError(OwnershipLostError):
    """An agent incarnation is no longer the live one; its state write was refused."""


class DecryptionError(FoundationEtcdError):
    """A stored value is encrypted and does not decrypt where it was read.

    Raised (or, for a signal, its reason in dead letters) when the value names a key id
    that is not configured, was copied from another etcd key (its authenticated data binds
    it to where it was written), or was changed. Attributes: ``location`` (the etcd key
    or signal it was read at) and ``key_id`` (the id it names, ``None`` when unreadable).
    """

    def __init__(self, location: str, reason: str, key_id: str | None = None) -> None:
        super().__init__(f"value at {location} does not decrypt: {reason}")
        self.location, self.key_id = location, key_id


class SignalError(FoundationEtcdError):
    """Base of the errors of signals and actions."""


class InboxFullError(SignalError):
    """``send`` found the agent's inbox at ``Config.signal_inbox_limit``; nothing was written.

    Decided in the send's own transaction. Attributes: ``agent_id``, ``waiting`` (signals
    in the inbox then), ``limit``.
    """

    def __init__(self, agent_id: str, *, waiting: int, limit: int) -> None:
        super().__init__(f"inbox of agent {agent_id!r} is full ({waiting} waiting, limit {limit})")
        self.agent_id, self.waiting, self.limit = agent_id, waiting, limit


class ActionError(SignalError):
    """An action raised on the node that hosts its agent; its effect on state was not kept.

    Attributes: ``agent_id``, ``action``, ``error_type`` (the exception's class name) and
    ``error_message``.
    """

    def __init__(self, agent_id: str, action: str, error_type: str, error_message: str) -> None:
        super().__init__(f"{agent_id}.{action} raised {error_type}: {error_message}")
        self.agent_id, self.action = agent_id, action
        self.error_type, self.error_message = error_type, error_message


class CallTimeoutError(SignalError, TimeoutError):
    """The caller of ``cluster.call`` stopped waiting: the action **may still run**.

    The call's signal is durable: it will run once on the agent, and its reply is kept
    for ``Config.signal_retention``. ``cluster.call`` again with the same ``call_id``
    waits for that one outcome instead of running it twice. Attributes: ``agent_id``,
    ``action``, ``call_id``.
    """

    def __init__(self, agent_id: str, action: str, call_id: str) -> None:
        super().__init__(
            f"call {call_id!r} of {agent_id}.{action} timed out; the action may still run "
            f"(call again with call_id={call_id!r} to wait for its one outcome)"
        )
        self.agent_id, self.action, self.call_id = agent_id, action, call_id
