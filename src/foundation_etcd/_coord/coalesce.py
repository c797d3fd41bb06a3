"""Concurrent transactions sent together: one transaction of nested ones, each its own.

While fewer than ``in_flight`` transactions of a :class:`Coalescer` are on their way to etcd,
a new one is sent at once, alone, as :meth:`Transport.txn` would send it: nothing is added to
its latency. The ones that come while that many are on their way wait, and go together as
the success branch of one outer transaction that has no compares. Each is a nested
transaction there with its own compares, success and failure, so each succeeds or fails on
its own compares, and its caller gets the result it would have had alone (the revision is
the outer one: every member commits at the same revision).

Guarantees:
    * Each transaction is applied once, atomically, or not at all, and its caller gets its
      own :class:`TxnResult`; a member whose compares fail changes nothing and fails no other.
    * A batch holds at most what etcd accepts: ``128`` operations in a branch counting the
      nested ones' (etcd checks a nested transaction against what its parent leaves), about
      a third of the request limit in bytes, and never two members that write the same key
      (etcd refuses a transaction that does). A member too large to share goes alone.
    * Errors mean what they mean for one transaction. A batch that was not applied
      (:class:`EtcdUnavailableError`) raises that in every member; one whose outcome is
      unknown raises :class:`AmbiguousResultError` in every member (resolve each by
      re-reading, as always). A batch etcd refused for what one member may have caused (a
      rule it breaks, a permission, its lease gone) is sent again member by member, so each
      gets its own answer and one bad member fails no other; one refused for etcd's own
      state (too many requests, no space) raises that in every member.
    * A caller cancelled while it waits leaves the queue, and its transaction is not sent;
      one cancelled after its batch was sent is cancelled like a caller of
      :meth:`Transport.txn` (its transaction may have been applied).
    * Order: members of one batch are applied in the order they came. A caller that awaits
      each transaction before the next keeps its order; concurrent callers never had one.

On lease loss: nothing here; a member guarded by a lease fails on its own compares.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence

from .._core.errors import (
    AuthError,
    EtcdServerError,
    LeaseNotFoundError,
    NoSpaceError,
    RequestTooLargeError,
    TooManyOperationsError,
    TooManyRequestsError,
)
from .._core.kv import AnyOp, Compare, DeleteOp, Op, PutOp, TxnOp, TxnResult
from .._transport import MAX_REQUEST_BYTES, MAX_TXN_OPS, Transport

__all__ = ["Coalescer"]

_BATCH_BYTES = MAX_REQUEST_BYTES // 3  # estimated: keys, values and a margin per operation
_OP_BYTES = 32  # what an operation adds besides its key and value, at most (estimated)
# what one member may have caused (its lease gone, its permission, its rule broken): each
# is sent again alone; an overloaded or full etcd refuses them all alike, alone as well
_MEMBER_ERRORS = (
    EtcdServerError,
    AuthError,
    LeaseNotFoundError,
    RequestTooLargeError,
    TooManyOperationsError,
)
_SHARED_ERRORS = (TooManyRequestsError, NoSpaceError)


class _Member:
    __slots__ = ("compare", "cost", "failure", "future", "size", "success", "writes")

    def __init__(
        self,
        compare: Sequence[Compare],
        success: Sequence[AnyOp],
        failure: Sequence[AnyOp],
        shape: tuple[frozenset[bytes], int, int],
    ) -> None:
        self.compare, self.success, self.failure = compare, success, failure
        self.writes, self.size, self.cost = shape  # see _shape
        self.future: asyncio.Future[TxnResult] = asyncio.get_running_loop().create_future()


class Coalescer:
    """Sends transactions, several at once as one when many are on their way.

    Args:
        transport: where to send them.
        in_flight: how many may be on their way before the next ones wait to go together.
    """

    def __init__(self, transport: Transport, *, in_flight: int = 2) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        self._t, self._limit = transport, in_flight
        self._busy = 0
        self._queue: deque[_Member] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # outer transactions sent (for tests and benchmarks)
        self.batched = 0  # transactions sent inside them

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[AnyOp] = (),
        failure: Sequence[AnyOp] = (),
    ) -> TxnResult:
        """Run a transaction as :meth:`Transport.txn` does; see the module docstring."""
        shape = None
        if (self._busy < self._limit and not self._queue) or (
            shape := _shape(compare, success, failure)
        ) is None:  # (a lone transaction is never looked into)
            self._busy += 1
            try:
                return await self._t.txn(compare, success, failure)
            finally:
                self._busy -= 1
                self._kick()
        member = _Member(compare, success, failure, shape)
        self._queue.append(member)
        self._kick()
        try:
            return await member.future
        except asyncio.CancelledError:
            # still queued: it is never sent; taken by a batch already: that batch sends it
            with contextlib.suppress(ValueError):
                self._queue.remove(member)
            raise

    async def txn_many(
        self, txns: Sequence[tuple[Sequence[Compare], Sequence[AnyOp], Sequence[AnyOp]]]
    ) -> list[TxnResult | Exception]:
        """Run many transactions, each as :meth:`txn` would, from one caller; in order.

        Every one is queued at once (no task or coroutine of its own), so they go in as
        few requests as etcd's limits allow. Each entry of the answer is its
        transaction's result or the exception :meth:`txn` would have raised for it.
        Cancelled while waiting: the ones not yet sent are never sent; the ones sent may
        have been applied (as with :meth:`txn`).
        """
        members: list[_Member] = []
        alone: list[_Member] = []  # too large to share (or a range delete): one by one
        for compare, success, failure in txns:
            shape = _shape(compare, success, failure)
            m = _Member(compare, success, failure, shape or (frozenset(), 0, 0))
            members.append(m)
            if shape is None:
                alone.append(m)
            else:
                self._queue.append(m)
        self._kick()
        try:
            for m in alone:
                self._busy += 1
                try:
                    await self._alone(m)
                finally:
                    self._busy -= 1
                    self._kick()
            out: list[TxnResult | Exception] = []
            for m in members:
                try:
                    out.append(await m.future)
                except Exception as exc:  # its own answer, as txn() would raise it
                    out.append(exc)
            return out
        except asyncio.CancelledError:
            for m in members:  # a queued one is then skipped; a sent one's answer dropped
                if not m.future.done():
                    m.future.cancel()
            raise

    def _kick(self) -> None:
        while self._queue and self._busy < self._limit:
            batch = self._take()
            if not batch:  # every member left was cancelled
                return
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Member]:
        """The next batch: queued members in order, within etcd's limits, none sharing a key."""
        batch: list[_Member] = []
        written: set[bytes] = set()
        cost = size = 0
        skipped: list[_Member] = []
        while self._queue:
            m = self._queue[0]
            if m.future.done():  # cancelled while queued
                self._queue.popleft()
                continue
            c = max(cost, m.cost)  # etcd: the outer branch's length + a member's own cost
            if batch and (len(batch) + 1 + c > MAX_TXN_OPS or size + m.size > _BATCH_BYTES):
                break
            self._queue.popleft()
            if written.isdisjoint(m.writes):
                batch.append(m)
                written |= m.writes
                cost, size = c, size + m.size
            else:  # writes a key a member before it writes: the next batch
                skipped.append(m)
        self._queue.extendleft(reversed(skipped))
        return batch

    async def _send(self, batch: list[_Member]) -> None:
        try:
            if len(batch) == 1:
                await self._alone(batch[0])
                return
            ops = [Op.txn(m.compare, m.success, m.failure) for m in batch]
            try:
                res = await self._t.txn([], ops)
            except _MEMBER_ERRORS as exc:
                if isinstance(exc, _SHARED_ERRORS):
                    for m in batch:
                        _settle(m, exc)
                    return
                for m in batch:  # each gets its own answer
                    await self._alone(m)
                return
            except BaseException as exc:  # not applied, or not known: the same for each
                for m in batch:
                    _settle(m, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            self.batches += 1
            self.batched += len(batch)
            for m, out in zip(batch, res.responses, strict=True):
                assert isinstance(out, TxnResult)
                if not m.future.done():
                    m.future.set_result(out)
        finally:
            for m in batch:  # only if this task was cancelled (the loop closing)
                if not m.future.done():
                    m.future.cancel()
            self._busy -= 1
            self._kick()

    async def _alone(self, m: _Member) -> None:
        if m.future.done():
            return
        try:
            res = await self._t.txn(m.compare, m.success, m.failure)
        except BaseException as exc:
            _settle(m, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not m.future.done():
            m.future.set_result(res)


def _settle(m: _Member, exc: BaseException) -> None:
    if m.future.done():
        return
    if isinstance(exc, Exception):
        m.future.set_exception(exc)
    else:
        m.future.cancel()


def _shape(
    compare: Sequence[Compare], success: Sequence[AnyOp], failure: Sequence[AnyOp]
) -> tuple[frozenset[bytes], int, int] | None:
    """The keys a transaction writes, its estimated size and its cost; ``None``: alone.

    Its cost is what etcd counts against a nested transaction's budget: its longest list,
    plus the largest cost of the transactions nested in it. Alone: a range delete (its
    keys are not known), a cost over half of etcd's operations, or over a quarter of a
    batch's bytes.
    """
    writes: set[bytes] = set()
    walked = _walk(compare, success, failure, writes)
    if walked is None:
        return None
    cost, size = walked
    if cost > MAX_TXN_OPS // 2 or size > _BATCH_BYTES // 4:
        return None
    return frozenset(writes), size, cost


def _walk(
    cmp: Sequence[Compare], ok: Sequence[AnyOp], ko: Sequence[AnyOp], writes: set[bytes]
) -> tuple[int, int] | None:
    """One transaction's cost and size, adding the keys it writes; ``None``: a range delete.

    On every registration, release and acknowledgement sent while others are on their
    way: plain loops, no closure (this was a sixth of the CPU of 10,000 registrations).
    """
    size = _OP_BYTES * len(cmp)
    for c in cmp:
        size += len(c.key)
    deepest = 0
    for branch in (ok, ko):
        for op in branch:
            if isinstance(op, PutOp):
                writes.add(op.key)
                size += len(op.key) + len(op.value) + _OP_BYTES
            elif isinstance(op, DeleteOp):
                if op.range_end is not None:
                    return None
                writes.add(op.key)
                size += len(op.key) + _OP_BYTES
            elif isinstance(op, TxnOp):
                inner = _walk(op.compare, op.success, op.failure, writes)
                if inner is None:
                    return None
                deepest = max(deepest, inner[0])
                size += inner[1]
            else:
                size += len(op.key) + _OP_BYTES
    return max(len(cmp), len(ok), len(ko)) + deepest, size
