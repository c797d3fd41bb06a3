"""A node's reads of one agent's assignment: still here after a lease loss, or marked failed.

The node runtime (``runtime.py``) hosts from its assignment view; these are the two places
it reads the assignment key itself.

Guarantees:
    * :func:`still_assigned` answers from a linearizable read, and when the agent is not
      assigned here any more it first brings the view up to that read (bounded by the
      request timeout), so that whatever is reconciled next does not host the agent again
      from a view behind the read (a resumed node applies missed changes in batches).
    * :func:`mark_failed` writes only over the very assignment it read (compared on its mod
      revision), so a placement made meanwhile is never overwritten.
"""

from __future__ import annotations

import logging

import anyio

from .._coord.watch import WatchedView
from .._core.errors import EtcdError
from .._core.kv import Compare, Op
from .._core.records import AssignmentStatus, decode_assignment, encode_assignment
from .._transport import Transport

__all__ = ["mark_failed", "still_assigned"]

log = logging.getLogger("foundation_etcd.runtime")


async def still_assigned(
    transport: Transport, key: bytes, node_id: str, view: WatchedView | None, catch_up: float
) -> bool:
    """Whether the assignment at ``key`` names ``node_id`` (one linearizable read).

    Args:
        transport: where to read.
        key: the agent's assignment key.
        node_id: this node.
        view: the assignment view the caller reconciles from (``None``: not opened yet).
        catch_up: the longest wait, in seconds, for the view to reach the read.

    Raises:
        EtcdError: the read failed (the caller tries again).
    """
    res = await transport.range(Op.get(key))
    kv = res.first
    node, status, _ = decode_assignment(kv)
    if node == node_id and status is AssignmentStatus.ASSIGNED:
        return True
    if view is not None:
        with anyio.move_on_after(catch_up):
            try:
                if kv is not None:  # its own event brings the view there
                    await view.wait_for_key(key, kv.mod_revision)
                else:
                    await view.wait_for(res.revision)
            except (EtcdError, anyio.ClosedResourceError) as exc:
                log.debug("assignment view not caught up at %r: %s", key, exc)
    return False


async def mark_failed(
    transport: Transport, key: bytes, node_id: str, reservation: bytes, reason: str
) -> None:
    """Mark the assignment at ``key`` failed if it is still ``node_id``'s (best effort).

    Its reservation on the node is deleted in the same transaction: its capacity is freed,
    as failover frees it.
    """
    try:
        kv = await transport.get(key)
        node, status, _ = decode_assignment(kv)
        if kv is not None and node == node_id and status is AssignmentStatus.ASSIGNED:
            failed = encode_assignment(node, AssignmentStatus.FAILED, reason)
            await transport.txn(
                [Compare.mod_revision(key) == kv.mod_revision],
                [Op.put(key, failed), Op.delete(reservation)],
            )
    except EtcdError as exc:
        log.warning("could not mark %r failed on its assignment: %s", key, exc)
