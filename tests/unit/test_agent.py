"""A decorated class keeps working alone: no etcd, no wrapping."""

import inspect

import pytest

import foundation_etcd
from foundation_etcd import (
    ClusterSpec,
    InvalidIdError,
    RestartPolicy,
    agent_classes,
    cluster_spec,
    clustered,
)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def incr(self, by: int = 1) -> int:
        self.value += by
        return self.value

    async def start(self) -> str:  # a method of its own called "start"
        return "own start"


Plain = type("Plain", (Counter,), {})
Decorated = clustered("counter-test", capabilities=["count"], critical=True)(
    type("Decorated", (Counter,), {})
)


def test_decorator_returns_the_same_class_and_wraps_nothing() -> None:
    assert Decorated.incr is Counter.incr
    assert Decorated.__init__ is Counter.__init__
    assert Decorated.__mro__[1:] == (Counter, object)
    c = Decorated(5)
    assert c.incr() == 6 and c.incr(4) == 10
    assert not inspect.getmembers(c, lambda m: getattr(m, "__wrapped__", None))


async def test_own_start_method_untouched() -> None:
    assert await Decorated().start() == "own start"


def test_spec_recorded_and_catalogued() -> None:
    spec = cluster_spec(Decorated)
    assert spec == cluster_spec(Decorated())
    assert isinstance(spec, ClusterSpec)
    assert spec.name == "counter-test" and spec.critical
    assert spec.capabilities == frozenset({"count"})
    assert agent_classes()["counter-test"] is Decorated
    assert cluster_spec(Plain) is None  # a subclass of nothing decorated


def test_subclass_does_not_inherit_spec() -> None:
    Sub = type("Sub", (Decorated,), {})
    assert cluster_spec(Sub) is None


def test_bad_arguments() -> None:
    with pytest.raises(InvalidIdError):
        clustered("bad/name")
    with pytest.raises(InvalidIdError):
        clustered(capabilities=["has space"])
    with pytest.raises(ValueError, match="positive integer"):
        clustered(resources={"cpu": 0})
    with pytest.raises(ValueError, match="restart mode"):
        RestartPolicy(mode="sometimes")
    with pytest.raises(TypeError):
        clustered()(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already used"):
        clustered("counter-test")(type("Other", (), {}))


PUBLIC = {
    # the entry point and its configuration
    "connect", "Config", "Cluster", "HostedAgent", "NodeInfo", "NodeChange", "ChangeKind",
    # health (cluster.health())
    "HealthReport", "OwnershipSummary",
    # agents: the decorator, hooks, contexts, registry and scheduler values
    "clustered", "ClusterSpec", "RestartPolicy", "AgentHooks", "AgentContext",
    "AgentRunContext", "agent_classes", "cluster_spec", "Registry", "Registration",
    "AgentInfo", "AgentChange", "AgentRef", "AgentStatus",
    # placement strategies (user-written ones take these)
    "PlacementStrategy", "PlacementRequest", "NodeLoad",
    # sessions and the primitives that take one
    "Session", "Lease", "SessionStatistics", "open_session", "Election", "Leadership",
    "Lock", "LockHandle", "OwnerInfo", "Quotas", "QuotaUsage", "Reservation",
    "validate_id", "UnsafeEtcdVersionWarning",
    # signals and actions
    "action", "Signal", "SignalContext", "SendResult", "PublishResult", "DeadLetter",
    # consensus: shared state, transactions
    "SharedState", "Versioned", "Tx", "Isolation", "TransactStatistics",
    "ShardedCounter", "CounterStatistics", "Barrier", "DoubleBarrier",
    # operations: the audit log
    "AuditLog", "AuditProblem", "AuditRecord", "VerifyReport", "load_public_key",
    "load_signing_key",
    # tenant provisioning (an operator's)
    "Tenants", "TenantInfo", "TenantDeletion", "KeyPermission",
    # encryption at rest
    "Keyring", "EncryptionKey", "ReencryptReport", "DecryptionError", "SignerInfo",
    # the error tree
    "FoundationEtcdError", "ConfigurationError", "InvalidIdError", "RequestTooLargeError",
    "TooManyOperationsError", "EtcdError", "EtcdUnavailableError", "NoLeaderError",
    "AmbiguousResultError", "CompactedError", "LeaseNotFoundError", "AuthError",
    "EtcdServerError", "NoSpaceError", "TooManyRequestsError", "SessionError",
    "SessionClosedError", "LeaseLostError", "OwnershipLostError", "LeadershipLostError",
    "LockLostError", "IncarnationLostError", "LockBusyError", "NoNodeFitsError", "QuotaError",
    "QuotaExceededError", "InvalidReservationError", "SerializationError", "AgentExistsError",
    "RegistrationsFailedError",
    "AgentNotFoundError", "NodeExistsError", "NodeNotFoundError", "SignalError",
    "InboxFullError", "ActionError", "CallTimeoutError", "AsyncioRequiredError",
    "ConflictError", "TransactionConflictError", "BarrierError",
}  # fmt: skip


def test_package_root_exports_exactly_the_user_api_under_public_names() -> None:
    assert set(foundation_etcd.__all__) == PUBLIC
    assert len(foundation_etcd.__all__) == len(PUBLIC)
    for name in foundation_etcd.__all__:
        obj = getattr(foundation_etcd, name)
        module = getattr(obj, "__module__", "foundation_etcd")
        assert module == "foundation_etcd", (name, module)  # reprs show the public path
    assert repr(foundation_etcd.Lock).startswith("<class 'foundation_etcd.Lock'")


def test_lowlevel_names_and_deprecated_root_aliases() -> None:
    import warnings

    import foundation_etcd.lowlevel as lowlevel

    for name in lowlevel.__all__:
        obj = getattr(lowlevel, name)
        module = getattr(obj, "__module__", "foundation_etcd.lowlevel")
        assert module in ("foundation_etcd.lowlevel", "foundation_etcd"), (name, module)
    moved = foundation_etcd._MOVED
    assert moved <= set(lowlevel.__all__) and not moved & PUBLIC
    for name in moved:
        # moved in 0.2: still reachable from the root for one release, with a warning
        with pytest.warns(DeprecationWarning, match=f"foundation_etcd.lowlevel.{name}"):
            assert getattr(foundation_etcd, name) is getattr(lowlevel, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            _ = foundation_etcd.NoSuchName  # type: ignore[attr-defined]
