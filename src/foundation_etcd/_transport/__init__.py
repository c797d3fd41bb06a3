"""The etcd transport: the only module that talks to etcd or imports gRPC.

It speaks etcd's v3 gRPC API over one ``grpc.aio`` channel, with etcd's messages built from
a descriptor pool of its own (``_protos``): nothing is registered in protobuf's default pool,
so the library shares a process with any other etcd client. It decides what is retried, and
maps every gRPC error to the library's error tree, here and nowhere else.

Guarantees:
    * Reads are linearizable unless ``serializable=True`` is asked.
    * Writes are never retried. A write that fails before it could reach etcd raises
      :class:`EtcdUnavailableError`; one whose outcome is unknown (sent, no answer) raises
      :class:`AmbiguousResultError` and must be resolved by re-reading.
    * Requests over etcd's limits (1.5 MiB, 128 operations) raise before they are sent.
    * Every request carries ``hasleader``: a member cut off from its raft leader refuses it
      at once (``NoLeaderError``, not applied) instead of letting it hang.
    * On etcd 3.5.0-3.5.4 a transaction that writes nothing is never cancelled on the
      server, where cancelling it crashes etcd (etcd#14110, ``_reads``): its caller leaves,
      the request finishes.
    * HTTP/2 keepalive pings notice a blackholed connection; the channel then reconnects,
      to another endpoint when several are given.
"""

from ._client import Transport, open_transport
from ._loop import require_asyncio
from ._reads import release_of
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
    "release_of",
    "require_asyncio",
]
