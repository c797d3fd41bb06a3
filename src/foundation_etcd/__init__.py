"""foundation_etcd: embedded, async-first clustering for Python agents on etcd."""

from ._config import Config
from ._errors import (
    AgentExistsError,
    AmbiguousResultError,
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
    RequestTooLargeError,
    SessionClosedError,
    SessionError,
    TooManyOperationsError,
)
from ._keys import Keyspace, validate_id

__all__ = [
    "AgentExistsError",
    "AmbiguousResultError",
    "AuthError",
    "CompactedError",
    "Config",
    "ConfigurationError",
    "EtcdError",
    "EtcdServerError",
    "EtcdUnavailableError",
    "FoundationEtcdError",
    "InvalidIdError",
    "Keyspace",
    "LeaseLostError",
    "LeaseNotFoundError",
    "NoLeaderError",
    "RequestTooLargeError",
    "SessionClosedError",
    "SessionError",
    "TooManyOperationsError",
    "validate_id",
]
