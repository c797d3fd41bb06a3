"""Sending signals: ``send``, ``publish``, ``call``, inboxes and dead letters.

Keys (under the tenant prefix)::

    inbox/{agent}/{signal_id}          a waiting signal; FIFO by create revision   (no lease)
    signals/sent/{agent}               version = signals ever accepted for the agent
    signals/acked/{agent}              version = signals ever taken out (handled or dead)
    signals/done/{agent}/{signal_id}   handled: the dedupe record and the reply   (retention lease)
    signals/dead/{agent}/{signal_id}   given up on, with the reason               (no lease)
    signals/inflight/{agent}           the signal its hosts started last (``attempts.py``)
    signals/subs/{agent}               the agent's topic patterns

Guarantees:
    * :meth:`Signals.send` returns once the signal is durable in etcd, decided by **one**
      transaction that also checks the target is spawned, that the id is new (not waiting,
      not handled within ``Config.signal_retention``, not dead-lettered) and that the inbox
      has room. Sending an id again after an ambiguous result delivers nothing twice: the
      second send reports ``duplicate=True``.
    * **The bound is exact**: the inbox never holds more than ``Config.signal_inbox_limit``
      signals accepted by ``send``. The transaction compares the agent's two counters'
      versions against a window this process learnt (``sent < s + free`` and
      ``acked >= a``, where ``free = limit - (s - a)``), so concurrent senders need no
      compare-and-swap on a shared key; when the window is used up the same transaction's
      failure branch returns the counters, and the send either fails with
      :class:`InboxFullError` (nothing written) or retries with the new window. Redriven
      dead letters are admitted the same way; a handler's emits (its outbox) are admitted
      past the bound (refusing them would block the parent for ever, see ``delivery.py``).
    * Input is checked before anything is sent (ids, type, JSON payload, size).
    * ``call`` (``calls.py``) waits for the reply record the handling transaction writes
      (on watches shared by the calls to one agent, ``replies.py``);
      the caller's deadline (``anyio.fail_after``) raises :class:`CallTimeoutError`: the
      action may still run, once, and calling again with the same ``call_id`` waits for
      that one outcome.

On lease loss: nothing here is under the session lease. A send in flight when etcd stops
answering raises :class:`AmbiguousResultError`; send the same ``signal_id`` again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._coord.doorbells import Doorbells
from .._coord.session import Session
from .._core import codec as _codec
from .._core import metrics
from .._core.errors import (
    AgentNotFoundError,
    InboxFullError,
    InvalidIdError,
)
from .._core.keys import Keyspace, validate_id
from .._core.kv import AnyOp, Compare, Op, PutResult, TxnResult
from .._core.signals import (
    Signal,
    encode_signal,
    new_signal_id,
    patterns_of,
    signed_bytes,
    topic_matches,
    validate_topic,
)
from .._core.signing import load_signer
from .._transport import MAX_REQUEST_BYTES
from .replies import Replies

__all__ = ["CALL_TYPE", "PublishResult", "SendResult", "Signals", "admission", "probe"]

CALL_TYPE = "foundation.call"
SEND_ATTEMPTS = 16
_PUBLISH_BATCH = 32  # subscribers a transaction, at most
_PUBLISH_BYTES = MAX_REQUEST_BYTES // 3  # their signals' bytes a transaction, about


def _batches(targets: list[str], built: Mapping[str, tuple[Signal, bytes]]) -> list[list[str]]:
    """``targets`` in order, in batches within etcd's request limit (one at least each)."""
    out: list[list[str]] = []
    size = 0
    for a in targets:
        cost = len(built[a][1]) + 256  # the value, its key and the compares around it
        if not out or len(out[-1]) >= _PUBLISH_BATCH or size + cost > _PUBLISH_BYTES:
            out.append([])
            size = 0
        out[-1].append(a)
        size += cost
    return out


@dataclass(frozen=True, slots=True)
class SendResult:
    """What ``send`` did: the signal's id, the revision it entered at, and whether it was there.

    A duplicate (``duplicate=True``) was waiting, handled or dead-lettered already: nothing
    new was written.
    """

    signal_id: str
    revision: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What ``publish`` did: the agents it reached, those that had it already, those full."""

    signal_id: str
    delivered: tuple[str, ...]
    duplicates: tuple[str, ...]
    full: tuple[str, ...]


def admission(
    ks: Keyspace, agent_id: str, window: tuple[int, int], limit: int
) -> tuple[list[Compare], list[AnyOp]]:
    """The compares that admit one more signal for ``agent_id`` and the counter's put.

    ``window`` is the ``(sent, acked)`` versions last learnt. The compares hold only while
    ``sent - acked < limit`` at commit (see the module docstring); the put bumps ``sent``.
    """
    sent, acked = window
    free = max(0, limit - (sent - acked))  # 0: the compare fails and the probe decides
    compares = [Compare.version(ks.signals_sent(agent_id)) < sent + free]
    if acked > 0:
        compares.append(Compare.version(ks.signals_acked(agent_id)) > acked - 1)
    return compares, [Op.put(ks.signals_sent(agent_id), b"", prev_kv=True)]


def fresh(ks: Keyspace, agent_id: str, signal_id: str, target: bytes) -> list[Compare]:
    """The compares that admit a new signal: ``target`` exists, the id is nowhere yet.

    ``target`` is the agent's spec (spawned) or live key (registered); the id must not be in
    the agent's inbox, done records or dead letters.
    """
    return [
        Compare.create_revision(target) > 0,
        Compare.create_revision(ks.inbox(agent_id, signal_id)) == 0,
        Compare.create_revision(ks.signal_done(agent_id, signal_id)) == 0,
        Compare.create_revision(ks.dead_letter(agent_id, signal_id)) == 0,
    ]


def probe(ks: Keyspace, agent_id: str, signal_id: str) -> list[AnyOp]:
    return [
        Op.get(ks.agent_spec(agent_id), keys_only=True),
        Op.get(ks.inbox(agent_id, signal_id), keys_only=True),
        Op.get(ks.signal_done(agent_id, signal_id), keys_only=True),
        Op.get(ks.dead_letter(agent_id, signal_id), keys_only=True),
        Op.get(ks.signals_sent(agent_id), keys_only=True),
        Op.get(ks.signals_acked(agent_id), keys_only=True),
        Op.get(ks.agent_live(agent_id), keys_only=True),
    ]


class Signals:
    """Send side of signals for one cluster. Use through :class:`Cluster`."""

    def __init__(
        self,
        session: Session,
        keyspace: Keyspace,
        source: str,
        *,
        doorbells: Doorbells,
        replies: Replies,
    ) -> None:
        """Build it.

        Args:
            session: this process's session (its transport and configuration).
            keyspace: the key layout.
            source: what signals sent from here name as their source (the node id).
            doorbells: this process's multiplexed watch stream.
            replies: where calls wait for their replies (on ``doorbells``).
        """
        self.transport = self._t = session.transport
        self.config = self._cfg = session.config
        self.keyspace = self._ks = keyspace
        self._source = source
        self.bells = doorbells
        self.replies = replies
        self._windows: dict[str, tuple[int, int]] = {}
        cfg = self._cfg
        self._signer = None if cfg.signing_key is None else load_signer(cfg.signing_key)

    # sending -------------------------------------------------------------------------------
    def envelope(
        self,
        agent_id: str,
        type: str,
        data: Any = None,
        *,
        signal_id: str | None = None,
        expires_in: float | None = None,
        trace: Mapping[str, str] | None = None,
        source: str | None = None,
        parent: str | None = None,
        topic: str | None = None,
        reply: bool = False,
    ) -> tuple[Signal, bytes]:
        """Build and encode a signal, checking everything (no I/O)."""
        validate_id(agent_id, "agent id")
        sid = new_signal_id() if signal_id is None else validate_id(signal_id, "signal id")
        if expires_in is not None and not (
            isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and 0 < expires_in < 10**9
        ):
            raise ValueError(f"expires_in must be a positive number of seconds: {expires_in!r}")
        now = time.time()
        signal = Signal(
            id=sid,
            type=type,
            source=self._source if source is None else source,
            subject=agent_id,
            data=data,
            time=now,
            trace=trace,
            deadline=None if expires_in is None else now + expires_in,
            parent=parent,
            topic=topic,
            reply=reply,
            signer=None if self._signer is None else self._signer.key_id,
        )
        context = self._ks.prefix
        if self._signer is not None:  # over the plaintext: re-encryption keeps it valid
            signature = self._signer.sign(signed_bytes(signal, context))
            signal = replace(signal, signature=signature)
        keyring = self._cfg.keyring
        value = encode_signal(signal, self._cfg.signal_max_bytes, keyring=keyring, context=context)
        return signal, value

    def window(self, agent_id: str) -> tuple[int, int]:
        """The ``(sent, acked)`` counter versions last learnt for ``agent_id``."""
        return self._windows.get(agent_id, (0, 0))

    def learn(self, agent_id: str, res: TxnResult, offset: int) -> None:
        """Remember the counters a send's success or failure branch returned."""
        if res.succeeded:
            put = res.responses[offset]
            assert isinstance(put, PutResult)
            sent = (put.prev_kv.version if put.prev_kv is not None else 0) + 1
            self._windows[agent_id] = (sent, self.window(agent_id)[1])
        else:
            sent_kv, acked_kv = res.range(4).first, res.range(5).first
            self._windows[agent_id] = (
                sent_kv.version if sent_kv else 0,
                acked_kv.version if acked_kv else 0,
            )

    async def send(
        self,
        agent_id: str,
        type: str,
        data: Any = None,
        **options: Any,
    ) -> SendResult:
        """Put one signal in ``agent_id``'s inbox; see :meth:`Cluster.send`."""
        signal, value = self.envelope(agent_id, type, data, **options)
        return await self.send_encoded(signal, value)

    async def send_encoded(self, signal: Signal, value: bytes) -> SendResult:
        """Send an envelope built by :meth:`envelope`."""
        ks, agent_id, sid = self._ks, signal.subject, signal.id
        limit = self._cfg.signal_inbox_limit
        key = ks.inbox(agent_id, sid)
        target = ks.agent_spec(agent_id)  # spawned; or else registered (``cluster.host``)
        for _ in range(SEND_ATTEMPTS):
            bound, bump = admission(ks, agent_id, self.window(agent_id), limit)
            res = await self._t.txn(
                [*fresh(ks, agent_id, sid, target), *bound],
                [Op.put(key, value), *bump],
                probe(ks, agent_id, sid),
            )
            self.learn(agent_id, res, 1)
            if res.succeeded:
                metrics.signal_sent(ks.tenant)
                return SendResult(sid, res.revision)
            if res.range(0).first is None and res.range(6).first is not None:
                target = ks.agent_live(agent_id)  # not spawned, but registered: deliverable
                continue
            outcome = self._refused(agent_id, res, target == ks.agent_live(agent_id))
            if outcome is not None:
                return SendResult(sid, outcome, duplicate=True)
        sent, acked = self.window(agent_id)  # the window never settled: as full as last seen
        raise InboxFullError(agent_id, waiting=max(sent - acked, limit), limit=limit)

    def _refused(self, agent_id: str, res: TxnResult, registered: bool = False) -> int | None:
        """Why a send's transaction failed: raise, or return a duplicate's revision.

        ``None``: the window was stale; try again with the counters just learnt.
        """
        if res.range(6 if registered else 0).first is None:
            raise AgentNotFoundError(agent_id, f"agent {agent_id!r} is neither spawned nor live")
        for index in (1, 2, 3):
            kv = res.range(index).first
            if kv is not None:
                return kv.create_revision
        sent, acked = self.window(agent_id)
        limit = self._cfg.signal_inbox_limit
        if sent - acked >= limit:
            raise InboxFullError(agent_id, waiting=sent - acked, limit=limit)
        return None

    # broadcast -----------------------------------------------------------------------------
    async def subscriptions(self) -> dict[str, tuple[str, ...]]:
        """Every agent's topic patterns (a linearizable read)."""
        prefix = self._ks.subscriptions_prefix()
        res = await self._t.get_prefix(prefix)
        out: dict[str, tuple[str, ...]] = {}
        for kv in res.kvs:
            try:
                out[kv.key[len(prefix) :].decode()] = patterns_of(
                    _codec.decode(kv.value).get("patterns", ())
                )
            except (ValueError, TypeError, AttributeError, InvalidIdError):
                continue  # not written by the library: subscribes to nothing
        return out

    async def publish(
        self, topic: str, type: str, data: Any = None, **options: Any
    ) -> PublishResult:
        """Send one signal to every agent subscribed to a pattern matching ``topic``."""
        validate_topic(topic)
        sid = options.pop("signal_id", None)
        sid = new_signal_id() if sid is None else validate_id(sid, "signal id")
        self.envelope("check", type, data, signal_id=sid, topic=topic, **options)  # before I/O
        targets = sorted(
            agent
            for agent, patterns in (await self.subscriptions()).items()
            if any(topic_matches(p, topic) for p in patterns)
        )
        built = {
            a: self.envelope(a, type, data, signal_id=sid, topic=topic, **options) for a in targets
        }
        delivered: list[str] = []
        duplicates: list[str] = []
        full: list[str] = []
        for batch in _batches(targets, built):
            nested = []
            for a in batch:
                value = built[a][1]
                bound, bump = admission(self._ks, a, self.window(a), self._cfg.signal_inbox_limit)
                nested.append(
                    Op.txn(
                        [*fresh(self._ks, a, sid, self._ks.agent_spec(a)), *bound],
                        [Op.put(self._ks.inbox(a, sid), value), *bump],
                        probe(self._ks, a, sid),
                    )
                )
            res = await self._t.txn([], nested)
            for a, sub in zip(batch, res.responses, strict=True):
                assert isinstance(sub, TxnResult)
                self.learn(a, sub, 1)
                if sub.succeeded:
                    metrics.signal_sent(self._ks.tenant)
                    delivered.append(a)
                    continue
                try:  # despawned, duplicate, full, or a stale window: decide one by one
                    out = await self.send_encoded(*built[a])
                except AgentNotFoundError:
                    continue
                except InboxFullError:
                    full.append(a)
                    continue
                (duplicates if out.duplicate else delivered).append(a)
        return PublishResult(sid, tuple(delivered), tuple(duplicates), tuple(full))

    async def set_subscriptions(self, agent_id: str, patterns: Sequence[str]) -> None:
        """Replace ``agent_id``'s topic patterns (the agent must be spawned)."""
        checked = patterns_of(patterns)
        spec = self._ks.agent_spec(agent_id)
        res = await self._t.txn(
            [Compare.create_revision(spec) > 0],
            [
                Op.put(
                    self._ks.subscription(agent_id),
                    _codec.encode({"patterns": list(checked)}, "subscriptions", 64 * 1024),
                )
            ],
        )
        if not res.succeeded:
            raise AgentNotFoundError(agent_id, f"agent {agent_id!r} is not spawned")
