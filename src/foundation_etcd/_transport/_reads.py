"""Read-only transactions that a caller's cancellation must not reach (etcd#14110).

etcd 3.5.0-3.5.4 hand the request's context to the ranges of a read-only transaction and
panic when one fails: a client that cancels such a transaction while the server ranges
crashes the server ("unexpected error during txn: context canceled", fixed in 3.5.5; 3.4
ranges without the context and 3.6 logs the error). On those versions the transport runs
each read-only transaction in a task of its own: the caller leaves at once when cancelled,
the request finishes on the server (bounded by its deadline) and its answer is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from .._core.background import cleanup_scope
from .._core.kv import AnyOp, RangeOp, TxnOp


def release_of(version: str) -> tuple[int, ...]:
    """``"3.5.1"`` (or ``"3.5.1-rc.0"``) as ``(3, 5, 1)``; ``()`` when it is not one."""
    numbers = version.split("-")[0].split(".")[:3]
    return tuple(map(int, numbers)) if all(n.isdigit() for n in numbers) else ()


def cancel_crashes_reads(version: str) -> bool:
    """Whether etcd ``version`` panics on a read-only transaction cancelled while it ranges."""
    return (3, 5, 0) <= release_of(version) < (3, 5, 5)


def writes(ops: Sequence[AnyOp]) -> bool:
    """Whether ``ops`` write anything, nested transactions included (etcd's own test)."""
    for o in ops:
        if isinstance(o, TxnOp):
            if writes(o.success) or writes(o.failure):
                return True
        elif not isinstance(o, RangeOp):
            return True
    return False


class UncancelledReads:
    """The read-only transactions running in tasks of their own, until each has finished."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    async def run(self, call: Coroutine[Any, Any, Any]) -> Any:
        """Await ``call`` in its own task; a cancellation of the caller leaves it running."""
        task = asyncio.get_running_loop().create_task(call)
        self._running.add(task)
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left does not read it

    async def settle(self, limit: float) -> None:
        """Wait for the running ones, shielded, for at most ``limit`` seconds."""
        if self._running:
            with cleanup_scope(limit):
                await asyncio.wait(set(self._running))
