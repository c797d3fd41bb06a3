"""Stored records: every value the library keeps in etcd for agents, encoded in one place.

Each record is a frozen value with its encoder and decoder and its size limit, so a key's
format is defined once and every module that reads it agrees:

* ``agents/spec/{id}``: :class:`AgentSpec`, the desired agent (no lease);
* ``agents/assign/{id}``: :class:`Assignment`, where it should run and in which
  :class:`AssignmentStatus` (no lease).

Node announcements (``_agents/membership.py``), registrations (``_agents/registry.py``)
and reservations (``_core/admission.py``) are still encoded beside their owners.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import codec as _codec
from .amounts import stored_usage
from .kv import KeyValue
from .placement import PlacementRequest

__all__ = [
    "MAX_ARGS_BYTES",
    "MAX_ASSIGNMENT_BYTES",
    "AgentSpec",
    "Assignment",
    "AssignmentStatus",
    "decode_assignment",
    "encode_assignment",
]

MAX_ARGS_BYTES = 256 * 1024
MAX_ASSIGNMENT_BYTES = 4096


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
            },
            "agent spec",
            MAX_ARGS_BYTES + 4096,
        )

    @classmethod
    def decode(cls, agent_id: str, data: bytes) -> AgentSpec:
        """Parse a stored spec."""
        d = _codec.decode(data)
        return cls(
            agent_id,
            str(d["class"]),
            dict(d.get("args") or {}),
            bool(d.get("critical", False)),
            str(d.get("placement", "least-loaded")),
            stored_usage(d.get("resources")),  # a crafted amount fits no node
            frozenset(d.get("requires") or ()),
        )

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

    An unknown status reads as ``FAILED``: nobody runs an agent on a word it cannot read.
    """
    if kv is None:
        return Assignment(None, AssignmentStatus.ABSENT, "")
    d = _codec.decode(kv.value)
    try:
        status = AssignmentStatus(str(d.get("status", "assigned")))
    except ValueError:
        status = AssignmentStatus.FAILED
    node = d.get("node")
    return Assignment(None if node is None else str(node), status, str(d.get("reason", "")))
