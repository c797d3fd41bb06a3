"""Registrations: the ``agents/live/{id}`` record, its checks and its create transaction.

Pure: the registry (``_agents/registry.py``) sends what is built here and keeps the
answers. One registration is a create-if-absent of ``agents/live/{id}`` under the session
lease, whose failure branch reads the holder so that the error can name it.

The record fails closed: a key or value the library would not write (an id outside the
alphabet, capabilities that are not a list of names, metadata that is not a JSON object,
bytes that are not JSON) reads as no registration, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import codec as _codec
from .codec import json_object
from .errors import (
    AgentExistsError,
    ConfigurationError,
    InvalidIdError,
    RequestTooLargeError,
    SerializationError,
)
from .keys import validate_id
from .kv import AnyOp, Compare, KeyValue, Op, TxnResult

__all__ = [
    "MAX_META_BYTES",
    "AgentIndex",
    "AgentInfo",
    "OwnedRegistration",
    "Registration",
    "agent_id_of",
    "create_txn",
    "created",
    "drop",
    "encode_registration",
    "hold",
    "parse_registration",
    "prepare",
    "prepare_many",
    "unwatched",
]

log = logging.getLogger("foundation_etcd.registry")

MAX_META_BYTES = 64 * 1024  # an agent's metadata, encoded as JSON


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """A live agent as the registry sees it.

    Attributes:
        agent_id: the agent's id.
        node_id: the node whose process registered it.
        class_name: the agent's cluster name (``@clustered(name=...)``), or ``""``.
        capabilities: what the agent can do.
        meta: free-form JSON metadata.
        incarnation: the create revision of the live key.
        lease_id: the lease it lives under.
        revision: the revision of the last change (registration or metadata update).
    """

    agent_id: str
    node_id: str
    class_name: str
    capabilities: frozenset[str]
    meta: Mapping[str, Any]
    incarnation: int
    lease_id: int
    revision: int


def encode_registration(
    node_id: str, class_name: str, capabilities: Iterable[str], meta: Any
) -> bytes:
    """Encode a registration (capabilities already checked); only ``meta`` can fail.

    Raises:
        SerializationError: ``meta`` is not JSON.
        RequestTooLargeError: ``meta`` over :data:`MAX_META_BYTES` encoded.
    """
    record = {
        "node": node_id,
        "class": class_name,
        "capabilities": sorted(capabilities),
        "meta": meta,
    }
    data = _codec.encode(record, "agent metadata", 2**31)
    if len(data) > MAX_META_BYTES:  # only then can the metadata alone be over its limit
        _codec.encode(meta, "agent metadata", MAX_META_BYTES)
    return data


def agent_id_of(suffix: bytes) -> str | None:
    """The agent id a key ends with (after its prefix); ``None`` if not one the library uses."""
    try:
        return validate_id(suffix.decode(), "agent id")
    except (UnicodeDecodeError, InvalidIdError):
        return None


def parse_registration(suffix: bytes, kv: KeyValue) -> AgentInfo | None:
    """Decode the registration at ``kv`` (``suffix``: its key after the prefix).

    ``None``, and a warning, for a key or value the library never writes.
    """
    agent_id = agent_id_of(suffix)
    try:
        data = _codec.decode(kv.value)
        caps, meta = data.get("capabilities", []), data.get("meta") or {}
        node, cls = data.get("node", ""), data.get("class", "")
        if agent_id is None or not isinstance(caps, list) or not isinstance(meta, dict):
            raise ValueError("not a registration")
        if not all(isinstance(x, str) for x in (node, cls, *caps)) or not kv.lease:
            raise ValueError("not a registration")  # (one lives under its process's lease)
        for name, what in ((node, "node id"), *((c, "capability") for c in caps)):
            validate_id(name, what)
    except (ValueError, TypeError, AttributeError):
        log.warning("ignoring malformed registration at %r", kv.key)
        return None
    return AgentInfo(
        agent_id, node, cls, frozenset(caps), meta, kv.create_revision, kv.lease, kv.mod_revision
    )


@dataclass(frozen=True, slots=True)
class Registration:
    """Proof that this process registered an agent: its key, incarnation and lease.

    ``guard`` is a compare to add to your own transactions so that they apply only while
    this registration is the live one.
    """

    agent_id: str
    key: bytes
    incarnation: int
    lease_id: int

    @property
    def guard(self) -> Compare:
        """``create_revision(key) == incarnation``."""
        return Compare.create_revision(self.key) == self.incarnation


@dataclass(slots=True)
class OwnedRegistration:
    """What this process registers (again after a lease loss, when ``persistent``)."""

    capabilities: tuple[str, ...]
    class_name: str
    meta: dict[str, Any]
    value: bytes  # the encoded record
    persistent: bool = True
    registration: Registration | None = field(default=None)


def prepare(
    node_id: str, capabilities: tuple[str, ...], class_name: object, meta: object, keep: object
) -> OwnedRegistration:
    """Check and encode a registration (capabilities already checked); no I/O.

    Raises:
        TypeError: ``class_name`` is not a str.
        SerializationError: ``meta`` is not a JSON object.
        RequestTooLargeError: ``meta`` over 64 KiB.
    """
    if not isinstance(class_name, str):
        raise TypeError(f"class_name must be a str, not {type(class_name).__name__}")
    data = json_object(meta, "meta")
    value = encode_registration(node_id, class_name, capabilities, data)
    return OwnedRegistration(capabilities, class_name, data, value, persistent=bool(keep))


def prepare_many(
    node_id: str, agents: object, capabilities: tuple[str, ...], class_name: object, keep: object
) -> dict[str, OwnedRegistration]:
    """Check and encode many registrations (``agents``: id to metadata); no I/O.

    Raises:
        TypeError: ``agents`` is not a mapping, or ``class_name`` is not a str.
        InvalidIdError, SerializationError, RequestTooLargeError: an id or metadata (the
            error's note names the agent).
    """
    if not isinstance(agents, Mapping):
        raise TypeError(f"agents must be a mapping of id to metadata, not {type(agents)}")
    batch: dict[str, OwnedRegistration] = {}
    for agent_id, meta in agents.items():
        validate_id(agent_id, "agent id")
        try:
            batch[agent_id] = prepare(node_id, capabilities, class_name, meta, keep)
        except (SerializationError, RequestTooLargeError) as exc:
            exc.add_note(f"the metadata of agent {agent_id!r}")
            raise
    return batch


def create_txn(
    key: bytes, value: bytes, lease_id: int
) -> tuple[list[Compare], list[AnyOp], list[AnyOp]]:
    """Create ``key`` under the lease if absent; else read the holder."""
    return [Compare.create_revision(key) == 0], [Op.put(key, value, lease=lease_id)], [Op.get(key)]


def created(agent_id: str, key: bytes, res: TxnResult, lease_id: int) -> Registration:
    """The registration :func:`create_txn` made.

    Raises:
        AgentExistsError: the id was live (the holder's node and lease are named).
    """
    if not res.succeeded:
        current: KeyValue | None = res.range(0).first
        holder = parse_registration(agent_id.encode(), current) if current else None
        raise AgentExistsError(
            agent_id,
            node_id=holder.node_id if holder else None,
            lease_id=current.lease if current is not None else 0,
        )
    return Registration(agent_id, key, res.revision, lease_id)


def hold(
    held: dict[str, OwnedRegistration], batch: dict[str, OwnedRegistration], node_id: str
) -> None:
    """Add ``batch`` to what this process holds, or nothing if it holds one of its ids.

    Raises:
        AgentExistsError: an id of ``batch`` is held already (registered, or on its way).
    """
    for agent_id in batch:
        if agent_id in held:
            reg = held[agent_id].registration
            lease = reg.lease_id if reg else 0
            raise AgentExistsError(agent_id, node_id=node_id, lease_id=lease)
    held.update(batch)


def drop(held: dict[str, OwnedRegistration], batch: dict[str, OwnedRegistration]) -> None:
    """Remove ``batch``'s entries from ``held`` where they are still these (not a later one)."""
    for agent_id, owned in batch.items():
        if held.get(agent_id) is owned:
            del held[agent_id]


def unwatched() -> ConfigurationError:
    """The error of a registry read from memory while its agents view is closed."""
    return ConfigurationError(
        "watch_agents",
        "the agents view is not open (connect(..., watch_agents=False)): await "
        "registry.open() first, or use registry.lookup() (a read from etcd)",
    )


class AgentIndex:
    """Live agents by id and by capability: the registry's in-memory index of its view."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentInfo] = {}
        self._by_capability: dict[str, set[str]] = {}

    def put(self, info: AgentInfo) -> None:
        """Index ``info``, replacing what was indexed under its id."""
        self.remove(info.agent_id)
        self.agents[info.agent_id] = info
        for cap in info.capabilities:
            self._by_capability.setdefault(cap, set()).add(info.agent_id)

    def remove(self, agent_id: str | None) -> None:
        """Forget ``agent_id`` (nothing when it is not indexed, or ``None``)."""
        old = self.agents.pop(agent_id, None) if agent_id is not None else None
        if old is None:
            return
        for cap in old.capabilities:
            ids = self._by_capability.get(cap)
            if ids is not None:
                ids.discard(agent_id)
                if not ids:
                    del self._by_capability[cap]

    def find(self, capabilities: tuple[str, ...]) -> list[AgentInfo]:
        """The agents having every one of ``capabilities`` (all without any), sorted by id."""
        if not capabilities:
            return sorted(self.agents.values(), key=lambda a: a.agent_id)
        sets = [self._by_capability.get(c, set()) for c in capabilities]
        ids = set.intersection(*sorted(sets, key=len))
        return [self.agents[i] for i in sorted(ids)]
