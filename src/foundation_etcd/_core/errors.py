"""The one error tree of foundation_etcd.

Every error the library raises on purpose derives from :class:`FoundationEtcdError`.
gRPC errors are translated into this tree in the transport module and nowhere else::

    FoundationEtcdError
    ├── ConfigurationError (ValueError)      bad configuration, found at construction
    ├── InvalidIdError (ValueError)          an id or name outside the allowed alphabet
    ├── RequestTooLargeError (ValueError)    a value or request over etcd's 1.5 MiB limit
    ├── TooManyOperationsError (ValueError)  a transaction over etcd's 128 operations
    ├── EtcdError                            etcd answered with an error, or did not answer
    │   ├── EtcdUnavailableError             no endpoint reachable / no leader; not applied
    │   │   └── NoLeaderError                the member has no raft leader
    │   ├── AmbiguousResultError             a write was sent, its outcome is unknown
    │   ├── CompactedError                   the revision asked for was compacted away
    │   ├── LeaseNotFoundError               the lease does not exist (expired or revoked)
    │   ├── AuthError                        authentication failed or permission denied
    │   └── EtcdServerError                  any other error etcd reported
    │       ├── NoSpaceError                 etcd's space alarm is on: writes refused
    │       └── TooManyRequestsError         etcd is overloaded and shed the request
    ├── SessionError
    │   ├── SessionClosedError               the session was closed by its owner
    │   └── LeaseLostError                   the lease could no longer be proven alive
    ├── OwnershipLostError                   a leadership or lock ended while in use
    │   ├── LeadershipLostError              ... a leadership (stale token, lease lost)
    │   ├── LockLostError                    ... a lock
    │   └── IncarnationLostError             ... an agent incarnation (state write refused)
    ├── LockBusyError                        acquire_nowait found the lock held or queued
    ├── NoNodeFitsError                      no live node can host an agent (reasons per node)
    ├── QuotaError
    │   ├── QuotaExceededError               reserve_nowait found no room now
    │   └── InvalidReservationError (ValueError)  bad amounts, unknown resource, over limit
    ├── SerializationError (TypeError)       a payload that cannot be encoded as JSON
    ├── AgentExistsError                     an agent id is already registered and live
    ├── AgentNotFoundError (KeyError)        no such agent, or not registered by this process
    ├── NodeExistsError                      a node id is already announced by a live process
    └── NodeNotFoundError (KeyError)         no node with this id is announced

Each class says when it is raised and carries the context needed to act on it.
"""

from __future__ import annotations

__all__ = [
    "AgentExistsError",
    "AgentNotFoundError",
    "AmbiguousResultError",
    "AuthError",
    "CompactedError",
    "ConfigurationError",
    "EtcdError",
    "EtcdServerError",
    "EtcdUnavailableError",
    "FoundationEtcdError",
    "IncarnationLostError",
    "InvalidIdError",
    "InvalidReservationError",
    "LeadershipLostError",
    "LeaseLostError",
    "LeaseNotFoundError",
    "LockBusyError",
    "LockLostError",
    "NoLeaderError",
    "NoNodeFitsError",
    "NoSpaceError",
    "NodeExistsError",
    "NodeNotFoundError",
    "OwnershipLostError",
    "QuotaError",
    "QuotaExceededError",
    "RequestTooLargeError",
    "SerializationError",
    "SessionClosedError",
    "SessionError",
    "TooManyOperationsError",
    "TooManyRequestsError",
]


class FoundationEtcdError(Exception):
    """Base class of every error raised by foundation_etcd."""


class ConfigurationError(FoundationEtcdError, ValueError):
    """A configuration value is invalid; raised when the configuration is built.

    Attributes:
        field: the name of the offending setting.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidIdError(FoundationEtcdError, ValueError):
    """An id or name is empty, too long, or holds a character outside ``[A-Za-z0-9._:-]``.

    Raised before anything is sent to etcd.

    Attributes:
        kind: what the id names (``"agent id"``, ``"node id"``, ...).
        value: the rejected value.
    """

    def __init__(self, kind: str, value: object, reason: str) -> None:
        super().__init__(f"invalid {kind} {value!r}: {reason}")
        self.kind = kind
        self.value = value


class RequestTooLargeError(FoundationEtcdError, ValueError):
    """A value or a whole request is larger than etcd accepts (1.5 MiB by default).

    Raised before the request is sent, so nothing is half-applied.

    Attributes:
        size: the size in bytes of what was to be sent.
        limit: the limit in bytes.
    """

    def __init__(self, size: int, limit: int, what: str = "request", *, reason: str = "") -> None:
        if reason:  # refused by etcd itself (its --max-request-bytes is below ours)
            super().__init__(f"{what} refused by etcd: {reason}")
        else:
            super().__init__(f"{what} of {size} bytes exceeds etcd's limit of {limit} bytes")
        self.size = size
        self.limit = limit


class TooManyOperationsError(FoundationEtcdError, ValueError):
    """A transaction has more operations (or compares) than etcd accepts (128 by default).

    Raised before the transaction is sent.

    Attributes:
        count: the number of operations in the largest branch.
        limit: the limit.
    """

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"transaction with {count} operations exceeds etcd's limit of {limit}")
        self.count = count
        self.limit = limit


class EtcdError(FoundationEtcdError):
    """etcd answered a request with an error, or could not be reached.

    Attributes:
        code: the gRPC status code name (``"UNAVAILABLE"``...), or ``None``.
        details: the message etcd or gRPC gave.
    """

    def __init__(self, message: str, *, code: str | None = None, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class EtcdUnavailableError(EtcdError):
    """No etcd endpoint could serve the request, and it was not applied.

    Reads raising this may be retried freely. Writes raise it only when the request is known
    not to have reached etcd (connection refused before sending); otherwise they raise
    :class:`AmbiguousResultError`.
    """


class NoLeaderError(EtcdUnavailableError):
    """The etcd member has lost its raft leader; the request was not applied."""


class AmbiguousResultError(EtcdError):
    """A write was sent but no answer came back: it may or may not have been applied.

    Never resend such a write blindly. Make it idempotent through its compares, or re-read
    the keys it touches to learn its outcome.

    Attributes:
        operation: which request it was (``"put"``, ``"txn"``, ...).
    """

    def __init__(
        self, message: str, *, operation: str, code: str | None = None, details: str = ""
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.operation = operation


class CompactedError(EtcdError):
    """The requested revision has been compacted away.

    Attributes:
        compact_revision: the oldest revision still available, when etcd said it (else 0).
    """

    def __init__(self, message: str, *, compact_revision: int = 0, details: str = "") -> None:
        super().__init__(message, code="OUT_OF_RANGE", details=details)
        self.compact_revision = compact_revision


class LeaseNotFoundError(EtcdError):
    """The lease does not exist: it expired or was revoked.

    Attributes:
        lease_id: the lease asked for.
    """

    def __init__(self, lease_id: int, *, details: str = "") -> None:
        super().__init__(f"lease {lease_id:x} not found", code="NOT_FOUND", details=details)
        self.lease_id = lease_id


class AuthError(EtcdError):
    """Authentication failed, or the user lacks permission for the keys touched."""


class EtcdServerError(EtcdError):
    """etcd reported an error that has no more specific class here.

    etcd answered, so retrying the same request will not help until the cause is fixed;
    the message carries etcd's reason.
    """


class NoSpaceError(EtcdServerError):
    """etcd's space alarm is raised (``mvcc: database space exceeded``): writes are refused.

    The backend reached ``--quota-backend-bytes``. Reads, deletes and lease keepalives still
    work, so open sessions keep their leases; new leases and every put are refused until an
    operator compacts, defragments and disarms the alarm (see docs/operations.md).
    """


class TooManyRequestsError(EtcdServerError):
    """etcd shed the request because it is overloaded (``too many requests``).

    The request was not applied: etcd refuses it before proposing it when its applied
    index lags too far behind the committed one. Back off before sending more.
    """


class SessionError(FoundationEtcdError):
    """Base class of session errors."""


class SessionClosedError(SessionError):
    """The session was closed by its owner; nothing more can be bound to it."""


class LeaseLostError(SessionError):
    """The session's lease could no longer be proven alive, so work bound to it stopped.

    Raised in work that was bound to the lease (and cancelled), or when binding to a lease
    that is already lost. The session itself goes on with a new lease.

    Attributes:
        lease_id: the lost lease.
    """

    def __init__(self, lease_id: int, reason: str = "") -> None:
        text = f"lease {lease_id:x} lost"
        super().__init__(f"{text}: {reason}" if reason else text)
        self.lease_id = lease_id
        self.reason = reason


class AgentExistsError(FoundationEtcdError):
    """An agent id is already registered and live.

    Attributes:
        agent_id: the id asked for.
        node_id: the node that holds it, when known.
        lease_id: the lease that holds it.
    """

    def __init__(self, agent_id: str, *, node_id: str | None, lease_id: int) -> None:
        holder = f"node {node_id!r}" if node_id else "another holder"
        super().__init__(f"agent {agent_id!r} is already live on {holder} (lease {lease_id:x})")
        self.agent_id = agent_id
        self.node_id = node_id
        self.lease_id = lease_id


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
        self.node_id = node_id
        self.lease_id = lease_id


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
        self.name = name
        self.key = key
        self.token = token
        self.reason = reason


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
        self.name = name
        self.holder_key = holder_key
        self.holder_token = holder_token


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
        self.pool = pool
        self.requested = requested
        self.used = used
        self.limit = limit


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
        self.agent_id = agent_id
        self.reasons = reasons


class IncarnationLostError(OwnershipLostError):
    """An agent incarnation is no longer the live one; its state write was refused."""
