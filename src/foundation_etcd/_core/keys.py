"""Key layout and id validation.

Every key the library writes is built here, under ``/{namespace}/{tenant}/`` so that one etcd
role per tenant can confine the tenant to its prefix, except the tenant's quotas: limits and
reservation queues share ``/{namespace}/_system/quotas/{tenant}/``, of which the tenant's role
may read everything but write only ``queue/``.

Ids (node, agent, tenant, namespace, election, lock, resource names, ...) are 1-128
characters of ``[A-Za-z0-9._:-]``, not ``.`` or ``..``, and **never start with ``_``**: a
leading ``_`` is reserved for the library's own key segments (``_system``). Anything else
raises :class:`InvalidIdError` before etcd is asked.

Guarantees:
    * No tenant or namespace can be named ``_system`` (or anything starting with ``_``), so
      a tenant's prefix ``/{namespace}/{tenant}/`` is never the system prefix
      ``/{namespace}/_system/`` nor inside it.
    * Ids hold no ``/``, and every prefix used for a role or a range ends with ``/``: the
      keys of tenant ``a`` are never under a prefix of tenant ``ab`` (or of namespace
      ``ab``), and ``(namespace, tenant)`` is the only pair whose prefixes reach its keys.
    * A pool is a resource id or ``@{node}@{resource}`` (:func:`pool_name`); ``@`` is
      outside the id alphabet, so a tenant resource never names a node pool, and two
      (node, resource) pairs never name one pool. Node pools live under the tenant's own
      quota prefix: no tenant can name another tenant's pool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import InvalidIdError

__all__ = [
    "RESERVED_PREFIX",
    "Keyspace",
    "pool_name",
    "prefix_end",
    "split_pool",
    "validate_id",
    "validate_ids",
]

MAX_ID_LENGTH = 128
RESERVED_PREFIX = "_"  # ids never start with it: the library's own segments (``_system``) do
SYSTEM_SEGMENT = "_system"
_ID_RE = re.compile(r"[A-Za-z0-9._:-]+")

_VALID: set[str] = set()  # ids seen valid (validity depends on the value alone)
_VALID_MAX = 1 << 16  # then the set starts again


def validate_id(value: object, kind: str = "id") -> str:
    """Check that ``value`` is a valid id and return it.

    Args:
        value: the candidate id.
        kind: what the id names, used in the error message.

    Returns:
        The id, unchanged.

    Raises:
        InvalidIdError: when ``value`` is not a string of 1-128 characters of
            ``[A-Za-z0-9._:-]``, is ``.`` or ``..``, or starts with ``_`` (reserved for the
            library: a tenant named ``_system`` would own the system prefix).
    """
    if type(value) is str and value in _VALID:  # the hot path: an id checked before
        return value
    if not isinstance(value, str):
        raise InvalidIdError(kind, value, f"must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdError(kind, value, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(kind, value, f"longer than {MAX_ID_LENGTH} characters")
    if _ID_RE.fullmatch(value) is None:
        bad = next(c for c in value if _ID_RE.fullmatch(c) is None)
        what = "'/'" if bad == "/" else repr(bad)
        if not bad.isprintable():
            what = f"control character {bad!r}"
        raise InvalidIdError(kind, value, f"contains {what}; allowed are A-Z a-z 0-9 . _ : -")
    if value in (".", ".."):
        raise InvalidIdError(kind, value, "'.' and '..' are reserved")
    if value.startswith(RESERVED_PREFIX):
        raise InvalidIdError(
            kind, value, f"a leading {RESERVED_PREFIX!r} is reserved for the library's own keys"
        )
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID.add(value)
    return value


def validate_ids(values: object, kind: str, argument: str) -> tuple[str, ...]:
    """Check an iterable of ids (``kind`` names one, ``argument`` the whole); sort, dedupe.

    Raises:
        InvalidIdError: not an iterable of ids (one ``str`` is refused, not split into
            characters), or an item that is not an id.
    """
    what = f"{kind} names"
    if isinstance(values, str | bytes):
        raise InvalidIdError(argument, values, f"must be an iterable of {what}, not one str")
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidIdError(argument, values, f"must be an iterable of {what}") from None
    return tuple(sorted({validate_id(c, kind) for c in items}))


def pool_name(resource: str, node: str | None = None) -> str:
    """The quota pool of ``resource``: the tenant's (``resource``) or a node's.

    Args:
        resource: the resource (an id).
        node: the node whose announced capacity the pool is, or ``None`` for the tenant's
            limit.

    Returns:
        ``resource``, or ``@{node}@{resource}`` for a node pool.

    Raises:
        InvalidIdError: ``resource`` or ``node`` is not an id.
    """
    validate_id(resource, "resource")
    if node is None:
        return resource
    return f"@{validate_id(node, 'node id')}@{resource}"


def split_pool(name: object) -> tuple[str, str | None] | None:
    """Parse a pool name into ``(resource, node)``; ``None`` when no pool has that name.

    The inverse of :func:`pool_name`: ``"gpu"`` gives ``("gpu", None)`` and ``"@n1@gpu"``
    gives ``("gpu", "n1")``. Never raises (names read back from etcd are parsed with it).
    """
    if not isinstance(name, str):
        return None
    try:
        if not name.startswith("@"):
            return validate_id(name, "resource"), None
        node, sep, resource = name[1:].partition("@")
        if not sep:
            return None
        return validate_id(resource, "resource"), validate_id(node, "node id")
    except InvalidIdError:
        return None


def prefix_end(prefix: bytes) -> bytes:
    r"""Return the ``range_end`` that makes a range cover every key starting with ``prefix``.

    Args:
        prefix: a non-empty key prefix.

    Returns:
        The smallest key greater than every key with that prefix (``b"\0"`` for all keys).
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The keys of one namespace and tenant.

    Attributes:
        namespace: the top-level namespace (an id).
        tenant: the tenant (an id).
    """

    namespace: str = "foundation"
    tenant: str = "default"
    _prefix: bytes = field(init=False, repr=False, compare=False)  # every key starts with it

    def __post_init__(self) -> None:
        validate_id(self.namespace, "namespace")
        validate_id(self.tenant, "tenant")
        object.__setattr__(self, "_prefix", f"/{self.namespace}/{self.tenant}/".encode())

    @property
    def prefix(self) -> bytes:
        """The tenant's prefix, ``/{namespace}/{tenant}/``."""
        return self._prefix

    @property
    def system_prefix(self) -> bytes:
        """The prefix of settings the tenant may read but not change: ``/{namespace}/_system/``.

        No tenant prefix is inside it or contains it: tenants cannot start with ``_``.
        """
        return f"/{self.namespace}/{SYSTEM_SEGMENT}/".encode()

    def key(self, *parts: str) -> bytes:
        """Join ``parts`` under the tenant prefix (parts are not validated here)."""
        return self._prefix + "/".join(parts).encode()

    def relative(self, key: bytes) -> str:
        """Return ``key`` without the tenant prefix.

        Raises:
            ValueError: when ``key`` is not under this tenant's prefix.
        """
        if not key.startswith(self.prefix):
            raise ValueError(f"key {key!r} is outside {self.prefix!r}")
        return key[len(self.prefix) :].decode()

    # nodes ---------------------------------------------------------------------------------
    def nodes_prefix(self) -> bytes:
        """Prefix of node announcements."""
        return self.key("nodes", "")

    def node(self, node_id: str) -> bytes:
        """Announcement of one node (under its session lease)."""
        return self.key("nodes", validate_id(node_id, "node id"))

    # agents --------------------------------------------------------------------------------
    def agents_live_prefix(self) -> bytes:
        """Prefix of live agent registrations."""
        return self.key("agents", "live", "")

    def agent_live(self, agent_id: str) -> bytes:
        """Live registration of one agent (under the hosting lease)."""
        return self.key("agents", "live", validate_id(agent_id, "agent id"))

    def agent_specs_prefix(self) -> bytes:
        """Prefix of the desired agents (specs)."""
        return self.key("agents", "spec", "")

    def agent_assigns_prefix(self) -> bytes:
        """Prefix of the assignments (node chosen by placement, per agent)."""
        return self.key("agents", "assign", "")

    def agent_spec(self, agent_id: str) -> bytes:
        """Desired agent: class, args, placement (no lease)."""
        return self.key("agents", "spec", validate_id(agent_id, "agent id"))

    def agent_assign(self, agent_id: str) -> bytes:
        """Node chosen by placement (no lease)."""
        return self.key("agents", "assign", validate_id(agent_id, "agent id"))

    def agent_state(self, agent_id: str) -> bytes:
        """Last state checkpoint of an agent (no lease)."""
        return self.key("agents", "state", validate_id(agent_id, "agent id"))

    def agent_states_prefix(self) -> bytes:
        """Prefix of every agent's state checkpoint."""
        return self.key("agents", "state", "")

    # election and locks --------------------------------------------------------------------
    def election_prefix(self, name: str | None = None) -> bytes:
        """Prefix of the candidates of one election (without ``name``: of every election)."""
        parts = () if name is None else (validate_id(name, "election name"),)
        return self.key("elections", *parts, "")

    def lock_prefix(self, name: str | None = None) -> bytes:
        """Prefix of the waiters of one lock (without ``name``: of every lock)."""
        parts = () if name is None else (validate_id(name, "lock name"),)
        return self.key("locks", *parts, "")

    # quotas --------------------------------------------------------------------------------
    def quotas_prefix(self) -> bytes:
        """Prefix of the tenant's quota limits and queues: ``/{ns}/_system/quotas/{tenant}/``.

        Limits and queues share one prefix so that one watch sees both in revision order
        (a waiter's admission is then exact in the view, without a confirming round trip);
        it lies outside the tenant prefix so that a tenant's role can read it all and write
        only ``queue/``.
        """
        return self.system_prefix + f"quotas/{self.tenant}/".encode()

    def quota_queue_prefix(self, pool: str) -> bytes:
        """Prefix of the reservation queue of one pool (a resource, or ``@node@resource``).

        Raises:
            InvalidIdError: ``pool`` is not a pool name (see :func:`pool_name`).
        """
        if split_pool(pool) is None:
            raise InvalidIdError("pool", pool, "not a resource id nor @{node}@{resource}")
        return self.quota_queues_prefix() + f"{pool}/".encode()

    def quota_limit(self, resource: str) -> bytes:
        """The tenant's limit for one resource (readable, not writable, by the tenant)."""
        return self.quota_limits_prefix() + validate_id(resource, "resource").encode()

    def quota_queues_prefix(self) -> bytes:
        """Prefix of every reservation queue of the tenant (``{this}{pool}/{id}``)."""
        return self.quotas_prefix() + b"queue/"

    def quota_limits_prefix(self) -> bytes:
        """Prefix of the tenant's limits (``{this}{resource}``)."""
        return self.quotas_prefix() + b"limits/"

    # signed signals ----------------------------------------------------------------------
    def signers_prefix(self) -> bytes:
        """Prefix of the tenant's trusted signing keys: ``/{ns}/_system/signers/{tenant}/``.

        Readable, not writable, by the tenant's role: only an administrator trusts a key.
        """
        return self.system_prefix + f"signers/{self.tenant}/".encode()

    def signer(self, key_id: str) -> bytes:
        """One trusted public key of the tenant, by its id."""
        return self.signers_prefix() + validate_id(key_id, "signing key id").encode()

    # node capacity and cordons -------------------------------------------------------------
    def node_reservations_prefix(self) -> bytes:
        """Prefix of every node's reservations (``{this}{node}/{agent}``)."""
        return self.key("nodes-res", "")

    def node_reservations_of(self, node_id: str) -> bytes:
        """Prefix of the reservations on one node."""
        return self.key("nodes-res", validate_id(node_id, "node id"), "")

    def node_reservation(self, node_id: str, agent_id: str) -> bytes:
        """Node capacity taken by a placed agent (no lease)."""
        return self.key(
            "nodes-res", validate_id(node_id, "node id"), validate_id(agent_id, "agent id")
        )

    def cordons_prefix(self) -> bytes:
        """Prefix of node cordons."""
        return self.key("nodes-cordon", "")

    def cordon(self, node_id: str) -> bytes:
        """The key that marks a node cordoned (no lease: it outlives every process)."""
        return self.key("nodes-cordon", validate_id(node_id, "node id"))

    # signals -------------------------------------------------------------------------------
    def inbox_prefix(self, agent_id: str) -> bytes:
        """Prefix of the signals waiting for one agent (``{this}{signal_id}``)."""
        return self.key("inbox", validate_id(agent_id, "agent id"), "")

    def inboxes_prefix(self) -> bytes:
        """Prefix of every agent's inbox."""
        return self.key("inbox", "")

    def inbox(self, agent_id: str, signal_id: str) -> bytes:
        """One signal waiting for its agent (no lease; FIFO by create revision)."""
        return self.inbox_prefix(agent_id) + validate_id(signal_id, "signal id").encode()

    def signals_sent(self, agent_id: str) -> bytes:
        """The agent's send counter: its version is the number of signals ever accepted."""
        return self.key("signals", "sent", validate_id(agent_id, "agent id"))

    def signals_acked(self, agent_id: str) -> bytes:
        """The agent's acknowledgement counter: its version counts signals taken out."""
        return self.key("signals", "acked", validate_id(agent_id, "agent id"))

    def signal_inflight(self, agent_id: str) -> bytes:
        """Which signal the agent's hosts started last, at which attempt."""
        return self.key("signals", "inflight", validate_id(agent_id, "agent id"))

    def signals_done_prefix(self, agent_id: str | None = None) -> bytes:
        """Prefix of the handled-signal records of one agent (without ``agent_id``: of all)."""
        parts = () if agent_id is None else (validate_id(agent_id, "agent id"),)
        return self.key("signals", "done", *parts, "")

    def signal_done(self, agent_id: str, signal_id: str) -> bytes:
        """A handled signal: its dedupe record and reply (under a retention lease)."""
        return self.signals_done_prefix(agent_id) + validate_id(signal_id, "signal id").encode()

    def dead_letters_prefix(self, agent_id: str | None = None) -> bytes:
        """Prefix of dead letters, of one agent or of all."""
        parts = () if agent_id is None else (validate_id(agent_id, "agent id"),)
        return self.key("signals", "dead", *parts, "")

    def dead_letter(self, agent_id: str, signal_id: str) -> bytes:
        """A signal given up on, with the reason (no lease)."""
        return self.dead_letters_prefix(agent_id) + validate_id(signal_id, "signal id").encode()

    def subscriptions_prefix(self) -> bytes:
        """Prefix of the agents' topic subscriptions."""
        return self.key("signals", "subs", "")

    def subscription(self, agent_id: str) -> bytes:
        """The topic patterns one agent is subscribed to (no lease)."""
        return self.key("signals", "subs", validate_id(agent_id, "agent id"))

    # consensus primitives ------------------------------------------------------------------
    def states_prefix(self) -> bytes:
        """Prefix of every named shared state (``state/``)."""
        return self.key("state", "")

    def state(self, name: str) -> bytes:
        """The value of one named shared state (no lease)."""
        return self.key("state", validate_id(name, "state name"))

    def state_range(self, name_prefix: str) -> bytes:
        """The first key of the states whose names start with ``name_prefix``.

        ``name_prefix`` is a start of an id (``acct:`` for ``acct:alice``, ``acct:bob``);
        the range ends at :func:`prefix_end` of the returned key.
        """
        return self.key("state", validate_id(name_prefix, "state name prefix"))

    def counter_prefix(self, name: str) -> bytes:
        """Prefix of the shards of one sharded counter."""
        return self.key("counters", validate_id(name, "counter name"), "")

    def counter_shard(self, name: str, shard: int) -> bytes:
        """One shard of a sharded counter (no lease)."""
        return self.counter_prefix(name) + f"{shard:04d}".encode()

    def barrier(self, name: str) -> bytes:
        """The key of a barrier: present while the barrier is set."""
        return self.key("barriers", validate_id(name, "barrier name"))

    def double_barrier_prefix(self, name: str) -> bytes:
        """Prefix of a double barrier's participants and markers."""
        return self.key("double-barriers", validate_id(name, "barrier name"), "")

    # audit log ---------------------------------------------------------------------------
    def audit_head(self) -> bytes:
        """The audit log's head: the last record's seq and hash (no lease)."""
        return self.key("audit", "head")

    def audit_records_prefix(self) -> bytes:
        """Prefix of the audit records (``{this}{seq:012d}``, in seq order)."""
        return self.key("audit", "records", "")

    def audit_record(self, seq: int) -> bytes:
        """One audit record (no lease); ``seq`` from 1."""
        if not 0 < seq < 10**12:
            raise ValueError(f"audit seq must be 1..{10**12 - 1}, not {seq}")
        return self.audit_records_prefix() + f"{seq:012d}".encode()

    def agent_signal_keys(self, agent_id: str) -> list[tuple[bytes, bytes | None]]:
        """The signal keys of one agent removed at despawn, as ``(key, range_end)``.

        The done records stay (their retention lease ends them): the agent's last state
        checkpoint survives a despawn too, so a respawned agent that restores it must still
        refuse the ids whose effects that state already holds.
        """
        ranges: list[tuple[bytes, bytes | None]] = [
            (p, prefix_end(p))
            for p in (self.inbox_prefix(agent_id), self.dead_letters_prefix(agent_id))
        ]
        for key in (
            self.signals_sent(agent_id),
            self.signals_acked(agent_id),
            self.signal_inflight(agent_id),
            self.subscription(agent_id),
        ):
            ranges.append((key, None))
        return ranges
