"""``AuditLog``: a tamper-evident, hash-chained log of coordination decisions in etcd.

Keys (no lease)::

    audit/head              {"seq", "hash"}: the last record
    audit/records/{seq:012d} an AuditRecord (``_core/records.py``): seq, time, actor, kind,
                            details, prev (hex sha256 of the previous record), sig

Guarantees:
    * **One chain, no duplicates.** An append is one transaction that compares the head's
      mod revision, creates ``records/{seq+1}`` and moves the head: concurrent writers in
      any number of processes produce seqs 1, 2, 3... with no gap and no duplicate; a
      writer that loses the race retries on the head the failed transaction returned. An
      append whose outcome is unknown (``AmbiguousResultError``) is looked up before it is
      retried, so it is recorded once.
    * **Tampering is found and located.** :meth:`AuditLog.verify` reads the head and every
      record at one revision and names the seq of each problem: a changed record (its hash
      is not the next record's ``prev``, or not the head's hash), a removed record (a gap),
      reordered records (a record stored under another seq's key), a head that points at a
      record that is not the last, a missing or bad signature when public keys are given.
    * **Signatures** (optional): with a ``signing_key`` (Ed25519, the ``cryptography``
      package, imported only then; keys are loaded and signatures checked in
      ``audit_keys``) each record's ``sig`` signs the same canonical bytes that are
      hashed. A hash chain alone shows partial edits; a writer with etcd access can
      rewrite the whole chain from some record on, which signatures reveal. Neither
      reveals records cut off at the end (the last ones deleted and the unsigned head
      moved back), nor the whole log deleted: only a head (seq and hash) kept outside
      etcd does.
    * **Bounded retention**: :meth:`AuditLog.trim` appends a ``checkpoint`` record carrying
      the seq and hash of the last record it removes, and deletes the older records, in
      the same transaction: verification starts from the checkpoint and still finds every
      problem after it, including records removed below it.
    * **Best effort for decisions**: :meth:`AuditLog.note` (what the cluster's decisions
      call, after their own transaction committed) logs a failure and never raises; a
      decision is never undone or blocked by its audit record. A crash between the two
      loses that record; the chain stays valid.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .._core import codec as _codec
from .._core.errors import AmbiguousResultError, TransactionConflictError
from .._core.keys import Keyspace, prefix_end
from .._core.kv import AnyOp, Compare, KeyValue, Op
from .._core.records import AUDIT_GENESIS, AuditRecord
from .audit_keys import signed_by, signing_key_file
from .stm import _backoff

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from .._transport import Transport

__all__ = ["AuditLog", "AuditProblem", "AuditRecord", "VerifyReport"]

log = logging.getLogger("foundation_etcd.audit")

_PAGE = 500
_MAX_ATTEMPTS = 64  # appends that lost the head to other writers before giving up
CHECKPOINT = "checkpoint"


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One problem found by :meth:`AuditLog.verify`.

    Attributes:
        seq: the seq of the record concerned (for ``removed``: the first one missing).
        kind: ``changed``, ``removed``, ``reordered``, ``head``, ``signature`` or
            ``malformed``.
        message: what is wrong, naming the seqs.
    """

    seq: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of :meth:`AuditLog.verify`: valid when ``problems`` is empty."""

    records: int
    first_seq: int
    head_seq: int
    revision: int
    signatures_checked: bool
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem was found."""
        return not self.problems


class AuditLog:
    """The audit log of one tenant (``keyspace``), written as ``actor``."""

    def __init__(
        self,
        transport: Transport,
        keyspace: Keyspace,
        *,
        actor: str,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        """An audit log; nothing is sent until the first call.

        Args:
            transport: the etcd transport.
            keyspace: the tenant's key layout.
            actor: who writes (the node id), stored in each record.
            signing_key: an Ed25519 private key signing each record; by default the one
                of ``Config.audit_signing_key``, if set.

        Raises:
            ConfigurationError: the configured key file is not an Ed25519 private key.
        """
        self._t = transport
        self._ks = keyspace
        self.actor = actor
        path = transport.config.audit_signing_key
        self.signing_key = signing_key or (None if path is None else signing_key_file(path))
        self._head: tuple[int, str, int] | None = None  # seq, hash, head key's mod revision

    def _parse_head(self, kv: KeyValue | None) -> tuple[int, str, int]:
        if kv is None:
            return 0, AUDIT_GENESIS, 0
        d = _codec.decode(kv.value)
        return int(d["seq"]), str(d["hash"]), kv.mod_revision

    async def _read_head(self) -> tuple[int, str, int]:
        return self._parse_head(await self._t.get(self._ks.audit_head()))

    def _make(self, seq: int, prev: str, kind: str, details: Mapping[str, Any]) -> AuditRecord:
        rec = AuditRecord(seq, time.time(), self.actor, kind, dict(details), prev)
        if self.signing_key is None:
            return rec
        sig = self.signing_key.sign(rec.canonical()).hex()
        return AuditRecord(rec.seq, rec.time, rec.actor, rec.kind, rec.details, rec.prev, sig)

    async def _commit(
        self, kind: str, details: Mapping[str, Any], keep: int | None = None
    ) -> AuditRecord | None:
        """Append one record on the head, retrying on conflict; returns it.

        With ``keep``: the record is the checkpoint of a trim that keeps ``keep`` records
        (``None`` returned when there is nothing to remove).
        """
        prefix = self._ks.audit_records_prefix()
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            if self._head is None:
                self._head = await self._read_head()
            seq, digest, head_rev = self._head
            ops: list[AnyOp] = []
            if keep is not None:
                through = seq - keep
                oldest = (await self._t.range(Op.get(prefix, prefix=True, limit=1))).first
                first = None if oldest is None else _seq_of(self._ks, oldest)
                if through <= 0 or first is None or first > through:
                    return None
                cut = digest
                if keep:
                    kept = await self._t.get(self._ks.audit_record(through + 1))
                    try:
                        cut = AuditRecord.decode(kept.value).prev if kept else ""
                    except ValueError:
                        cut = ""
                    if not cut:
                        raise ValueError(f"cannot trim: record {through + 1} is not intact")
                details = {"through": through, "hash": cut}
                ops.append(Op.delete(prefix, range_end=self._ks.audit_record(through + 1)))
            rec = self._make(seq + 1, digest, kind, details)
            head = {"seq": rec.seq, "hash": rec.digest}
            ops += [
                Op.put(self._ks.audit_record(rec.seq), rec.encode()),
                Op.put(self._ks.audit_head(), _codec.encode(head, "audit head", 1024)),
            ]
            try:
                res = await self._t.txn(
                    [Compare.mod_revision(self._ks.audit_head()) == head_rev],
                    ops,
                    [Op.get(self._ks.audit_head())],
                )
            except AmbiguousResultError:
                self._head = None
                stored = await self._t.get(self._ks.audit_record(rec.seq))
                if stored is not None and stored.value == rec.encode():
                    return rec  # it did commit
                continue
            if res.succeeded:
                self._head = (rec.seq, rec.digest, res.revision)
                return rec
            # lost the head: retry at once from the head read back, or (from the third
            # conflict) after a jittered pause and a fresh read, as transactions do
            self._head = self._parse_head(res.range(0).first)
            if attempt < _MAX_ATTEMPTS and await _backoff(attempt):
                self._head = None
        raise TransactionConflictError("audit append", _MAX_ATTEMPTS, [self._ks.audit_head()])

    async def append(self, kind: str, details: Mapping[str, Any] | None = None) -> AuditRecord:
        """Append one record (``kind``: ``leader``, ``failover``, ``spawn``, ...).

        Returns:
            The record written, with its seq.

        Raises:
            SerializationError, RequestTooLargeError: ``details`` not JSON or too large.
            EtcdError: etcd failed (the record may be missing; never duplicated).
            TransactionConflictError: 64 attempts in a row lost the head to other writers.
        """
        rec = await self._commit(kind, details or {})
        assert rec is not None
        return rec

    async def note(self, kind: str, details: Mapping[str, Any] | None = None) -> None:
        """:meth:`append`, best effort: a failure is logged, never raised.

        Bounded by one ``request_timeout``: the decision it records (a failover move, a
        spawn) has committed and must not wait on the log.
        """
        try:
            with anyio.fail_after(self._t.config.request_timeout):
                await self.append(kind, details)
        except Exception as exc:  # a decision that committed is never undone by its record
            self._head = None
            log.warning("audit record %s %s not written: %r", kind, dict(details or {}), exc)

    async def _scan(self, since: int) -> tuple[KeyValue | None, list[KeyValue], int]:
        """The head and the records after ``since``, all at one revision."""
        prefix = self._ks.audit_records_prefix()
        start = self._ks.audit_record(since + 1) if since > 0 else prefix
        end = prefix_end(prefix)
        res = await self._t.txn(
            [], [Op.get(self._ks.audit_head()), Op.get(start, range_end=end, limit=_PAGE)]
        )
        rev, head = res.revision, res.range(0).first
        page = res.range(1)
        kvs = list(page.kvs)
        while page.more:
            start = kvs[-1].key + b"\0"
            page = await self._t.range(Op.get(start, range_end=end, limit=_PAGE, revision=rev))
            kvs.extend(page.kvs)
        return head, kvs, rev

    async def records(self, since: int = 0) -> list[AuditRecord]:
        """The records with a seq greater than ``since``, in seq order (malformed: skipped)."""
        _, kvs, _ = await self._scan(since)
        out = []
        for kv in kvs:
            try:
                if _seq_of(self._ks, kv) is None:
                    raise ValueError("not a record's key")
                out.append(AuditRecord.decode(kv.value))
            except ValueError:
                log.warning("skipping malformed audit record at %r", kv.key)
        return out

    async def trim(self, keep: int) -> AuditRecord | None:
        """Keep the last ``keep`` records: append a checkpoint and delete the older ones.

        One transaction appends the ``checkpoint`` record (``details``: ``through``, the
        seq of the last record removed, and ``hash``, its hash) and deletes the records up
        to ``through``; :meth:`verify` then starts from the checkpoint.

        Returns:
            The checkpoint, or ``None`` when there was nothing to remove.

        Raises:
            ValueError: ``keep`` is negative, or the first kept record is not intact.
        """
        if keep < 0:
            raise ValueError(f"keep must be >= 0, not {keep}")
        return await self._commit(CHECKPOINT, {}, keep)

    async def verify(self, public_keys: Sequence[Ed25519PublicKey] | None = None) -> VerifyReport:
        """Walk the chain from its first record (or checkpoint) to the head; name each problem.

        Args:
            public_keys: when given, every record must carry a signature by one of them.
        """
        head_kv, kvs, rev = await self._scan(0)
        problems: list[AuditProblem] = []
        recs: list[tuple[int, AuditRecord | None]] = []
        for kv in kvs:
            key_seq = _seq_of(self._ks, kv)
            if key_seq is None:  # not in the chain: said, and left out of its order
                problems.append(AuditProblem(0, "malformed", f"not a record's key: {kv.key!r}"))
                continue
            try:
                rec: AuditRecord | None = AuditRecord.decode(kv.value)
            except ValueError as exc:
                rec = None
                problems.append(AuditProblem(key_seq, "malformed", str(exc)))
            if rec is not None and rec.seq != key_seq:
                msg = f"the record stored as seq {key_seq} says it is seq {rec.seq}"
                problems.append(AuditProblem(key_seq, "reordered", msg))
            if rec is not None and public_keys is not None and not signed_by(rec, public_keys):
                what = "unsigned" if rec.sig is None else "signature does not verify"
                problems.append(AuditProblem(key_seq, "signature", f"{what} with a given key"))
            recs.append((key_seq, rec))
        sound = {s for s, r in recs if r is not None and r.seq == s}
        checkpoints = [r for s, r in recs if s in sound and r is not None and _checkpoint(r)]
        first = recs[0][0] if recs else 0
        if recs:
            expect_first, expect_prev = 1, AUDIT_GENESIS
            if checkpoints:
                cp = checkpoints[-1]
                expect_first = int(cp.details.get("through", 0)) + 1
                expect_prev = str(cp.details.get("hash", ""))
            s0, r0 = recs[0]
            if s0 > expect_first:
                msg = f"records {expect_first}..{s0 - 1} are missing"
                problems.append(AuditProblem(expect_first, "removed", msg))
            elif s0 == expect_first and r0 is not None and s0 in sound and r0.prev != expect_prev:
                msg = "its prev does not match the " + ("checkpoint" if checkpoints else "start")
                problems.append(AuditProblem(s0, "changed", msg))
        for (sa, ra), (sb, rb) in itertools.pairwise(recs):
            if sb != sa + 1:
                msg = f"records {sa + 1}..{sb - 1} are missing (between {sa} and {sb})"
                problems.append(AuditProblem(sa + 1, "removed", msg))
            elif ra and rb and sa in sound and sb in sound and rb.prev != ra.digest:
                msg = f"its hash is not the prev of seq {sb}: it was changed"
                problems.append(AuditProblem(sa, "changed", msg))
        try:
            head_seq, head_hash, _ = self._parse_head(head_kv)
        except (ValueError, KeyError, TypeError, AttributeError):
            head_seq, head_hash = recs[-1][0] if recs else 0, ""
            problems.append(AuditProblem(head_seq, "head", "the head is malformed"))
        last_seq, last = recs[-1] if recs else (0, None)
        if not head_hash:
            pass  # malformed: reported above
        elif head_seq != last_seq:
            if head_seq > last_seq:
                gone = f"{last_seq + 1}..{head_seq}"
                msg = f"the head points at seq {head_seq}; records {gone} are missing"
                problems.append(AuditProblem(last_seq + 1, "removed", msg))
            else:
                msg = f"the head points at seq {head_seq}, not at the last record {last_seq}"
                problems.append(AuditProblem(head_seq, "head", msg))
        elif last is not None and last_seq in sound and last.digest != head_hash:
            problems.append(AuditProblem(last_seq, "changed", "its hash is not the head's"))
        problems.sort(key=lambda p: p.seq)
        return VerifyReport(len(recs), first, head_seq, rev, public_keys is not None, problems)


def _seq_of(ks: Keyspace, kv: KeyValue) -> int | None:
    """The seq of a record's key; ``None`` for a key ``append`` never writes."""
    tail = kv.key[len(ks.audit_records_prefix()) :]
    if len(tail) != 12 or not tail.isdigit() or int(tail) == 0:
        return None
    return int(tail)


def _checkpoint(rec: AuditRecord) -> bool:
    through, digest = rec.details.get("through"), rec.details.get("hash")
    return rec.kind == CHECKPOINT and type(through) is int and isinstance(digest, str)
