"""foundation_etcd: embedded, async-first clustering for Python agents on etcd.

The root holds what an application calls: ``connect`` and ``Config``, the ``Cluster`` and
the values it returns, sessions and the primitives that take one (election, lock, quotas),
the ``@clustered`` decorator and its hooks, placement strategies, and the error tree. The
raw layer (transport, transactions, results, watched views, key layout) is
:mod:`foundation_etcd.lowlevel`; the pytest plugin is :mod:`foundation_etcd.testing`. The
implementation lives in private subpackages (``_core``, ``_transport``, ``_coord``,
``_agents``), one concept a module.

Names that moved to :mod:`foundation_etcd.lowlevel` in 0.2 still resolve here, with a
``DeprecationWarning``, until 0.3.
"""

import warnings as _warnings
from typing import Any as _Any

from . import lowlevel as _lowlevel
from ._agents.agent import (
    AgentContext,
    AgentHooks,
    ClusterSpec,
    RestartPolicy,
    action,
    agent_classes,
    cluster_spec,
    clustered,
)
from ._agents.cluster import Cluster, HostedAgent, NodeChange, NodeInfo, connect
from ._agents.dead_letters import DeadLetter
from ._agents.delivery import SignalContext
from ._agents.registry import AgentChange, AgentInfo, Registration, Registry
from ._agents.runtime import AgentRunContext
from ._agents.scheduler import AgentRef, AgentStatus
from ._agents.signals import PublishResult, SendResult
from ._coord.election import Election, Leadership
from ._coord.lock import Lock, LockHandle
from ._coord.ownership import OwnerInfo
from ._coord.quotas import Quotas, QuotaUsage, Reservation
from ._coord.session import Lease, Session, SessionStatistics, open_session
from ._coord.watch import ChangeKind
from ._core.config import Config
from ._core.errors import (
    ActionError,
    AgentExistsError,
    AgentNotFoundError,
    AmbiguousResultError,
    AuthError,
    CallTimeoutError,
    CompactedError,
    ConfigurationError,
    EtcdError,
    EtcdServerError,
    EtcdUnavailableError,
    FoundationEtcdError,
    InboxFullError,
    IncarnationLostError,
    InvalidIdError,
    InvalidReservationError,
    LeadershipLostError,
    LeaseLostError,
    LeaseNotFoundError,
    LockBusyError,
    LockLostError,
    NodeExistsError,
    NodeNotFoundError,
    NoLeaderError,
    NoNodeFitsError,
    NoSpaceError,
    OwnershipLostError,
    QuotaError,
    QuotaExceededError,
    RequestTooLargeError,
    SerializationError,
    SessionClosedError,
    SessionError,
    SignalError,
    TooManyOperationsError,
    TooManyRequestsError,
)
from ._core.keys import validate_id
from ._core.placement import NodeLoad, PlacementRequest, PlacementStrategy
from ._core.signals import Signal
from ._transport import UnsafeEtcdVersionWarning

__version__ = "0.2.0.dev0"

__all__ = [
    "ActionError",
    "AgentChange",
    "AgentContext",
    "AgentExistsError",
    "AgentHooks",
    "AgentInfo",
    "AgentNotFoundError",
    "AgentRef",
    "AgentRunContext",
    "AgentStatus",
    "AmbiguousResultError",
    "AuthError",
    "CallTimeoutError",
    "ChangeKind",
    "Cluster",
    "ClusterSpec",
    "CompactedError",
    "Config",
    "ConfigurationError",
    "DeadLetter",
    "Election",
    "EtcdError",
    "EtcdServerError",
    "EtcdUnavailableError",
    "FoundationEtcdError",
    "HostedAgent",
    "InboxFullError",
    "IncarnationLostError",
    "InvalidIdError",
    "InvalidReservationError",
    "Leadership",
    "LeadershipLostError",
    "Lease",
    "LeaseLostError",
    "LeaseNotFoundError",
    "Lock",
    "LockBusyError",
    "LockHandle",
    "LockLostError",
    "NoLeaderError",
    "NoNodeFitsError",
    "NoSpaceError",
    "NodeChange",
    "NodeExistsError",
    "NodeInfo",
    "NodeLoad",
    "NodeNotFoundError",
    "OwnerInfo",
    "OwnershipLostError",
    "PlacementRequest",
    "PlacementStrategy",
    "PublishResult",
    "QuotaError",
    "QuotaExceededError",
    "QuotaUsage",
    "Quotas",
    "Registration",
    "Registry",
    "RequestTooLargeError",
    "Reservation",
    "RestartPolicy",
    "SendResult",
    "SerializationError",
    "Session",
    "SessionClosedError",
    "SessionError",
    "SessionStatistics",
    "Signal",
    "SignalContext",
    "SignalError",
    "TooManyOperationsError",
    "TooManyRequestsError",
    "UnsafeEtcdVersionWarning",
    "action",
    "agent_classes",
    "cluster_spec",
    "clustered",
    "connect",
    "open_session",
    "validate_id",
]

# Moved to foundation_etcd.lowlevel in 0.2 (deprecated here, removed in 0.3): the raw
# layer's names, less those that stay here too and the three that were never here.
_MOVED = (
    frozenset(_lowlevel.__all__)
    - frozenset(__all__)
    - {"KeepAliveStream", "WatchResponse", "WatchStream", "Bell", "Doorbells"}  # never at the root
)


def __getattr__(name: str) -> _Any:
    if name in _MOVED:
        _warnings.warn(
            f"foundation_etcd.{name} moved to foundation_etcd.lowlevel.{name}; "
            "the old name will be removed in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_lowlevel, name)
    raise AttributeError(f"module 'foundation_etcd' has no attribute {name!r}")


def _publish() -> None:
    """Show public paths (``foundation_etcd.X``) in reprs, docs and tracebacks."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("foundation_etcd."):
            obj.__module__ = __name__


_publish()
