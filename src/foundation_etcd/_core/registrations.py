"""A registration as this process holds it: checked, encoded, and its create transaction.

Pure: the registry (``_agents/registry.py``) sends what is built here and keeps the
answers. One registration is a create-if-absent of ``agents/live/{id}`` under the session
lease, whose failure branch reads the holder so that the error can name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codec import json_object
from .errors import AgentExistsError
from .kv import AnyOp, Compare, KeyValue, Op, TxnResult
from .records import encode_registration, parse_registration

__all__ = [
    "OwnedRegistration",
    "Registration",
    "create_txn",
    "created",
    "drop",
    "hold",
    "prepare",
]


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
        holder = parse_registration(agent_id, current) if current is not None else None
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
