"""The etcd transport: the only module that talks to etcd or imports gRPC.

It speaks etcd's v3 gRPC API over one ``grpc.aio`` channel with the protobuf stubs that the
``etcd3aio`` package maintains (its client layer is not used: this module decides what is
retried). It maps every gRPC error to the library's error tree, here and nowhere else.

Guarantees:
    * Reads are linearizable unless ``serializable=True`` is asked.
    * Writes are never retried. A write that fails before it could reach etcd raises
      :class:`EtcdUnavailableError`; one whose outcome is unknown (sent, no answer) raises
      :class:`AmbiguousResultError` and must be resolved by re-reading.
    * Requests over etcd's limits (1.5 MiB, 128 operations) raise before they are sent.
    * Every request carries ``hasleader``: a member cut off from its raft leader refuses it
      at once (``NoLeaderError``, not applied) instead of letting it hang.
    * HTTP/2 keepalive pings notice a blackholed connection; the channel then reconnects,
      to another endpoint when several are given.
"""

from ._client import Transport, open_transport
from ._streams import KeepAliveStream, WatchStream
from ._wire import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    LeaseGrant,
    LeaseInfo,
    Status,
    UnsafeEtcdVersionWarning,
    WatchResponse,
)

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "KeepAliveStream",
    "LeaseGrant",
    "LeaseInfo",
    "Status",
    "Transport",
    "UnsafeEtcdVersionWarning",
    "WatchResponse",
    "WatchStream",
    "open_transport",
]
