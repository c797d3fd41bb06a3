"""The raw layer: the etcd transport, transactions, results, watched views, key layout.

For code that talks to etcd below the cluster API: a fenced transaction's compares and
operations (``Compare``, ``Op``), a watched view of any prefix (``open_view``, or one per
prefix for a whole process with ``SharedViews``), or the transport itself.
Everything here is as stable as the root API; the root (``foundation_etcd``) holds what an
application calls. ``Scheduler``, ``NodeRuntime`` and ``Ownership`` are the building
blocks behind ``Cluster.spawn``/``serve`` and elections and locks, for tools and tests.
"""

from __future__ import annotations

from ._agents.runtime import NodeRuntime
from ._agents.scheduler import Scheduler
from ._coord.doorbells import Bell, Doorbells
from ._coord.ownership import Ownership
from ._coord.views import SharedViews
from ._coord.watch import ChangeKind, ViewChange, WatchedView, open_view
from ._core.keys import Keyspace, prefix_end
from ._core.kv import (
    Compare,
    DeleteResult,
    EventType,
    KeyValue,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
)
from ._core.records import AgentSpec
from ._transport import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    KeepAliveStream,
    LeaseGrant,
    LeaseInfo,
    Status,
    Transport,
    WatchResponse,
    WatchStream,
    open_transport,
)

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "AgentSpec",
    "Bell",
    "ChangeKind",
    "Compare",
    "DeleteResult",
    "Doorbells",
    "EventType",
    "KeepAliveStream",
    "KeyValue",
    "Keyspace",
    "LeaseGrant",
    "LeaseInfo",
    "NodeRuntime",
    "Op",
    "Ownership",
    "PutResult",
    "RangeResult",
    "Scheduler",
    "SharedViews",
    "Status",
    "Transport",
    "TxnResult",
    "ViewChange",
    "WatchEvent",
    "WatchResponse",
    "WatchStream",
    "WatchedView",
    "open_transport",
    "open_view",
    "prefix_end",
]


def _publish() -> None:
    """Show the public path (``foundation_etcd.lowlevel.X``) in reprs, docs and tracebacks."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("foundation_etcd._"):
            obj.__module__ = __name__


_publish()
