"""Delivering signals to a hosted agent: one at a time, in commit order, exactly-once effect.

The node runtime runs one :class:`Deliverer` per hosted agent incarnation. It reads the
agent's inbox in create-revision order and waits on a doorbell (one watch of the node's
shared multiplexed stream) when it is empty. For each signal it runs the handler
(``handle_signal(signal, ctx)``, or the action a call names) and then commits **one
transaction**, guarded by ``create_revision(agents/live/{id}) == incarnation`` and by the
inbox entry's ``mod_revision``, that

* deletes the inbox entry and bumps the agent's ``acked`` counter,
* puts the agent's new state checkpoint (``get_state()``),
* puts the done record (dedupe for the id, and the reply of a call),
* puts the *started* marker the next signal needs, if any (``attempts``),
* puts the signals the handler emitted with ``ctx.send`` (the outbox), each in a nested
  transaction that skips it if that id is already there.

The acknowledgements of a node's agents that commit at the same moment go to etcd together,
each a nested transaction with its own compares (``_coord/coalesce.py``).

Guarantees:
    * **Exactly-once effect on state.** A signal's effect on the checkpointed state and its
      emitted signals are committed together once, or not at all. A handler interrupted by
      a crash, a lease loss or a failure leaves nothing in etcd; the signal is delivered
      again, to this incarnation after a failure (the in-memory state first restored from
      the last commit with ``restore_state``) or to the next one after a crash, with the
      same id and a higher ``attempt``.
    * **A stale incarnation can do nothing**: a paused process whose agent was hosted again
      elsewhere fails the incarnation compare; it can neither acknowledge, nor write state,
      nor emit. Its in-memory effects die with it.
    * **Per-agent FIFO**: signals are handled one at a time in the order their sends
      committed; a failing signal is retried in place with backoff (it blocks the ones
      behind it) and after ``Config.signal_max_attempts`` attempts goes to dead letters,
      as do expired and undecodable ones.
    * An acknowledgement whose answer was lost is retried: its compares make a second
      attempt fail harmlessly, and the done record tells that the first one committed.
    * Effects outside etcd (an HTTP call, a model call) are at least once: use
      ``signal.id`` as their idempotency key (``attempt > 1`` says it may have run).
    * Emits to an agent that is not spawned when the handling commits are dropped (logged),
      and the outbox is admitted past the target's inbox limit: refusing it would block the
      parent for ever.

On lease loss: the runtime cancels the deliverer with the agent, before etcd can expire the
lease; the handler in flight is abandoned and nothing of it is committed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from .._coord.audit import AuditLog
from .._coord.coalesce import Coalescer
from .._coord.doorbells import Doorbells
from .._core import codec as _codec
from .._core import metrics
from .._core.checkpoints import encode_state
from .._core.errors import (
    AmbiguousResultError,
    EtcdUnavailableError,
    IncarnationLostError,
    InvalidIdError,
    RequestTooLargeError,
    SerializationError,
    TooManyOperationsError,
)
from .._core.keys import Keyspace, prefix_end, validate_id
from .._core.kv import AnyOp, Compare, KeyValue, Op, TxnOp, TxnResult
from .._core.signals import Signal, Stored, decode_signal, encode_signal
from .._transport import Transport
from .agent import AgentContext, call_hook, in_thread, is_async_callable
from .attempts import attempt_of, covers_next, explicit, standing
from .dead_letters import encode_letter
from .handlers import (
    ActionFailed,
    RetentionLease,
    SignalContext,
    decoded,
    done_by,
    run_action,
)
from .protection import Trust, seal_reply
from .signals import CALL_TYPE, fresh

__all__ = ["Deliverer", "RetentionLease", "SignalContext"]

log = logging.getLogger("foundation_etcd.signals")

_BATCH = 64
_BACKOFF_CAP = 30.0
_MAX_ACK_BYTES = 1400 * 1024  # under etcd's 1.5 MiB request limit, with the reply


class _Undone(Exception):
    """The acknowledgement did not commit and will not: the entry changed under us."""


class Deliverer:
    """Delivers one agent incarnation's signals. Built and run by the node runtime."""

    def __init__(
        self,
        *,
        transport: Transport,
        keyspace: Keyspace,
        config: Any,
        doorbells: Doorbells,
        retention: RetentionLease,
        envelope: Callable[..., tuple[Signal, bytes]],
        ctx: AgentContext,
        agent: object,
        restored: Any,
        event: Callable[..., None],
        acks: Coalescer | None = None,
    ) -> None:
        """Build it; :meth:`run` delivers (see the module docstring)."""
        self._t, self._ks, self._cfg = transport, keyspace, config
        self._bells, self._retention, self._envelope = doorbells, retention, envelope
        self._acks = acks or Coalescer(transport)  # shared: other agents' acks go with this
        self._ctx, self._agent, self._event = ctx, agent, event
        self._id, self._inc = ctx.agent_id, ctx.incarnation
        ks, ident = keyspace, self._id  # the agent's own keys, built once
        self._live, self._inbox = ks.agent_live(ident), ks.inbox_prefix(ident)
        self._acked, self._state_key = ks.signals_acked(ident), ks.agent_state(ident)
        self._inflight = ks.signal_inflight(ident)
        self._committed = restored  # the state as of the last commit (or the restore)
        self._stateful = callable(getattr(agent, "get_state", None))
        self.inbox_depth = 0  # signals waiting when the last one was taken (health, metrics)
        self.handling = anyio.Lock(fast_acquire=True)  # held while effects are uncommitted
        self.dirty, self.handled = False, 0
        self._marker: dict[str, Any] = {}
        self._ahead: tuple[KeyValue, Stored | None] | None = None  # see _decode
        self._trust, self._keyring = Trust.of(transport, keyspace), config.keyring

    # the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver until cancelled.

        Raises:
            IncarnationLostError: a newer incarnation is live (or none): stop the agent.
        """
        prefix = self._inbox
        if self._stateful:  # what a failed handler's effects are undone to
            state = await call_hook(self._agent, "get_state")
            self._committed = _codec.decode(_codec.encode(state, "agent state", 2**21))
        marker = await self._t.get(self._inflight)
        if marker is not None:
            read = decoded(marker.value)
            self._marker = read if isinstance(read, dict) else {}
        queue: deque[KeyValue] = deque()
        last_create = 0
        res = await self._t.range(
            Op.get(prefix, range_end=prefix_end(prefix), sort_by_create=True, limit=_BATCH)
        )
        bell = self._bells.watch(prefix, prefix_end(prefix), res.revision, no_delete=True)
        try:
            queue.extend(res.kvs)
            more = res.more
            while True:
                if not queue:
                    if more:
                        page = Op.get(prefix, prefix=True, sort_by_create=True, limit=_BATCH)
                        res = await self._t.range(page)
                        queue.extend(kv for kv in res.kvs if kv.create_revision > last_create)
                        more = res.more
                        continue
                    self.inbox_depth = 0  # seen empty
                    events = await bell.wait()
                    if getattr(bell, "missed", False):
                        bell.missed = False
                        more = True
                        continue
                    for ev in events:
                        kv = ev.kv
                        if kv.create_revision > last_create and kv.version == 1:
                            queue.append(kv)
                    continue
                kv = queue.popleft()
                # exact unless more than a page waits: then at least the last read's count
                self.inbox_depth = len(queue) + 1 if not more else max(len(queue) + 1, res.count)
                metrics.inbox_depth(self._ks.tenant, self._ctx.node_id, self.inbox_depth)
                try:
                    await self._deliver(kv, queue[0] if queue else None)
                except _Undone:
                    queue.clear()
                    more = True
                    continue
                last_create = kv.create_revision
        finally:
            bell.close()

    # one signal ----------------------------------------------------------------------------
    def _mark(self, kv: KeyValue | None, attempt: int, after: int = 0) -> AnyOp:
        """The marker op (``attempts``): ``kv`` started as ``attempt``; ``None``: standing."""
        m = explicit(kv.create_revision, self._inc, attempt) if kv else standing(after, self._inc)
        self._marker = m
        return Op.put(self._inflight, _codec.encode(m, "marker", 1024))

    def _decode(self, kv: KeyValue) -> Stored | None:
        """The entry decoded, once: the ack that marks the next head decodes it for it."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is kv:
            return ahead[1]
        ring, ctx = self._keyring, self._ks.prefix
        return decode_signal(kv.value, kv.create_revision, keyring=ring, context=ctx)

    async def _deliver(self, kv: KeyValue, after: KeyValue | None) -> None:
        stored = self._decode(kv)
        if stored is None:  # not written by ``send`` (nor counted by it): not counted out
            await self._dead(kv, None, "undecodable", 0, counted=False)
            return
        signal = stored.signal
        key_id = kv.key[len(self._inbox) :].decode(errors="replace")
        if signal.id != key_id or signal.subject != self._id:  # not written by ``send``
            await self._dead(kv, None, "envelope does not match its key", 0, counted=False)
            return
        cfg = self._cfg  # a refused signal (protection.py) never reaches the handler
        if stored.error or signal.signature or cfg.require_signed_signals:  # else nothing to check
            refused = await self._trust.refusal(
                stored, required=cfg.require_signed_signals, retention=cfg.signal_retention
            )
            if refused is not None:
                return await self._dead(kv, signal, refused, 0)
        attempt, unmarked = attempt_of(self._marker, kv.create_revision, stored.failures, self._inc)
        if signal.deadline is not None and time.time() > signal.deadline:
            await self._dead(kv, signal, "expired", attempt - 1)
            return
        if attempt > self._cfg.signal_max_attempts:
            why = f"{attempt - 1} attempts failed" + (
                f"; last: {signal.last_error}" if signal.last_error else ""
            )
            await self._dead(kv, signal, why, attempt - 1)
            return
        wait = stored.not_before - time.time()
        if wait > 0:
            await anyio.sleep(min(wait, _BACKOFF_CAP))
        signal = signal.with_attempt(attempt, kv.create_revision, signal.last_error)
        ctx = SignalContext(
            self._id, self._ctx.node_id, self._inc, self._ctx.cluster, signal, [], self._envelope
        )
        if unmarked:  # the head is about to run: a crash from here on counts as an attempt
            await self._guarded([self._mark(kv, attempt)])
        async with self.handling:
            self.dirty = True
            reply, error = await self._handle(signal, ctx)
            if error is not None and not signal.reply:
                await self._restore()
                self.dirty = False
                await self._failed(kv, stored.failures + 1, attempt, error)
                return
            if error is not None:  # an action's error is its reply; its effects are undone
                await self._restore()
                ctx._outbox.clear()
            keep = self._stateful and error is None
            try:
                state = await call_hook(self._agent, "get_state") if keep else None
                ops = self._ack_ops(kv, signal, keep, state, reply, ctx._outbox, after)
            except (SerializationError, RequestTooLargeError, TooManyOperationsError) as exc:
                # the handling cannot be committed as it is: a failure like the handler's
                await self._restore()
                self.dirty = False
                await self._failed(kv, stored.failures + 1, attempt, f"{type(exc).__name__}: {exc}")
                return
            done = await self._done(kv, signal, reply)
            await self._commit(kv, signal, [*ops, done])
            if keep:
                self._committed = _codec.decode(_codec.encode(state, "agent state", 2**21))
            self.dirty = False
        self.handled += 1
        metrics.signal_handled(self._ks.tenant, self._ctx.node_id, attempt, signal.time)
        self._event("signal", agent=self._id, signal=signal.id, attempt=attempt)

    async def _handle(self, signal: Signal, ctx: SignalContext) -> tuple[Any, str | None]:
        """Run the handler; return ``(reply, None)`` or ``(None, "Type: message")``."""
        agent = self._agent
        try:
            if signal.type == CALL_TYPE and signal.reply:
                return await run_action(self._agent, signal, self._cfg.signal_max_bytes), None
            handler = getattr(agent, "handle_signal", None)
            if not callable(handler):
                return None, "NoHandler: the agent has no handle_signal"
            if is_async_callable(handler):
                await handler(signal, ctx)
            else:  # a plain handler runs in a worker thread, never on the event loop
                await in_thread(functools.partial(handler, signal, ctx))
            return None, None
        except ActionFailed as exc:
            return {"error": {"type": exc.type_name, "message": exc.message}}, exc.summary
        except Exception as exc:  # the handler's own failure: retried, then dead-lettered
            log.warning("agent %s: handler failed on %s: %r", self._id, signal.id, exc)
            return None, f"{type(exc).__name__}: {exc}"

    async def _restore(self) -> None:
        """Undo a failed handler's in-memory effects: back to the last committed state."""
        if self._stateful and callable(getattr(self._agent, "restore_state", None)):
            copy = _codec.decode(_codec.encode(self._committed, "agent state", 2**21))
            await call_hook(self._agent, "restore_state", copy)

    # the transactions ----------------------------------------------------------------------
    def _fence(self, kv: KeyValue) -> list[Compare]:
        return [
            Compare.create_revision(self._live) == self._inc,
            Compare.mod_revision(kv.key) == kv.mod_revision,
        ]

    async def _guarded(self, ops: list[AnyOp]) -> None:
        """Write ``ops`` only while this incarnation is live."""
        res = await self._t.txn([Compare.create_revision(self._live) == self._inc], ops)
        if not res.succeeded:
            raise self._lost()

    def _lost(self) -> IncarnationLostError:
        return IncarnationLostError(
            self._id, key=self._live, token=self._inc, reason="a newer incarnation is live"
        )

    async def _done(self, kv: KeyValue, signal: Signal, reply: Any) -> AnyOp:
        """The done record: dedupe for the id and the reply, under the retention lease."""
        done: dict[str, Any] = {"at": time.time(), "inc": self._inc, "rev": kv.create_revision}
        if reply is not None:
            limit, ring = self._cfg.signal_max_bytes, self._keyring
            done |= seal_reply(ring, self._ks, self._id, signal.id, reply, limit)
        value = _codec.encode(done, "reply", self._cfg.signal_max_bytes + 1024)
        lease = await self._retention.get()
        return Op.put(self._ks.signal_done(self._id, signal.id), value, lease=lease)

    def _ack_ops(
        self,
        kv: KeyValue,
        signal: Signal,
        keep: bool,
        state: Any,
        reply: Any,
        outbox: list[tuple[Signal, bytes]],
        after: KeyValue | None,
    ) -> list[AnyOp]:
        """The handling's writes besides the done record (checked before anything is sent).

        Raises:
            SerializationError, RequestTooLargeError, TooManyOperationsError: the state or
                the whole transaction cannot be sent.
        """
        ks = self._ks
        ops: list[AnyOp] = [Op.delete(kv.key), Op.put(self._acked, b"")]
        if keep:
            value = encode_state(self._inc, state, self._keyring, self._state_key)
            ops.append(Op.put(self._state_key, value))
        if after is not None:  # the next signal is marked started by this commit
            nxt = self._decode(after)
            self._ahead = (after, nxt)  # the queue's next entry: delivered as it was read
            ops.append(self._mark(after, (nxt.failures if nxt else 0) + 1))
        elif not covers_next(self._marker, self._inc):  # the next head needs no marker Txn
            ops.append(self._mark(None, 0, kv.create_revision))
        for emitted, value in outbox:  # each skipped if its id is there already
            t, eid = emitted.subject, emitted.id
            put = [Op.put(ks.inbox(t, eid), value), Op.put(ks.signals_sent(t), b"")]
            ops.append(Op.txn(fresh(ks, t, eid, ks.agent_spec(t)), put))
        size = sum(len(getattr(op, "value", b"")) for op in ops) + sum(len(v) for _, v in outbox)
        if size > _MAX_ACK_BYTES:
            raise RequestTooLargeError(size, _MAX_ACK_BYTES, "acknowledgement (state + outbox)")
        return ops

    async def _commit(self, kv: KeyValue, signal: Signal, ops: list[AnyOp]) -> None:
        """Commit the handling; retried while its outcome is unknown.

        Its compares make a second commit fail once the first took effect.
        """
        delay = 0.05  # (never over a done record: an id handled once is never applied again)
        unhandled = Compare.create_revision(self._ks.signal_done(self._id, signal.id)) == 0
        while True:
            try:
                res = await self._acks.txn([*self._fence(kv), unhandled], ops)
            except (AmbiguousResultError, EtcdUnavailableError) as exc:
                log.info("agent %s: ack of %s unsure (%s); retrying", self._id, signal.id, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if res.succeeded:
                for op, out in zip(ops, res.responses, strict=True):
                    if not (isinstance(out, TxnResult) and isinstance(op, TxnOp)):
                        continue  # an emit is a nested transaction, each with its answer
                    if out.succeeded:
                        metrics.signal_sent(self._ks.tenant)  # newly in its inbox
                        continue
                    key = getattr(op.success[0], "key", b"") if op.success else b""
                    log.warning(  # to an agent not spawned, or a duplicate id
                        "agent %s: emit %r dropped by the commit of %s", self._id, key, signal.id
                    )
                    self._event("emit-dropped", agent=self._id, signal=signal.id)
                return
            live = await self._t.get(self._live)
            if live is None or live.create_revision != self._inc:
                raise self._lost()
            done = await self._t.get(self._ks.signal_done(self._id, signal.id))
            if done is not None and done_by(done) == (self._inc, kv.create_revision):
                return  # the first attempt committed
            await self._restore()
            self._marker = {}  # what this commit would have marked is not in etcd
            if done is not None:  # its id was handled already: an entry put again, not sent
                await self._dead(kv, signal, "its id was handled already", 0, counted=False)
            raise _Undone

    async def _failed(self, kv: KeyValue, failures: int, attempt: int, error: str) -> None:
        stored = decode_signal(kv.value)
        if attempt >= self._cfg.signal_max_attempts:
            await self._dead(kv, stored.signal if stored else None, error, attempt)
            return
        assert stored is not None
        backoff = min(_BACKOFF_CAP, 0.1 * 2 ** (attempt - 1))
        signal = stored.signal.with_attempt(attempt, 0, error[:1000])
        value = encode_signal(
            signal,
            self._cfg.signal_max_bytes + 2048,
            failures=failures,
            not_before=time.time() + backoff,
        )
        self._marker = {}
        res = await self._t.txn(self._fence(kv), [Op.put(kv.key, value)])
        if not res.succeeded:
            raise _Undone
        self._event("signal-failed", agent=self._id, signal=signal.id, attempt=attempt)
        raise _Undone  # read the entry again (its new value and mod revision)

    async def _dead(
        self, kv: KeyValue, signal: Signal | None, reason: str, attempts: int, counted: bool = True
    ) -> None:
        sid = kv.key[len(self._inbox) :].decode(errors="replace")
        try:
            validate_id(sid, "signal id")
        except InvalidIdError:  # a key no sender wrote: filed under a name derived from it
            sid = "invalid-" + hashlib.sha256(kv.key).hexdigest()[:24]
        value = encode_letter(kv.value, signal, reason, attempts)
        letter = Op.put(self._ks.dead_letter(self._id, sid), value)
        ack = [Op.put(self._acked, b"")] if counted else []  # ``sent - acked``: the inbox
        res = await self._t.txn(self._fence(kv), [Op.delete(kv.key), *ack, letter])
        if not res.succeeded:
            live = await self._t.get(self._live)
            if live is None or live.create_revision != self._inc:
                raise self._lost()
            raise _Undone
        metrics.signal_dead_lettered(self._ks.tenant, self._ctx.node_id)
        audit = AuditLog(self._t, self._ks, actor=self._ctx.node_id)
        await audit.note("dead-letter", {"agent": self._id, "signal": sid, "reason": reason[:256]})
        self._event("signal-dead", agent=self._id, signal=sid, reason=reason)
