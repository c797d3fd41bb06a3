"""The one error tree of foundation_etcd.

Every error the library raises on purpose derives from :class:`FoundationEtcdError`.
gRPC errors are translated into this tree in the transport module and nowhere else::

    FoundationEtcdError
    ├── ConfigurationError (ValueError)      bad configuration, found at construction
    ├── InvalidIdError (ValueError)          an id or name outside the allowed alphabet
    ├── RequestTooLargeError (ValueError)    a value or request over etcd's 1.5 MiB limit
    ├── TooManyOperationsError (ValueError)  a transaction over etcd's 128 operations
    ├── AsyncioRequiredError (RuntimeError)  the async API called outside asyncio (trio)
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
    ├── DecryptionError                      an encrypted value that does not decrypt here
    ├── AgentExistsError                     an agent id is already registered and live
    ├── RegistrationsFailedError (ExceptionGroup)  some of a register_many were not registered
    ├── AgentNotFoundError (KeyError)        no such agent, or not registered by this process
    ├── NodeExistsError                      a node id is already announced by a live process
    ├── NodeNotFoundError (KeyError)         no node with this id is announced
    ├── SignalError
    │   ├── InboxFullError                   the agent's inbox is at its limit: nothing written
    │   ├── ActionError                      an action raised: its type name and message
    │   └── CallTimeoutError (TimeoutError)  a call's caller stopped waiting: it may still run
    ├── ConflictError
    │   └── TransactionConflictError         transact/update used its retry budget: not written
    └── BarrierError                         a barrier used against its protocol

Each class says when it is raised and carries the context needed to act on it.
"""

from __future__ import annotations

from ._base import (
    AmbiguousResultError,
    AsyncioRequiredError,
    AuthError,
    CompactedError,
    ConfigurationError,
    EtcdError,
    EtcdServerError,
    EtcdUnavailableError,
    FoundationEtcdError,
    InvalidIdError,
    LeaseLostError,
    LeaseNotFoundError,
    NoLeaderError,
    NoSpaceError,
    RequestTooLargeError,
    SessionClosedError,
    SessionError,
    TooManyOperationsError,
    TooManyRequestsError,
)
from ._consensus import BarrierError, ConflictError, TransactionConflictError
from ._features import (
    ActionError,
    AgentExistsError,
    AgentNotFoundError,
    CallTimeoutError,
    DecryptionError,
    InboxFullError,
    IncarnationLostError,
    InvalidReservationError,
    LeadershipLostError,
    LockBusyError,
    LockLostError,
    NodeExistsError,
    NodeNotFoundError,
    NoNodeFitsError,
    OwnershipLostError,
    QuotaError,
    QuotaExceededError,
    RegistrationsFailedError,
    SerializationError,
    SignalError,
)

__all__ = [
    "ActionError",
    "AgentExistsError",
    "AgentNotFoundError",
    "AmbiguousResultError",
    "AsyncioRequiredError",
    "AuthError",
    "BarrierError",
    "CallTimeoutError",
    "CompactedError",
    "ConfigurationError",
    "ConflictError",
    "DecryptionError",
    "EtcdError",
    "EtcdServerError",
    "EtcdUnavailableError",
    "FoundationEtcdError",
    "InboxFullError",
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
    "RegistrationsFailedError",
    "RequestTooLargeError",
    "SerializationError",
    "SessionClosedError",
    "SessionError",
    "SignalError",
    "TooManyOperationsError",
    "TooManyRequestsError",
    "TransactionConflictError",
]
