"""Waiting reservations: a deletions-only watch per pool a process waits in, then one read.

A reservation that its own transaction did not admit waits for keys ahead of it to go. Only
a deletion ahead can admit it (appends go behind it; a raised limit or node capacity comes
from the limits and node views), so a process watches a pool's queue for deletions only,
and only while it has reservations waiting there: puts, and pools it does not wait in,
cost it nothing (a process used to apply every queue change of its tenant). Each waiter
counts the keys ahead of it, exactly: the reserving transaction reads the queue at its own
revision, where every other key is ahead (``count - 1``), and it keeps the amounts of the
keys that read returned. A deletion of a key created before the waiter's token lowers the
count. When what is left ahead could fit, one transaction decides: it compares the mod
revision of every limit judged against and reads the pool's queue up to the waiter's own
key (``max_create_revision``), judged by the rule of the reserving transaction
(:func:`~foundation_etcd._core.admission.judge_read`), so that crafted entries and
rewritten keys, which a deletions-only watch does not show, are seen there.

Guarantees:
    * Admission is decided only by a read of etcd (the reserving transaction's or the
      confirming one), never from a watch: the watch only says when to look, so a missed
      or stale count can delay a waiter, never admit one.
    * No wake-up is lost: the deletions after a waiter's count reach it (those at or below
      the revision it was counted at are already in it); a waiter that starts waiting after
      its pool's watch was created, or after a gap in that watch (history compacted, a
      deletion without its previous key), counts again with one keys-only read.
    * One watch per pool per process, however many of its reservations wait there, on the
      doorbells' stream; it is closed ``LINGER`` seconds after the last waiter left (a new
      watch costs a count).
    * A watch that etcd refuses for good (permissions, also after a new login) fails every
      waiter of its pool with that error; closed doorbells close them
      (``anyio.ClosedResourceError``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from .._core.admission import QUEUE_READ, Pool, decode_or_none, entry_amount, judge_read
from .._core.amounts import stored_limit
from .._core.errors import AuthError, QuotaError, QuotaExceededError
from .._core.keys import prefix_end
from .._core.kv import Compare, EventType, KeyValue, Op, RangeOp, RangeResult
from .._transport import Transport
from .doorbells import Bell, Doorbells

__all__ = ["LINGER", "PoolWatch", "QuotaWaits", "Waiter"]

LINGER = 10.0  # seconds a pool's watch outlives its last waiter
_LOG = 4096  # deletions a pool's watch remembers for waiters that join after them

Limits = Callable[[Pool], tuple[int | None, bytes, int]]


@dataclass(eq=False, slots=True)
class Waiter:
    """One waiting reservation's count of what is ahead of it, per pool.

    Attributes:
        token: the create revision of its keys.
        pools: its pools, with the amounts asked.
        keys: its queue key per pool name.
        ahead: per pool, keys created before ``token`` still queued, as counted.
        known: per pool, the amounts of keys ahead that a read returned (key to amount).
        counted_at: per pool, the revision the count is at.
        stale: pools whose count must be taken again (a gap, or joined late).
        woken: set when the waiter should look again.
        admitted_at: the revision of a read by another task of this process (a release)
            that found it admitted, or 0.
    """

    token: int
    pools: list[Pool]
    keys: dict[str, bytes]
    ahead: dict[str, int] = field(default_factory=dict)
    known: dict[str, dict[bytes, int]] = field(default_factory=dict)
    counted_at: dict[str, int] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    woken: anyio.Event = field(default_factory=anyio.Event)
    admitted_at: int = 0  # found admitted by another task's read (a release's)

    def count(self, pool: str, kvs: list[KeyValue], revision: int, ahead: int) -> None:
        """Take ``ahead`` keys as the count at ``revision``; remember the amounts read."""
        self.ahead[pool] = ahead
        self.known[pool] = {
            kv.key: entry_amount(kv, pool) for kv in kvs if kv.create_revision < self.token
        }
        self.counted_at[pool] = revision
        self.stale.discard(pool)

    def deleted(self, pool: str, revision: int, key: bytes, created: int) -> None:
        """Apply the deletion at ``revision`` of ``key`` created at ``created``."""
        if pool in self.stale or revision <= self.counted_at[pool] or created >= self.token:
            return
        self.ahead[pool] -= 1
        self.known[pool].pop(key, None)

    def may_fit(self, limits: Limits) -> bool:
        """Whether what is left ahead could fit in every pool (unknown amounts count 1)."""
        for p in self.pools:
            limit = limits(p)[0]
            if limit is None or p.name in self.stale:
                return False
            known = self.known[p.name]
            unknown = max(0, self.ahead[p.name] - len(known))
            if sum(known.values()) + unknown + p.amount > limit:
                return False
        return True

    def wake(self) -> None:
        """Make the waiter look again."""
        self.woken.set()


class PoolWatch:
    """The deletions-only watch of one pool's queue, shared by this process's waiters there.

    Args:
        bells: the doorbells stream that carries it.
        pool: the pool's name.
        prefix: the pool's queue prefix.
    """

    def __init__(self, bells: Doorbells, pool: str, prefix: bytes) -> None:
        self.pool, self.prefix = pool, prefix
        self.bell: Bell = bells.watch(prefix, prefix_end(prefix), -1, no_put=True, prev_kv=True)
        self.bell.notify = self._on_bell
        self.floor = 0  # every deletion above it is in ``log`` (0 until the watch is ready)
        self.log: deque[tuple[int, bytes, int]] = deque(maxlen=_LOG)
        self.waiters: set[Waiter] = set()
        self.error: BaseException | None = None
        self.idle_since: float | None = None

    async def ready(self) -> None:
        """Wait until etcd created the watch (deletions after it are all seen)."""
        if not self.floor:
            self.floor = await self.bell.ready()

    def join(self, w: Waiter) -> None:
        """Add a waiter: the deletions since its count are applied, or it counts again."""
        self.waiters.add(w)
        self.idle_since = None
        self.catch_up(w)

    def catch_up(self, w: Waiter) -> None:
        """Apply the remembered deletions after ``w``'s count, or mark it stale."""
        at = w.counted_at.get(self.pool, 0)
        if at < self.floor:
            w.stale.add(self.pool)
            return
        for revision, key, created in self.log:
            w.deleted(self.pool, revision, key, created)

    def leave(self, w: Waiter) -> None:
        """Remove a waiter; the watch lingers."""
        self.waiters.discard(w)
        if not self.waiters:
            self.idle_since = time.monotonic()

    def _on_bell(self) -> None:
        # called in the doorbells' reader: must not block or raise
        try:
            events = self.bell.take()
        except (AuthError, anyio.ClosedResourceError) as exc:
            self.error = exc
            for w in self.waiters:
                w.wake()
            return
        if events is None:
            return
        if not events:  # a gap: deletions up to the bell's revision may be missed
            self._gap()
            return
        for e in events:
            if e.type is not EventType.DELETE:
                continue
            if e.prev_kv is None:  # cannot tell whether it was ahead: count again
                self._gap()
                return
            if len(self.log) == self.log.maxlen:
                self.floor = self.log[0][0]  # what falls out is no longer remembered
            entry = (e.revision, e.kv.key, e.prev_kv.create_revision)
            self.log.append(entry)
            for w in self.waiters:
                w.deleted(self.pool, *entry)
        for w in self.waiters:
            w.wake()

    def _gap(self) -> None:
        self.log.clear()
        self.floor = max(self.floor, self.bell.revision)
        for w in self.waiters:
            w.stale.add(self.pool)
            w.wake()


class QuotaWaits:
    """The waiting reservations of one tenant in this process, and their pools' watches.

    Args:
        transport: the connection the counts and confirming reads go over.
        bells: the doorbells stream that carries the watches.
        queue_prefix: the prefix of the tenant's queues.
    """

    def __init__(self, transport: Transport, bells: Doorbells, queue_prefix: bytes) -> None:
        self._transport = transport
        self._bells = bells
        self._queue_prefix = queue_prefix
        self.watches: dict[str, PoolWatch] = {}
        self.waiters: dict[int, Waiter] = {}

    def wake_all(self) -> None:
        """Make every waiter look again (a limit or a node's capacity changed)."""
        for w in self.waiters.values():
            w.wake()

    def _prefix(self, pool: str) -> bytes:
        return b"%s%s/" % (self._queue_prefix, pool.encode())

    def _watch(self, pool: str) -> PoolWatch:
        pw = self.watches.get(pool)
        if pw is None or pw.error is not None or pw.bell.closed:
            pw = self.watches[pool] = PoolWatch(self._bells, pool, self._prefix(pool))
        return pw

    # handing over on release ------------------------------------------------------------
    def handover_reads(self, pools: list[Pool], limits: Limits) -> list[RangeOp]:
        """Reads for a release of ``pools`` to add, if it may admit a waiter of this process.

        A release that reads each pool's limit and queue head after its deletions sees,
        at its revision, whether the waiters of this process behind it are admitted
        (:meth:`released`): they need no read of their own. Tenant pools only (a node
        pool's limit is the node's announcement).
        """
        names = {p.name for p in pools}
        if any(p.node is not None for p in pools) or not any(
            all(q.name in names for q in w.pools) for w in self.waiters.values()
        ):
            return []
        ops: list[RangeOp] = []
        for p in pools:
            limit, key, _ = limits(p)
            ops.append(Op.get(key))
            ops.append(
                Op.get(
                    self._prefix(p.name),
                    prefix=True,
                    sort_by_create=True,
                    limit=min(QUEUE_READ, max(1, limit or 1)),
                )
            )
        return ops

    def released(self, pools: list[Pool], revision: int, reads: Sequence[object]) -> None:
        """Admit the waiters that a release's reads (``handover_reads``) show admitted."""
        heads: dict[str, tuple[int, list[KeyValue]]] = {}
        for i, p in enumerate(pools):
            limit_read, head = reads[2 * i], reads[2 * i + 1]
            assert isinstance(limit_read, RangeResult) and isinstance(head, RangeResult)
            kv = limit_read.first
            limit = None if kv is None else stored_limit(decode_or_none(kv.value))
            if limit is None:
                return
            heads[p.name] = (limit, head.kvs)
        for w in self.waiters.values():
            if w.admitted_at or not all(q.name in heads for q in w.pools):
                continue
            if all(
                judge_read(heads[q.name][1], q.name, w.keys[q.name], heads[q.name][0])[0] is True
                for q in w.pools
            ):
                w.admitted_at = revision
                w.wake()

    async def _count(self, w: Waiter, pool: str) -> None:
        """Count the keys ahead of ``w`` in ``pool`` again (one keys-only read)."""
        res = await self._transport.txn(
            [],
            [
                Op.get(
                    self._prefix(pool),
                    prefix=True,
                    keys_only=True,
                    max_create_revision=w.token - 1,
                )
            ],
        )
        read = res.range(0)
        present = {kv.key for kv in read.kvs}
        known = {k: a for k, a in w.known.get(pool, {}).items() if k in present}
        w.count(pool, [], read.revision, len(read.kvs))
        w.known[pool] = known  # the amounts read before, of the keys still ahead
        self.watches[pool].catch_up(w)

    async def confirm(
        self, w: Waiter, limits: Limits
    ) -> tuple[bool | None, int, QuotaExceededError | None]:
        """Decide ``w`` at one revision, from a read of each queue up to its own key.

        Returns:
            ``(admitted, revision, refusal)``: ``admitted`` is ``None`` when a limit changed
            since it was judged (catch up to ``revision`` and look again); ``refusal``
            describes the first pool without room when not admitted.

        Raises:
            QuotaError: a reservation key was deleted by another writer.
        """
        checks = [limits(p) for p in w.pools]
        res = await self._transport.txn(
            [Compare.mod_revision(key) == mod for _, key, mod in checks],
            [
                Op.get(
                    self._prefix(p.name),
                    prefix=True,
                    sort_by_create=True,
                    limit=max(1, limit or 1),
                    max_create_revision=w.token,
                )
                for p, (limit, _, _) in zip(w.pools, checks, strict=True)
            ],
        )
        if not res.succeeded:
            return None, res.revision, None
        refusal: QuotaExceededError | None = None
        for p, (limit, _, _), read in zip(w.pools, checks, res.responses, strict=True):
            assert isinstance(read, RangeResult)
            limit = limit or 0
            key = w.keys[p.name]
            at = next((i for i, kv in enumerate(read.kvs) if kv.key == key), None)
            if at is None:
                if not read.more:  # the read up to its token ended without it
                    raise QuotaError(f"reservation key {key!r} was deleted while it waited")
                # ``limit`` keys ahead: it cannot fit (each counts at least 1)
                w.stale.add(p.name)
                if refusal is None:
                    refusal = QuotaExceededError(
                        p.name, requested=p.amount, used=limit, limit=limit
                    )
                continue
            ok, used = judge_read(read.kvs[: at + 1], p.name, key, limit)
            # what the read showed ahead is exact at its revision: count from it
            w.count(p.name, read.kvs[:at], read.revision, at)
            if p.name in self.watches:
                self.watches[p.name].catch_up(w)
            if ok is not True and refusal is None:
                refusal = QuotaExceededError(p.name, requested=p.amount, used=used, limit=limit)
        return refusal is None, res.revision, refusal

    async def wait(
        self,
        w: Waiter,
        limits: Limits,
        catch_up: Callable[[int], Awaitable[None]],
        check: Callable[[], None],
    ) -> int:
        """Wait until ``w`` is admitted in every pool; return the revision it was found at.

        Args:
            w: the waiter, counted from its reserving transaction's reads.
            limits: a pool's current limit, its key and that key's mod revision.
            catch_up: awaited with a revision when a limit changed since it was judged.
            check: raises the error that stopped the limits view, if one did.

        Raises:
            AuthError: etcd refused a pool's watch for good.
            QuotaError: the reservation's key was deleted by another writer.
        """
        watches = [self._watch(p.name) for p in w.pools]
        self.waiters[w.token] = w
        try:
            for pw in watches:
                await pw.ready()
                pw.join(w)
            while True:
                if w.admitted_at:
                    return w.admitted_at
                check()
                for pw in watches:
                    if pw.error is not None:
                        raise pw.error
                w.woken = anyio.Event()
                for pool in list(w.stale):
                    await self._count(w, pool)
                if w.may_fit(limits):
                    admitted, revision, _ = await self.confirm(w, limits)
                    if admitted:
                        return revision
                    if admitted is None:
                        await catch_up(revision)
                    continue
                await w.woken.wait()
        finally:
            self.waiters.pop(w.token, None)
            for pw in watches:
                pw.leave(w)
                if pw.idle_since is not None:
                    asyncio.get_running_loop().call_later(LINGER, self._reap, pw)

    def _reap(self, pw: PoolWatch) -> None:
        """Close a pool's watch that stayed without waiters for ``LINGER`` seconds."""
        idle = pw.idle_since
        if idle is not None and time.monotonic() - idle >= LINGER * 0.99:
            pw.bell.close()
            if self.watches.get(pw.pool) is pw:
                del self.watches[pw.pool]
