"""Which async classes have blocking twins, and what is deliberately left out (and why).

Read by the generator (``scripts/gen_sync.py``) and by the parity test
(``tests/unit/test_sync_parity.py``): every public member of a class listed here has a
twin with the same parameters, defaults and docstring, unless :data:`SKIP` names it with
a reason. A member added to the async API without a decision here fails ``make lint``
(the generator refuses a type it cannot carry over) or the parity test.
"""

from __future__ import annotations

from dataclasses import dataclass

import foundation_etcd as _fe
from foundation_etcd import lowlevel as _ll

__all__ = ["BACKGROUND", "CONNECT", "PUBLIC", "SKIP", "TWINS", "Twin"]


@dataclass(frozen=True)
class Twin:
    """One generated class.

    Attributes:
        cls: the async class whose own members (``vars(cls)``, its ``__init__``'s
            attributes, its dataclass fields) the twin mirrors.
        module: the generated module (``foundation_etcd.sync.{module}``).
        of: the public class the twin wraps (``cls`` or, for a base that is not public,
            the public class built on it).
        name: the twin's name (the async class's own name by default).
    """

    cls: type
    module: str
    of: type
    name: str = ""

    @property
    def twin_name(self) -> str:
        """The generated class's name."""
        return self.name or self.cls.__name__


_SIGNAL_METHODS = _fe.Cluster.__mro__[1]  # the Cluster's signal methods (a private base)
_CONSENSUS_METHODS = _fe.Cluster.__mro__[2]  # shared state, transactions, counters, barriers
_OPERATOR_METHODS = _fe.Cluster.__mro__[3]  # cordon, drain and the listings

TWINS: tuple[Twin, ...] = (
    Twin(_ll.Transport, "_transport", _ll.Transport),
    Twin(_fe.Lease, "_session", _fe.Lease),
    Twin(_fe.Session, "_session", _fe.Session),
    Twin(_ll.WatchedView, "_session", _ll.WatchedView),
    Twin(_fe.Registry, "_session", _fe.Registry),
    Twin(_ll.Ownership, "_coord", _ll.Ownership),
    Twin(_fe.LockHandle, "_coord", _fe.LockHandle),
    Twin(_fe.Lock, "_coord", _fe.Lock),
    Twin(_fe.Leadership, "_coord", _fe.Leadership),
    Twin(_fe.Election, "_coord", _fe.Election),
    Twin(_fe.Quotas, "_coord", _fe.Quotas),
    Twin(_SIGNAL_METHODS, "_signals", _fe.Cluster, "SignalMethods"),
    Twin(_fe.SharedState, "_consensus", _fe.SharedState),
    Twin(_fe.ShardedCounter, "_consensus", _fe.ShardedCounter),
    Twin(_fe.Barrier, "_consensus", _fe.Barrier),
    Twin(_fe.DoubleBarrier, "_consensus", _fe.DoubleBarrier),
    Twin(_CONSENSUS_METHODS, "_consensus", _fe.Cluster, "ConsensusMethods"),
    Twin(_OPERATOR_METHODS, "_cluster", _fe.Cluster, "OperatorMethods"),
    Twin(_fe.Cluster, "_cluster", _fe.Cluster),
    Twin(_fe.HostedAgent, "_cluster", _fe.HostedAgent),
)

# The public classes with twins (what the parity test walks, inherited members included).
PUBLIC: tuple[type, ...] = tuple(t.cls for t in TWINS if t.cls is t.of)

# ``connect`` itself: its twin (in the module named here) returns a ``Connection``.
CONNECT = ("_cluster", _fe.connect)

# Coroutine methods whose twin starts them on the event loop and returns a ``Serving``
# handle at once, instead of blocking for as long as they run.
BACKGROUND: frozenset[tuple[type, str]] = frozenset({(_fe.Cluster, "serve")})

# Members with no twin, and why. Keyed by the class that defines the member. (A member of a
# base that the public class overrides is twinned with the public class's own.)
SKIP: dict[tuple[type, str], str] = {
    (_fe.Cluster, "signals"): "the send side's internals; use send, publish and call",
    (_fe.Cluster, "membership"): "internal; use nodes, node, node_kv and watch_nodes",
    (_fe.Cluster, "views"): "internal; use view(prefix)",
    (_fe.Cluster, "scheduler"): "a low-level building block; use spawn, agents and drain",
    (_fe.Cluster, "runtime"): "the node runtime that serve() runs, on the event loop",
    (_fe.Cluster, "doorbells"): "the process's watch stream, used on the event loop only",
    (_CONSENSUS_METHODS, "transact"): (
        "takes an async function (its reads await etcd); from blocking code use "
        "SharedState.update or compare_and_set"
    ),
    (_fe.SharedState, "fenced"): (
        "takes a handle of the async API; blocking code writes fenced through the "
        "LockHandle or Leadership twin's txn()"
    ),
    (_fe.Session, "on_renewed"): "takes an async hook, run on the event loop",
    (_fe.Session, "start_background"): "runs the library's helper tasks on the event loop",
    (_fe.Lease, "guard"): (
        "cancels an async scope; a sync body checks lease.ensure_alive() or "
        "foundation_etcd.sync.checkpoint() (or uses session.bind())"
    ),
    (_fe.Lease, "on_lost"): "calls its hook on the event loop thread",
    (_ll.WatchedView, "on_change"): "calls its callback on the event loop; use subscribe()",
    (_ll.WatchedView, "on_stop"): "calls its callback on the event loop",
    (_ll.WatchedView, "subscribe_converted"): "generic over a converter; use subscribe()",
    (_ll.Transport, "connect"): "the connection opens the transport",
    (_ll.Transport, "close"): "the connection closes the transport",
    (_ll.Transport, "prepare_members"): "the session's, at open",
    (_ll.Transport, "open_keepalive"): "a raw stream; sessions keep leases alive",
    (_ll.Transport, "open_watch"): "a raw stream; use Cluster.view(prefix) or watch_nodes",
}
