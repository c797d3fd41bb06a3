"""foundation_etcd.sync: the blocking twin of the API, for code that is not async.

::

    import foundation_etcd as fe

    with fe.sync.connect(fe.Config.from_env(), node_id="web-1") as cluster:
        with cluster.lock("reports").acquire() as held:      # blocks, FIFO
            held.put(cluster.keyspace.key("reports", "owner"), b"web-1")  # fenced

One event-loop thread per connection runs the async API (asyncio) and keeps the session's
keepalives, watches and views going while the caller blocks. Every method of the async
classes has a twin here with the same parameters, defaults, docstring and errors; async
context managers become ``with`` blocks; returned objects with async methods (``Lock``,
``Leadership``, ``Session``, ...) come back as their twins. The twins are generated from
the async classes by ``scripts/gen_sync.py`` (``_spec.py`` lists them and what is left out).

The differences, all forced by a caller that cannot be cancelled:

* a lost lease (lock, leadership, reservation) ends the async side of the ``with`` block at
  once; the sync body gets the error (``LeaseLostError``, ``LockLostError``, ...) at its
  next blocking call into the library, at :func:`checkpoint`, or when the block exits;
* ``anyio.fail_after`` around async calls becomes :func:`fail_after`;
* ``serve(...)`` starts serving on the event loop and returns a :class:`Serving` handle.

See ``docs/sync.md``.
"""

from ._cluster import Cluster, HostedAgent, connect
from ._consensus import Barrier, ConsensusMethods, DoubleBarrier, ShardedCounter, SharedState
from ._coord import Election, Leadership, Lock, LockHandle, Ownership, Quotas
from ._handles import Connection, Receiver, Serving, SyncWrapper
from ._portal import checkpoint, fail_after
from ._session import Lease, Registry, Session, WatchedView
from ._signals import SignalMethods
from ._transport import Transport

__all__ = [
    "Barrier",
    "Cluster",
    "Connection",
    "ConsensusMethods",
    "DoubleBarrier",
    "Election",
    "HostedAgent",
    "Leadership",
    "Lease",
    "Lock",
    "LockHandle",
    "Ownership",
    "Quotas",
    "Receiver",
    "Registry",
    "Serving",
    "Session",
    "ShardedCounter",
    "SharedState",
    "SignalMethods",
    "SyncWrapper",
    "Transport",
    "WatchedView",
    "checkpoint",
    "connect",
    "fail_after",
]
