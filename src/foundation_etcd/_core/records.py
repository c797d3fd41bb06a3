"""Stored records: every value the library keeps in etcd for agents, encoded in one place.

Each record is a frozen value with its encoder and decoder and its size limit, so a key's
format is defined once and every module that reads it agrees:

* ``nodes/{node}``: :class:`NodeInfo`, a node's announcement (under its session lease);
* ``agents/live/{id}``: a registration (under the hosting lease), in :mod:`.registrations`;
* ``agents/spec/{id}``: :class:`AgentSpec`, the desired agent (no lease);
* ``agents/assign/{id}``: :class:`Assignment`, where it should run and in which
  :class:`AssignmentStatus` (no lease);
* ``nodes-res/{node}/{id}``: a node reservation, the capacity a placed agent takes;
* ``nodes-cordon/{node}``: a cordon (who, when);
* ``agents/state/{id}``: an agent's state checkpoint with its incarnation;
* ``audit/records/{seq}``: :class:`AuditRecord`, one hash-chained coordination decision.

Decoders of records that a lease or another client may have left behind fail closed: a
value the library would not write is ignored (announcements, registrations) or takes all
room (reservations), never frees capacity. Quota queue entries are the admission math's
input and are encoded and decoded with it in :mod:`._core.admission`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import codec as _codec
from .amounts import ANY_RESOURCE, BLOCKING, check_amounts, stored_capacity, stored_usage
from .keys import validate_id
from .kv import KeyValue
from .placement import PlacementRequest
from .registrations import agent_id_of

__all__ = [
    "AUDIT_GENESIS",
    "MAX_ARGS_BYTES",
    "MAX_ASSIGNMENT_BYTES",
    "MAX_AUDIT_RECORD_BYTES",
    "MAX_NODE_INFO_BYTES",
    "MAX_STATE_BYTES",
    "AgentSpec",
    "Assignment",
    "AssignmentStatus",
    "AuditRecord",
    "NodeInfo",
    "decode_assignment",
    "decode_node_reservation",
    "encode_assignment",
    "encode_cordon",
    "encode_node_reservation",
    "node_value",
    "parse_node",
]

log = logging.getLogger("foundation_etcd.records")

MAX_ARGS_BYTES = 256 * 1024
MAX_ASSIGNMENT_BYTES = 4096
MAX_NODE_INFO_BYTES = 64 * 1024
MAX_STATE_BYTES = 1024 * 1024
MAX_NODE_RESERVATION_BYTES = 4096
MAX_CORDON_BYTES = 1024
MAX_AUDIT_RECORD_BYTES = 16 * 1024
AUDIT_GENESIS = "0" * 64  # the ``prev`` of the first record ever


# nodes/{node} --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as announced in etcd.

    Attributes:
        node_id: the node's id.
        capacity: resource name to integer amount the node offers.
        capabilities: what the node can host.
        address: where the node can be reached (free-form, optional).
        started_at: wall-clock time the process connected (seconds since the epoch).
        pid: the process id.
        hostname: the host name.
        hosts_agents: whether placement may put agents on it (``connect(hosts_agents=)``).
        lease_id: the session lease the node key lives under.
        revision: the revision of the announcement.
    """

    node_id: str
    capacity: Mapping[str, int]
    capabilities: frozenset[str]
    address: str
    started_at: float
    pid: int
    hostname: str
    hosts_agents: bool
    lease_id: int
    revision: int


def node_value(
    node_id: str,
    capacity: Mapping[str, int],
    capabilities: Iterable[str],
    address: str,
    hosts_agents: bool,
) -> bytes:
    """Encode a node announcement, validating it first (nothing is sent).

    Raises:
        InvalidIdError: a bad capability or resource name.
        ValueError: a bad capacity.
        RequestTooLargeError: over :data:`MAX_NODE_INFO_BYTES`.
    """
    caps = sorted({validate_id(c, "capability") for c in capabilities})
    cap_map = check_amounts(capacity, "capacity", minimum=0)
    return _codec.encode(
        {
            "node_id": node_id,
            "capacity": cap_map,
            "capabilities": caps,
            "address": address,
            "started_at": time.time(),
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "hosts": hosts_agents,
        },
        "node info",
        MAX_NODE_INFO_BYTES,
    )


def parse_node(kv: KeyValue, prefix: bytes) -> NodeInfo | None:
    """Decode the announcement at ``kv`` (under ``prefix``, the nodes prefix).

    ``None`` (and a warning) when the library never writes it: not JSON, a key that is not
    ``{prefix}{node_id}`` of the node id inside (another client's key naming a live node
    must not stand in for it), or no lease (an announcement lives under its node's lease).
    """
    try:
        d = _codec.decode(kv.value)
        node_id = d["node_id"]
        caps = d.get("capabilities", [])
        if not isinstance(node_id, str) or kv.key != prefix + node_id.encode() or not kv.lease:
            raise ValueError("not the announcement of the node its key names")
        validate_id(node_id, "node id")  # one an operator can name (cordon, drain) too
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError("capabilities are not a list of names")
        for name in (*caps, *d.get("capacity", {})):
            validate_id(name, "capability or resource")
        return NodeInfo(
            node_id=node_id,
            # a capacity the library would not write (negative, fractional, huge) is no
            # capacity: placement never counts on it
            capacity={
                str(k): c
                for k, v in d.get("capacity", {}).items()
                if (c := stored_capacity(v)) is not None
            },
            capabilities=frozenset(caps),
            address=str(d.get("address", "")),
            started_at=float(d.get("started_at", 0.0)),
            pid=int(d.get("pid", 0)),
            hostname=str(d.get("hostname", "")),
            hosts_agents=bool(d.get("hosts", True)),
            lease_id=kv.lease,
            revision=kv.mod_revision,
        )
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        log.warning("ignoring malformed node announcement at %r", kv.key)
        return None


# agents/spec/{id} ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """The desired agent, as stored in ``agents/spec/{id}``."""

    agent_id: str
    class_name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    critical: bool = False
    placement: str = "least-loaded"
    resources: Mapping[str, int] = field(default_factory=dict)
    requires: frozenset[str] = frozenset()
    actions: Mapping[str, Any] = field(default_factory=dict)  # name -> tool definition

    def encode(self) -> bytes:
        """The spec as stored."""
        return _codec.encode(
            {
                "class": self.class_name,
                "args": dict(self.args),
                "critical": self.critical,
                "placement": self.placement,
                "resources": dict(self.resources),
                "requires": sorted(self.requires),
                **({"actions": dict(self.actions)} if self.actions else {}),
            },
            "agent spec",
            MAX_ARGS_BYTES + 4096,
        )

    @classmethod
    def decode(cls, agent_id: str, data: bytes) -> AgentSpec:
        """Parse a stored spec.

        Raises:
            ValueError: not a spec the library writes (another client's, or garbage).
        """
        try:
            d = _codec.decode(data)
            return cls(
                agent_id,
                _text(d["class"]),
                dict(d.get("args") or {}),
                bool(d.get("critical", False)),
                _text(d.get("placement", "least-loaded")),
                stored_usage(d.get("resources")),  # a crafted amount fits no node
                frozenset(_text(r) for r in d.get("requires") or ()),
                d["actions"] if isinstance(d.get("actions"), dict) else {},
            )
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ValueError(f"unreadable agent spec of {agent_id!r}") from None

    @classmethod
    def read(cls, suffix: bytes, data: bytes) -> AgentSpec | None:
        """The spec at a key ending with ``suffix``; ``None`` (and a warning) if unreadable."""
        agent_id = agent_id_of(suffix)
        try:
            if agent_id is None:
                raise ValueError(f"no agent id: {suffix!r}")
            return cls.decode(agent_id, data)
        except ValueError as exc:
            log.warning("ignoring an agent spec: %s", exc)
            return None

    @classmethod
    def assigned(
        cls, key: bytes, prefix: bytes, spec_of: Callable[[str], KeyValue | None]
    ) -> AgentSpec | None:
        """The spec of the agent an assignment ``key`` (under ``prefix``) names.

        ``spec_of(agent_id)`` finds the spec's key. ``None``: no spec, or a key or value
        the library would not write (a warning).
        """
        agent_id = agent_id_of(key[len(prefix) :])
        spec_kv = None if agent_id is None else spec_of(agent_id)
        if agent_id is None or spec_kv is None:
            return None
        return cls.read(agent_id.encode(), spec_kv.value)

    def request(self, exclude: frozenset[str] = frozenset()) -> PlacementRequest:
        """What this agent needs from a node."""
        return PlacementRequest(self.agent_id, self.resources, self.requires, exclude)


class AssignmentStatus(enum.StrEnum):
    """The state of an assignment key."""

    ASSIGNED = "assigned"  # the node should run it
    FAILED = "failed"  # nowhere: its node died (not critical) or refused it
    ABSENT = "absent"  # no assignment key


class Assignment(NamedTuple):
    """Where an agent should run: ``(node, status, reason)``."""

    node: str | None
    status: AssignmentStatus
    reason: str


def encode_assignment(node: str | None, status: AssignmentStatus, reason: str = "") -> bytes:
    """The value of an assignment key."""
    return _codec.encode(
        {"node": node, "status": status.value, "reason": reason, "at": time.time()},
        "assignment",
        MAX_ASSIGNMENT_BYTES,
    )


def decode_assignment(kv: KeyValue | None) -> Assignment:
    """The assignment stored in ``kv`` (``ABSENT`` when there is none).

    An unknown status, or a value the library would not write, reads as ``FAILED``: nobody
    runs an agent on a word it cannot read.
    """
    if kv is None:
        return Assignment(None, AssignmentStatus.ABSENT, "")
    try:
        d = _codec.decode(kv.value)
        node, raw, reason = d.get("node"), d.get("status", "assigned"), d.get("reason", "")
        if not (node is None or isinstance(node, str)) or not isinstance(raw, str):
            raise ValueError("not an assignment")
        if node is not None:
            validate_id(node, "node id")  # every key built from it must be one of the layout
    except (ValueError, AttributeError):
        log.warning("unreadable assignment at %r: read as failed", kv.key)
        return Assignment(None, AssignmentStatus.FAILED, "unreadable assignment record")
    try:
        status = AssignmentStatus(raw)
    except ValueError:
        status = AssignmentStatus.FAILED
    return Assignment(node, status, str(reason))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a str: {value!r}")
    return value


# nodes-res/{node}/{id} -----------------------------------------------------------------------
def encode_node_reservation(resources: Mapping[str, int]) -> bytes:
    """The capacity a placed agent takes on its node (amounts already checked)."""
    return _codec.encode({"resources": dict(resources)}, "reservation", MAX_NODE_RESERVATION_BYTES)


def decode_node_reservation(value: bytes) -> dict[str, int]:
    """What a node reservation takes; fails closed (never raises).

    A value the library would not write takes all room on its node
    (``{ANY_RESOURCE: BLOCKING}``): a crafted entry can block placement, never free it.
    """
    try:
        raw = _codec.decode(value)
    except (ValueError, RecursionError):
        raw = None
    if isinstance(raw, dict) and isinstance(raw.get("resources"), dict):
        return stored_usage(raw["resources"])
    return {ANY_RESOURCE: BLOCKING}


# nodes-cordon/{node} -------------------------------------------------------------------------
def encode_cordon(by_node: str) -> bytes:
    """A cordon's value: who set it and when (its existence is what counts)."""
    return _codec.encode({"by": by_node, "at": time.time()}, "cordon", MAX_CORDON_BYTES)


# audit/records/{seq} -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit record: a decision, chained to the previous record by its hash.

    ``digest`` is the sha256 of :meth:`canonical` (sorted keys, compact JSON, without
    ``sig``); ``sig`` is a hex Ed25519 signature of the same bytes, or ``None``.
    """

    seq: int
    time: float
    actor: str
    kind: str
    details: Mapping[str, Any]
    prev: str
    sig: str | None = None

    def canonical(self) -> bytes:
        """The bytes that are hashed and signed: the record without ``sig``."""
        body = {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "kind": self.kind,
            "details": dict(self.details),
            "prev": self.prev,
        }
        return _codec.encode(body, "audit record", MAX_AUDIT_RECORD_BYTES)

    @property
    def digest(self) -> str:
        """Hex sha256 of :meth:`canonical`: the next record's ``prev``."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def encode(self) -> bytes:
        """The stored value (``canonical`` plus ``sig`` when signed)."""
        body = _codec.decode(self.canonical())
        if self.sig is not None:
            body["sig"] = self.sig
        return _codec.encode(body, "audit record", MAX_AUDIT_RECORD_BYTES + 256)

    @classmethod
    def decode(cls, value: bytes) -> AuditRecord:
        """Parse a stored record.

        Raises:
            ValueError: not a record the library writes.
        """
        try:
            d = _codec.decode(value)
            sig = d.get("sig")
            rec = cls(
                seq=d["seq"],
                time=d["time"],
                actor=d["actor"],
                kind=d["kind"],
                details=d["details"],
                prev=d["prev"],
                sig=sig,
            )
            types: tuple[type | tuple[type, ...], ...] = (int, (int, float), str, str, dict, str)
            fields = (rec.seq, rec.time, rec.actor, rec.kind, rec.details, rec.prev)
            if set(d) - {"seq", "time", "actor", "kind", "details", "prev", "sig"}:
                raise ValueError("unknown fields")
            if not all(isinstance(v, t) for v, t in zip(fields, types, strict=True)):
                raise ValueError("a field of the wrong type")
            if isinstance(rec.seq, bool) or not (sig is None or isinstance(sig, str)):
                raise ValueError("a field of the wrong type")
            return rec
        except (KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ValueError(f"not an audit record: {exc!r}") from None
