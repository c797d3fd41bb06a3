"""The error tree's base and the errors of etcd, configuration, ids and sessions."""

from __future__ import annotations

__all__ = [
    "AmbiguousResultError",
    "AsyncioRequiredError",
    "AuthError",
    "CompactedError",
    "ConfigurationError",
    "EtcdError",
    "EtcdServerError",
    "EtcdUnavailableError",
    "FoundationEtcdError",
    "InvalidIdError",
    "LeaseLostError",
    "LeaseNotFoundError",
    "NoLeaderError",
    "NoSpaceError",
    "RequestTooLargeError",
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
        self.kind, self.value = kind, value


class RequestTooLargeError(FoundationEtcdError, ValueError):
    """A value or a whole request is larger than etcd or the library allows.

    etcd takes requests up to 1.5 MiB by default; the library limits some values further
    (64 KiB of agent metadata, ...). Raised before the request is sent, so nothing is half-applied.

    Attributes:
        size: the size in bytes of what was to be sent.
        limit: the limit in bytes.
    """

    def __init__(self, size: int, limit: int, what: str = "request", *, reason: str = "") -> None:
        if reason:  # refused by etcd itself (its --max-request-bytes is below ours)
            super().__init__(f"{what} refused by etcd: {reason}")
        else:
            super().__init__(f"{what} of {size} bytes exceeds the limit of {limit} bytes")
        self.size, self.limit = size, limit


class TooManyOperationsError(FoundationEtcdError, ValueError):
    """A transaction has more operations (or compares) than etcd accepts (128 by default).

    Raised before the transaction is sent.

    Attributes:
        count: the number of operations in the largest branch.
        limit: the limit.
    """

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"transaction with {count} operations exceeds etcd's limit of {limit}")
        self.count, self.limit = count, limit


class EtcdError(FoundationEtcdError):
    """etcd answered a request with an error, or could not be reached.

    Attributes:
        code: the gRPC status code name (``"UNAVAILABLE"``...), or ``None``.
        details: the message etcd or gRPC gave.
    """

    def __init__(self, message: str, *, code: str | None = None, details: str = "") -> None:
        super().__init__(message)
        self.code, self.details = code, details


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


class AsyncioRequiredError(FoundationEtcdError, RuntimeError):
    """The async API was called outside an asyncio event loop (under trio, for example).

    The transport is gRPC's ``grpc.aio``, which runs on asyncio only. Run async code with
    ``asyncio.run`` or ``anyio.run(..., backend="asyncio")``; from any other code (trio
    included, through a worker thread) use the blocking :mod:`foundation_etcd.sync`.
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
        self.lease_id, self.reason = lease_id, reason
