"""Reserving quota: one transaction queues a reservation and decides it; waits use the view.

``reserve`` is **one transaction**: it creates the reservation's keys (one per pool, under
the session lease), checks that the limits it judged against are unchanged (mod revisions),
and reads the first ``min(QUEUE_READ, limit)`` keys of each queue at that revision (amounts
are at least 1, so a key behind the first ``limit`` keys cannot be admitted). The decision
is exact at once: no retry under contention, no second round trip. A reservation that must
wait, or whose queue was longer than what was read, waits on the process's watched view
(:class:`~foundation_etcd._coord.quota_view.QuotaView`), so the cost per reservation stays
bounded by ``QUEUE_READ`` keys on the wire and by the queue position in memory. A node
pool's limit (its announced capacity) comes from the node view, a different stream, so a
node-pool waiter confirms it with one compare of the node key.

Guarantees:
    * At any revision, a reservation newly admitted at that revision fits the pool's limit
      at that revision together with everything queued before it.
    * A crashed holder's reservations vanish with its lease; the next in line is admitted.
    * A live holder's keys never outlive their use: a release without an answer, or a
      reserving transaction whose answer was lost (even one applied later), leaves keys
      that are deleted in the background while the lease lives (``late_writes``).
    * FIFO per pool: a reservation is admitted only after every earlier one in that pool
      fits (no starvation of large requests by small ones).
    * Lowering a limit admits nothing new until usage is under it; holders keep theirs.
    * Bad input (zero, negative or non-integer amounts, unknown resources, amounts above
      the limit, which could never be admitted) raises at once and writes nothing.
    * **Crafted queue entries never admit more.** A tenant's role may write its ``queue/``,
      so entries the library did not write can appear there. An entry counts at its amount
      only if it is exactly what ``reserve`` writes: a JSON object whose ``amounts`` maps
      valid pool names to valid amounts (``_core.amounts``: ``int``, 1 to ``MAX_AMOUNT``),
      naming the pool of its key, never rewritten (version 1: the transport never retries
      a write, so ``reserve`` puts each key once). Any other entry (negative, zero,
      fractional, boolean, string or oversized amounts, unparsable or oversized values, no
      ``amounts``, amounts for other pools only, a rewritten key) counts as
      :data:`~foundation_etcd._core.amounts.BLOCKING`, more than any limit: it is never
      admitted, and nothing queued behind it in that pool is admitted until it is deleted.
      Both judges, the reserving transaction's read (here) and the view (``quota_view``),
      apply this one rule (``_core.admission``), and each entry still counts at least 1, so
      a key behind the first ``limit`` keys is still never admitted. Keys in a queue no
      pool has (a bad pool name) are ignored by both. ``reserve`` creates its keys
      create-only: a key of its name that another writer put first is left alone and the
      reservation takes a fresh name.
    * The body of ``reserve`` runs under the session lease: when the lease is lost the
      reservation is gone, so the body is cancelled (``LeaseLostError``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anyio.lowlevel import checkpoint_if_cancelled

from .._core import metrics
from .._core.admission import CACHE_SIZE, QUEUE_READ, Pool, encode_reservation, judge_read
from .._core.amounts import check_amounts
from .._core.background import cleanup_scope
from .._core.errors import EtcdError, InvalidReservationError, QuotaExceededError
from .._core.keys import pool_name, validate_id
from .._core.kv import Compare, Op, RangeResult
from .late_writes import delete_left_key

if TYPE_CHECKING:
    from .._core.keys import Keyspace
    from .quota_view import QuotaView
    from .session import Session
    from .watch import WatchedView

__all__ = ["Reservation", "Reserver"]

log = logging.getLogger("foundation_etcd.quotas")


def _unused() -> bool:
    """A reservation key left behind is never used again (its name is not reused)."""
    return False


@dataclass(frozen=True, slots=True)
class Reservation:
    """An admitted reservation.

    Attributes:
        reservation_id: its id, ``{lease_hex}-{n}`` (reused by this process once released).
        amounts: pool name to amount (node pools are named ``@{node_id}@{resource}``).
        keys: its queue keys, one per pool.
        token: the create revision of its keys (its place in every queue, and its
            identity: unique, where the id is not).
        lease_id: the lease the keys live under.
    """

    reservation_id: str
    amounts: Mapping[str, int]
    keys: tuple[bytes, ...]
    token: int
    lease_id: int

    @property
    def guard(self) -> list[Compare]:
        """Compares that hold while this reservation exists."""
        return [Compare.create_revision(k) == self.token for k in self.keys]


class Reserver:
    """Reserves one tenant's pools under a session lease, judged against its quota view.

    Args:
        session: the session whose lease holds the reservations.
        keyspace: the tenant's key layout.
        quota_view: the process's view of the tenant's limits and queues.
        holder: who reserves (the node id), written into each reservation.
    """

    def __init__(
        self, session: Session, keyspace: Keyspace, quota_view: QuotaView, *, holder: str
    ) -> None:
        self._session = session
        self._transport = session.transport
        self._holder = holder
        self._ks = keyspace
        self._quota_view = quota_view
        self._encoded: dict[tuple[tuple[str, int], ...], bytes] = {}  # amounts -> value
        self._names: list[tuple[int, int]] = []  # released reservation ids: (lease, n)
        self._slots = 0

    # checking ------------------------------------------------------------------------------
    def _check(
        self, amounts: Mapping[str, int], node: str | None, *, final: bool = True
    ) -> list[Pool] | None:
        """Validate a request and pair it with the limits it is judged against.

        With ``final=False``, returns ``None`` instead of raising when a limit is missing or
        too low for an amount: the view may not have seen a limit written just now.
        """
        checked = check_amounts(amounts, "amount", InvalidReservationError, allow_empty=False)
        if node is not None:
            validate_id(node, "node id")
        pools = []
        for resource, amount in checked.items():
            pool = pool_name(resource, node)
            limit, key, mod = self._quota_view.current_limit(pool, node)
            if limit is None or amount > limit:
                if not final:
                    return None
                if limit is None:
                    where = f"node {node!r}" if node else f"tenant {self._ks.tenant!r}"
                    raise InvalidReservationError(f"{where} has no limit for resource {resource!r}")
                raise InvalidReservationError(
                    f"{amount} {resource} can never be admitted: the limit is {limit}"
                )
            pools.append(Pool(pool, amount, limit, key, mod, node))
        return pools

    async def _check_caught_up(
        self, amounts: Mapping[str, int], node: str | None, view: WatchedView
    ) -> list[Pool]:
        """Catch up with etcd, then ``_check`` for good (the view lacked a fitting limit)."""
        rev = await self._transport.revision()  # linearizable (a read: no txn)
        await view.wait_for(rev)
        if node is not None:
            await self._quota_view.wait_nodes(rev)
        pools = self._check(amounts, node)
        assert pools is not None
        return pools

    # names and values ----------------------------------------------------------------------
    def _take_name(self, lease_id: int, *, fresh: bool = False) -> tuple[str, int]:
        """A reservation id: ``{lease:x}-{n}``, reusing the names of released reservations.

        Fresh names would leave etcd a deleted key per reservation in its index until the
        next compaction, and every queue read scans them: reads slow down with churn. The
        ids of one process's lease are reused once their keys are known to be deleted, so
        a queue's index holds at most the peak number of concurrent reservations per lease.
        With ``fresh``, a name never used by this process (the last one was taken by
        another writer).
        """
        while self._names and not fresh:
            owner, slot = self._names.pop()
            if owner == lease_id:
                return f"{lease_id:x}-{slot}", slot
        self._slots += 1
        return f"{lease_id:x}-{self._slots}", self._slots

    def _value(self, pools: list[Pool]) -> bytes:
        """The reservation's value (cached: the same amounts give the same bytes)."""
        shape = tuple((p.name, p.amount) for p in pools)
        value = self._encoded.get(shape)
        if value is None:
            value = encode_reservation(dict(shape), self._holder)
            if len(self._encoded) >= CACHE_SIZE:
                self._encoded.clear()
            self._encoded[shape] = value
        return value

    # reserving -----------------------------------------------------------------------------
    @asynccontextmanager
    async def reserve(
        self, amounts: Mapping[str, int], node: str | None, *, nowait: bool
    ) -> AsyncIterator[Reservation]:
        """Queue ``amounts``, wait until admitted (or raise, with ``nowait``), release on exit.

        Raises:
            InvalidReservationError: bad amounts, unknown resources, or an amount above
                the limit (nothing written).
            QuotaExceededError: with ``nowait``, not admissible now (keys withdrawn).
            LeaseLostError: the session lease was lost (the reservation went with it).
        """
        started = metrics.now()
        quota_view = self._quota_view
        transport = self._transport
        quota_view.enter_reserving()  # until admitted: the tenant view is not closed
        reserving = True
        try:
            view = quota_view.watched or await quota_view.open_limits()
            pools = self._check(amounts, node, final=False) or await self._check_caught_up(
                amounts, node, view
            )
            lease = await self._session.wait_lease()
            value = self._value(pools)
        except BaseException:
            quota_view.leave_reserving()
            raise
        rid, slot = self._take_name(lease.id)
        qp = quota_view.queue_prefix
        keys = tuple(b"%s%s/%s" % (qp, p.name.encode(), rid.encode()) for p in pools)
        token = 0
        attempted = unanswered = False
        try:
            with lease.guard():
                for _attempt in range(10):
                    attempted = unanswered = True
                    res = await transport.txn(
                        [Compare.mod_revision(p.limit_key) == p.limit_mod for p in pools]
                        # create-only: a key is never overwritten, so every key reserve
                        # writes has version 1 (``entry_amount`` relies on it)
                        + [Compare.create_revision(k) == 0 for k in keys],
                        [Op.put(k, value, lease=lease.id) for k in keys]
                        + [
                            Op.get(
                                b"%s%s/" % (qp, p.name.encode()),
                                prefix=True,
                                limit=min(QUEUE_READ, p.limit),
                                sort_by_create=True,
                            )
                            for p in pools
                        ],
                        [Op.get(k) for k in keys],
                    )
                    unanswered = False
                    if res.succeeded:
                        token = res.revision
                        break
                    if any(isinstance(r, RangeResult) and r.kvs for r in res.responses):
                        # another writer took the name (this process's keys are deleted
                        # before it reuses a name): leave that key alone, drop the name
                        rid, slot = self._take_name(lease.id, fresh=True)
                        keys = tuple(
                            b"%s%s/%s" % (qp, p.name.encode(), rid.encode()) for p in pools
                        )
                        continue
                    # a limit changed since the view saw it: catch up and judge again
                    view = await quota_view.open_limits()
                    await view.wait_for(res.revision)
                    if node is not None:
                        await quota_view.wait_nodes(res.revision)
                    pools = self._check(amounts, node, final=False) or await self._check_caught_up(
                        amounts, node, view
                    )
                else:
                    raise EtcdError("limits or names kept changing; reservation not attempted")
                admitted = self._admitted_from_reads(res.responses[len(keys) :], pools, keys)
                reservation = Reservation(
                    rid, {p.name: p.amount for p in pools}, keys, token, lease.id
                )
                if admitted is not True:
                    if nowait and isinstance(admitted, QuotaExceededError):
                        raise admitted
                    await self._wait_admitted(pools, keys[0], token, nowait=nowait)
                await checkpoint_if_cancelled()  # no body in a scope cancelled meanwhile
                metrics.quota_admitted(self._ks.tenant, [p.name for p in pools], started)
                reserving = False
                quota_view.leave_reserving()
                yield reservation
        finally:
            if reserving:
                quota_view.leave_reserving()
            released = False
            if attempted:
                with cleanup_scope(self._session.config.request_timeout):
                    try:
                        # without an answer the put may have been applied all the same
                        guard = [Compare.create_revision(k) == token for k in keys if token]
                        await transport.txn(guard, [Op.delete(k) for k in keys])
                        released = True
                    except EtcdError as exc:
                        log.warning("release of %s failed (%s); retried in background", rid, exc)
            if (released and token) or not attempted:
                self._names.append((lease.id, slot))  # its keys are gone: the name is free
            if attempted and (unanswered or not released):
                # a key may be left (now, or applied late); its name is never used again
                for k in keys:
                    delete_left_key(self._session, k, lease, _unused, late=unanswered)

    # admission -----------------------------------------------------------------------------
    def _exceeded(self, pools: list[Pool], token: int) -> QuotaExceededError:
        """The error for the first pool where the reservation (queued at ``token``) has no room."""
        for p in pools:
            limit = self._quota_view.current_limit(p.name, p.node)[0]
            limit = p.limit if limit is None else limit
            through = self._quota_view.queue(p.name).sum_through(token) or p.amount
            if through > limit:  # a malformed entry ahead shows as the whole limit used
                used = min(through - p.amount, limit)
                return QuotaExceededError(p.name, requested=p.amount, used=used, limit=limit)
        p = pools[0]
        return QuotaExceededError(p.name, requested=p.amount, used=p.limit, limit=p.limit)

    def _admitted_from_reads(
        self, reads: Sequence[object], pools: list[Pool], keys: tuple[bytes, ...]
    ) -> bool | QuotaExceededError | None:
        """Decide from the transaction's own reads (exact at its revision, see ``judge_read``).

        Returns ``True`` when admitted, the error to raise when not admitted now, and
        ``None`` when a queue was longer than what the transaction read.
        """
        refused: QuotaExceededError | None = None
        for read, p, key in zip(reads, pools, keys, strict=True):
            assert isinstance(read, RangeResult)
            admitted, used = judge_read(read.kvs, p.name, key, p.limit)
            if admitted is None:
                return None
            if not admitted and refused is None:
                refused = QuotaExceededError(p.name, requested=p.amount, used=used, limit=p.limit)
        return True if refused is None else refused

    def _admitted_now(self, pools: list[Pool], token: int) -> bool:
        for p in pools:
            limit = self._quota_view.current_limit(p.name, p.node)[0]
            through = self._quota_view.queue(p.name).sum_through(token)
            if limit is None or through is None or through > limit:
                return False
        return True

    async def _wait_admitted(
        self, pools: list[Pool], key: bytes, token: int, *, nowait: bool
    ) -> None:
        node_pools = [p for p in pools if p.node is not None]
        quota_view = self._quota_view
        view = await quota_view.open()  # the tenant's limits and queues, in one stream
        if nowait:  # judge once the view has the own write (an event comes)
            await view.wait_for_key(key, token)
        while True:
            view._check()  # a view stopped by an error (permissions) raises it here
            if self._admitted_now(pools, token):
                if not node_pools:
                    return  # limits and queues come from one stream: exact as seen
                # a node's capacity comes from the node view, another stream: confirm that
                # the capacity judged against is still current (one compare)
                checks = [quota_view.current_limit(p.name, p.node) for p in node_pools]
                ok = await self._transport.txn(
                    [Compare.mod_revision(key) == mod for _, key, mod in checks], []
                )
                if ok.succeeded:
                    return
                await quota_view.wait_nodes(ok.revision)
                continue
            if nowait:
                raise self._exceeded(pools, token)
            # sleep until a change admits this reservation (or the view stops)
            await quota_view.sleep_until_admitted(pools, token)
