"""foundation_etcd: embedded, async-first clustering for Python agents on etcd.

The root holds what an application calls: ``connect`` and ``Config``, the ``Cluster`` and
the values it returns, sessions and the primitives that take one (election, lock, quotas),
the ``@clustered`` decorator and its hooks, placement strategies, and the error tree. The
raw layer (transport, transactions, results, watched views, key layout) is
:mod:`foundation_etcd.lowlevel`; the pytest plugin is :mod:`foundation_etcd.testing`; the
blocking twin of the API, for code that is not async, is :mod:`foundation_etcd.sync`. The
implementation lives in private subpackages (``_core``, ``_transport``, ``_coord``,
``_agents``), one concept a module.

Names that moved to :mod:`foundation_etcd.lowlevel` in 0.2 still resolve here, with a
``DeprecationWarning``, until 0.3.
"""

import importlib as _importlib
import sys as _sys
import warnings as _warnings
from typing import TYPE_CHECKING
from typing import Any as _Any

if TYPE_CHECKING:  # for type checkers; at run time each name loads on first use
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
    from ._agents.cluster_ops import OwnershipSummary
    from ._agents.dead_letters import DeadLetter
    from ._agents.delivery import SignalContext
    from ._agents.health import HealthReport
    from ._agents.registry import AgentChange, AgentInfo, Registration, Registry
    from ._agents.rotation import ReencryptReport
    from ._agents.runtime import AgentRunContext
    from ._agents.scheduler import AgentRef, AgentStatus
    from ._agents.signals import PublishResult, SendResult
    from ._coord.audit import AuditLog, AuditProblem, VerifyReport
    from ._coord.audit_keys import load_public_key, load_signing_key
    from ._coord.barriers import Barrier, DoubleBarrier
    from ._coord.counters import CounterStatistics, ShardedCounter
    from ._coord.election import Election, Leadership
    from ._coord.lock import Lock, LockHandle
    from ._coord.ownership import OwnerInfo
    from ._coord.quotas import Quotas, QuotaUsage, Reservation
    from ._coord.session import Lease, Session, SessionStatistics, open_session
    from ._coord.shared_state import SharedState, Versioned
    from ._coord.signers import SignerInfo
    from ._coord.stm import Isolation, TransactStatistics, Tx
    from ._coord.tenancy import KeyPermission, TenantDeletion, TenantInfo, Tenants
    from ._coord.watch import ChangeKind
    from ._core.config import Config
    from ._core.errors import (
        ActionError,
        AgentExistsError,
        AgentNotFoundError,
        AmbiguousResultError,
        AsyncioRequiredError,
        AuthError,
        BarrierError,
        CallTimeoutError,
        CompactedError,
        ConfigurationError,
        ConflictError,
        DecryptionError,
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
        RegistrationsFailedError,
        RequestTooLargeError,
        SerializationError,
        SessionClosedError,
        SessionError,
        SignalError,
        TooManyOperationsError,
        TooManyRequestsError,
        TransactionConflictError,
    )
    from ._core.keys import validate_id
    from ._core.placement import NodeLoad, PlacementRequest, PlacementStrategy
    from ._core.records import AuditRecord
    from ._core.sealing import EncryptionKey, Keyring
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
    "AsyncioRequiredError",
    "AuditLog",
    "AuditProblem",
    "AuditRecord",
    "AuthError",
    "Barrier",
    "BarrierError",
    "CallTimeoutError",
    "ChangeKind",
    "Cluster",
    "ClusterSpec",
    "CompactedError",
    "Config",
    "ConfigurationError",
    "ConflictError",
    "CounterStatistics",
    "DeadLetter",
    "DecryptionError",
    "DoubleBarrier",
    "Election",
    "EncryptionKey",
    "EtcdError",
    "EtcdServerError",
    "EtcdUnavailableError",
    "FoundationEtcdError",
    "HealthReport",
    "HostedAgent",
    "InboxFullError",
    "IncarnationLostError",
    "InvalidIdError",
    "InvalidReservationError",
    "Isolation",
    "KeyPermission",
    "Keyring",
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
    "OwnershipSummary",
    "PlacementRequest",
    "PlacementStrategy",
    "PublishResult",
    "QuotaError",
    "QuotaExceededError",
    "QuotaUsage",
    "Quotas",
    "ReencryptReport",
    "Registration",
    "RegistrationsFailedError",
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
    "ShardedCounter",
    "SharedState",
    "Signal",
    "SignalContext",
    "SignalError",
    "SignerInfo",
    "TenantDeletion",
    "TenantInfo",
    "Tenants",
    "TooManyOperationsError",
    "TooManyRequestsError",
    "TransactStatistics",
    "TransactionConflictError",
    "Tx",
    "UnsafeEtcdVersionWarning",
    "VerifyReport",
    "Versioned",
    "action",
    "agent_classes",
    "cluster_spec",
    "clustered",
    "connect",
    "load_public_key",
    "load_signing_key",
    "open_session",
    "validate_id",
]

# Where each name of ``__all__`` lives. A name is imported on its first use (``fe.connect``),
# so that ``import foundation_etcd``, and the pytest plugin that every pytest run loads,
# import no gRPC and no transport until the library is used. The imports under
# TYPE_CHECKING above say the same for type checkers; a unit test keeps the two equal.
_SOURCES: dict[str, str] = {
    "._agents.agent": (
        "AgentContext AgentHooks ClusterSpec RestartPolicy action agent_classes "
        "cluster_spec clustered"
    ),
    "._agents.cluster": "Cluster HostedAgent NodeChange NodeInfo connect",
    "._agents.cluster_ops": "OwnershipSummary",
    "._agents.dead_letters": "DeadLetter",
    "._agents.delivery": "SignalContext",
    "._agents.health": "HealthReport",
    "._agents.registry": "AgentChange AgentInfo Registration Registry",
    "._agents.rotation": "ReencryptReport",
    "._agents.runtime": "AgentRunContext",
    "._agents.scheduler": "AgentRef AgentStatus",
    "._agents.signals": "PublishResult SendResult",
    "._coord.audit": "AuditLog AuditProblem VerifyReport",
    "._coord.audit_keys": "load_public_key load_signing_key",
    "._coord.barriers": "Barrier DoubleBarrier",
    "._coord.counters": "CounterStatistics ShardedCounter",
    "._coord.election": "Election Leadership",
    "._coord.lock": "Lock LockHandle",
    "._coord.ownership": "OwnerInfo",
    "._coord.quotas": "Quotas QuotaUsage Reservation",
    "._coord.session": "Lease Session SessionStatistics open_session",
    "._coord.shared_state": "SharedState Versioned",
    "._coord.signers": "SignerInfo",
    "._coord.stm": "Isolation TransactStatistics Tx",
    "._coord.tenancy": "KeyPermission TenantDeletion TenantInfo Tenants",
    "._coord.watch": "ChangeKind",
    "._core.config": "Config",
    "._core.errors": (
        "ActionError AgentExistsError AgentNotFoundError AmbiguousResultError "
        "AsyncioRequiredError AuthError BarrierError CallTimeoutError "
        "CompactedError ConfigurationError ConflictError DecryptionError EtcdError "
        "EtcdServerError EtcdUnavailableError FoundationEtcdError InboxFullError "
        "IncarnationLostError InvalidIdError InvalidReservationError "
        "LeadershipLostError LeaseLostError LeaseNotFoundError LockBusyError "
        "LockLostError NoLeaderError NoNodeFitsError NoSpaceError "
        "NodeExistsError NodeNotFoundError OwnershipLostError QuotaError "
        "QuotaExceededError RegistrationsFailedError RequestTooLargeError "
        "SerializationError "
        "SessionClosedError SessionError SignalError TooManyOperationsError "
        "TooManyRequestsError TransactionConflictError"
    ),
    "._core.keys": "validate_id",
    "._core.placement": "NodeLoad PlacementRequest PlacementStrategy",
    "._core.records": "AuditRecord",
    "._core.sealing": "EncryptionKey Keyring",
    "._core.signals": "Signal",
    "._transport": "UnsafeEtcdVersionWarning",
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names.split()}
_SUBMODULES = ("lowlevel", "sync", "testing")  # ``fe.sync.connect`` without an import
# in lowlevel's __all__ but never at the root
_NEVER_HERE = frozenset({"KeepAliveStream", "WatchResponse", "WatchStream", "Bell", "Doorbells"})


def _moved() -> frozenset[str]:
    """Names moved to foundation_etcd.lowlevel in 0.2 (deprecated here, removed in 0.3).

    The raw layer's names, less those that stay here too and those that were never here.
    """
    from . import lowlevel

    return frozenset(lowlevel.__all__) - frozenset(__all__) - _NEVER_HERE


def _publish_loaded() -> None:
    """Bind every public name whose module is loaded, under its public path.

    ``foundation_etcd.X`` is the path reprs, docs and tracebacks show. One import loads
    many modules, so every name they define is bound at once.
    """
    namespace = globals()
    for name, where in _WHERE.items():
        if name in namespace:
            continue
        module = _sys.modules.get(__name__ + where)
        if module is None or not hasattr(module, name):
            continue
        obj = getattr(module, name)
        if getattr(obj, "__module__", "").startswith("foundation_etcd."):
            obj.__module__ = __name__
        namespace[name] = obj


def __getattr__(name: str) -> _Any:
    where = _WHERE.get(name)
    if where is not None:
        _importlib.import_module(where, __name__)
        _publish_loaded()
        return globals()[name]
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name == "_MOVED":
        return _moved()
    if not name.startswith("__") and name in _moved():
        _warnings.warn(
            f"foundation_etcd.{name} moved to foundation_etcd.lowlevel.{name}; "
            "the old name will be removed in 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_importlib.import_module(f"{__name__}.lowlevel"), name)
    raise AttributeError(f"module 'foundation_etcd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
