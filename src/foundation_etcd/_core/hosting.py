"""Which agents a node should host, from the assignment and spec views (pure).

The node runtime (``_agents/runtime.py``) calls :func:`desired_here` on every change of
its views; each record is decoded once per revision (``records.py`` decodes them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .kv import KeyValue
from .records import AgentSpec, AssignmentStatus, decode_assignment
from .registrations import agent_id_of

__all__ = ["Desired", "desired_here"]


class Desired(NamedTuple):
    """An agent assigned to a node: its spec, and the revisions that tell one from another.

    ``assigned_at`` is the assignment's mod revision (a new placement changes it);
    ``spawned_at`` the spec's create revision (a despawn and a new spawn of the id change it).
    """

    spec: AgentSpec
    assigned_at: int
    spawned_at: int


def desired_here(
    node_id: str,
    assignments: Iterable[KeyValue],
    assign_prefix: bytes,
    spec_of: Callable[[str], KeyValue | None],
    decoded: dict[bytes, tuple[int, Any]],
) -> tuple[dict[str, Desired], dict[bytes, tuple[int, Any]]]:
    """The agents assigned to ``node_id``, and the decode cache to pass next time.

    ``decoded`` maps each key to ``(mod_revision, decoded value)`` from the last call, so
    that each value is decoded once per revision, not once per change of the views.
    """
    out: dict[str, Desired] = {}
    fresh: dict[bytes, tuple[int, Any]] = {}
    for kv in assignments:
        hit = decoded.get(kv.key)
        if hit is None or hit[0] != kv.mod_revision:
            hit = (kv.mod_revision, decode_assignment(kv))
        fresh[kv.key] = hit
        node, status, _ = hit[1]
        agent_id = agent_id_of(kv.key[len(assign_prefix) :])
        if node != node_id or status is not AssignmentStatus.ASSIGNED or agent_id is None:
            continue
        spec_kv = spec_of(agent_id)
        if spec_kv is None:
            continue
        spec = decoded.get(spec_kv.key)
        if spec is None or spec[0] != spec_kv.mod_revision:  # None: unreadable, skipped
            spec = (spec_kv.mod_revision, AgentSpec.read(agent_id.encode(), spec_kv.value))
        fresh[spec_kv.key] = spec
        if spec[1] is not None:
            out[agent_id] = Desired(spec[1], kv.mod_revision, spec_kv.create_revision)
    return out, fresh
