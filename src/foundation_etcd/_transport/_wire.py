"""Protobuf conversion, error translation and limits of the etcd wire protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.lowlevel
import grpc
import grpc.aio

from .._core.errors import (
    AmbiguousResultError,
    AuthError,
    CompactedError,
    EtcdServerError,
    EtcdUnavailableError,
    FoundationEtcdError,
    LeaseNotFoundError,
    NoLeaderError,
    NoSpaceError,
    RequestTooLargeError,
    TooManyOperationsError,
    TooManyRequestsError,
)
from .._core.kv import (
    AnyOp,
    Compare,
    DeleteOp,
    DeleteResult,
    EventType,
    KeyValue,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchEvent,
)
from ._protos import kv as _kvpb
from ._protos import rpc as _rpc

MAX_REQUEST_BYTES: Final = 1536 * 1024  # etcd --max-request-bytes default
MAX_TXN_OPS: Final = 128  # etcd --max-txn-ops default

_CMP_TARGET = {
    "version": _rpc.Compare.VERSION,
    "create": _rpc.Compare.CREATE,
    "mod": _rpc.Compare.MOD,
    "value": _rpc.Compare.VALUE,
    "lease": _rpc.Compare.LEASE,
}
_CMP_RESULT = {
    "==": _rpc.Compare.EQUAL,
    "!=": _rpc.Compare.NOT_EQUAL,
    "<": _rpc.Compare.LESS,
    ">": _rpc.Compare.GREATER,
}
_CMP_FIELD = {
    "version": "version",
    "create": "create_revision",
    "mod": "mod_revision",
    "value": "value",
    "lease": "lease",
}

# Messages that mean the request never left this process (no connection could be made).
_NOT_SENT = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "connection refused",
    "no connection available",
    "there is no address available",
)
# etcd's authentication and authorization refusals (some come with INVALID_ARGUMENT).
_AUTH_MESSAGES = ("user name is empty", "permission denied", "invalid auth token")
# Versions with known data-safety bugs (data inconsistency after crash, fixed in 3.5.3+).
_UNSAFE_VERSIONS = ("3.5.0", "3.5.1", "3.5.2")


class UnsafeEtcdVersionWarning(UserWarning):
    """The etcd server runs a version with known data-safety bugs (3.5.0-3.5.2)."""


# --------------------------------------------------------------------------------------------
# error translation


def _translate(exc: grpc.aio.AioRpcError, operation: str, *, write: bool) -> FoundationEtcdError:
    """Map a gRPC error to the library's error tree.

    Args:
        exc: the gRPC error.
        operation: the request's name, for messages.
        write: whether the request could change etcd (decides ambiguity).
    """
    code = exc.code()
    details = exc.details() or ""
    low = details.lower()
    name = code.name if code is not None else None
    text = f"{operation}: {details or name}"
    if "no leader" in low:
        return NoLeaderError(text, code=name, details=details)
    if "required revision has been compacted" in low:
        return CompactedError(text, details=details)
    if "requested lease not found" in low:
        return LeaseNotFoundError(0, details=details)
    if (
        code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        or ("auth" in low and "etcdserver" in low)
        or any(m in low for m in _AUTH_MESSAGES)
    ):
        return AuthError(text, code=name, details=details)
    if "request is too large" in low or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and ("message larger than max" in low or "received message larger" in low)
    ):
        return RequestTooLargeError(0, MAX_REQUEST_BYTES, f"{operation} request", reason=details)
    if "too many operations in txn" in low:
        return TooManyOperationsError(-1, MAX_TXN_OPS)
    if "database space exceeded" in low:
        return NoSpaceError(
            f"{operation}: {details} (etcd's space alarm is on: compact, defragment, "
            "then disarm the alarm)",
            code=name,
            details=details,
        )
    if "too many requests" in low:
        return TooManyRequestsError(text, code=name, details=details)
    transient = code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    ) or any(
        m in low
        for m in ("request timed out", "leader changed", "timed out", "stopped", "not capable")
    )
    if transient:
        if write and not any(m in low for m in _NOT_SENT):
            return AmbiguousResultError(
                f"{text} (outcome unknown: re-read before retrying)",
                operation=operation,
                code=name,
                details=details,
            )
        return EtcdUnavailableError(text, code=name, details=details)
    return EtcdServerError(text, code=name, details=details)


def _not_sent(exc: grpc.aio.AioRpcError) -> bool:
    """Whether gRPC refused the request before sending it (no connection to any member)."""
    low = (exc.details() or "").lower()
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) and any(
        m in low for m in _NOT_SENT
    )


def _transient_read(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a read was refused by a passing server state, so trying it again is sound.

    Leader elections ("leader changed", "no leader"), a member shedding load ("too many
    requests") and a read index that timed out all end; a deadline, a cancellation, an
    auth or size refusal do not, and are not retried.
    """
    code = exc.code()
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return False
    low = (exc.details() or "").lower()
    if any(m in low for m in _AUTH_MESSAGES) or "compacted" in low:
        return False
    return code == grpc.StatusCode.UNAVAILABLE or any(
        m in low for m in ("leader changed", "no leader", "too many requests", "request timed out")
    )


# --------------------------------------------------------------------------------------------
# protobuf conversion


def _kv(m: Any) -> KeyValue:
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


# Messages are filled in place (``add()``, field by field): building them from keyword
# arguments copies every nested message once more, over twice the cost per transaction.


def _fill_compare(m: Any, c: Compare) -> None:
    m.key = c.key
    m.target = _CMP_TARGET[c.target]
    m.result = _CMP_RESULT[c.op]
    setattr(m, _CMP_FIELD[c.target], c.operand)
    if c.range_end is not None:
        m.range_end = c.range_end


def _fill_range(req: Any, op: RangeOp) -> None:
    req.key = op.key  # only non-default fields: each one costs
    if op.range_end is not None:
        req.range_end = op.range_end
    if op.limit:
        req.limit = op.limit
    if op.keys_only:
        req.keys_only = True
    if op.count_only:
        req.count_only = True
    if op.serializable:
        req.serializable = True
    if op.revision:
        req.revision = op.revision
    if op.sort_by_create:
        req.sort_target = _rpc.RangeRequest.CREATE
        req.sort_order = _rpc.RangeRequest.DESCEND if op.descending else _rpc.RangeRequest.ASCEND
    if op.max_create_revision:
        req.max_create_revision = op.max_create_revision


def _range_pb(op: RangeOp) -> Any:
    req = _rpc.RangeRequest()
    _fill_range(req, op)
    return req


def _fill_put(req: Any, op: PutOp) -> None:
    req.key = op.key
    req.value = op.value
    if op.lease:
        req.lease = op.lease
    if op.prev_kv:
        req.prev_kv = True
    if op.ignore_lease:
        req.ignore_lease = True


def _put_pb(op: PutOp) -> Any:
    req = _rpc.PutRequest()
    _fill_put(req, op)
    return req


def _fill_delete(req: Any, op: DeleteOp) -> None:
    req.key = op.key
    if op.prev_kv:
        req.prev_kv = True
    if op.range_end is not None:
        req.range_end = op.range_end


def _delete_pb(op: DeleteOp) -> Any:
    req = _rpc.DeleteRangeRequest()
    _fill_delete(req, op)
    return req


def _txn_pb(compare: Sequence[Compare], success: Sequence[AnyOp], failure: Sequence[AnyOp]) -> Any:
    req = _rpc.TxnRequest()
    _fill_txn(req, compare, success, failure)
    return req


def _fill_txn(
    req: Any, compare: Sequence[Compare], success: Sequence[AnyOp], failure: Sequence[AnyOp]
) -> None:
    for branch in (compare, success, failure):
        if len(branch) > MAX_TXN_OPS:
            raise TooManyOperationsError(len(branch), MAX_TXN_OPS)
    add = req.compare.add
    for c in compare:
        _fill_compare(add(), c)
    add = req.success.add
    for op in success:
        _fill_op(add(), op)
    add = req.failure.add
    for op in failure:
        _fill_op(add(), op)


def _fill_op(m: Any, op: AnyOp) -> None:
    # each sub-message is marked set (SetInParent): one whose fields are all defaults (an
    # empty nested transaction) would otherwise leave the RequestOp empty
    if isinstance(op, RangeOp):
        sub = m.request_range
        _fill_range(sub, op)
    elif isinstance(op, PutOp):
        sub = m.request_put
        _fill_put(sub, op)
    elif isinstance(op, DeleteOp):
        sub = m.request_delete_range
        _fill_delete(sub, op)
    elif isinstance(op, TxnOp):
        sub = m.request_txn
        _fill_txn(sub, op.compare, op.success, op.failure)
    else:
        raise TypeError(f"not a transaction operation: {op!r}")
    sub.SetInParent()


# ``rev``: the outer transaction's revision, for an answer inside one (etcd leaves the
# headers of those empty: reading them would only cost); 0 for a top-level answer


def _range_result(m: Any, rev: int = 0) -> RangeResult:
    return RangeResult([_kv(k) for k in m.kvs], rev or m.header.revision, m.count, m.more)


def _put_result(m: Any, rev: int = 0) -> PutResult:
    prev = _kv(m.prev_kv) if m.HasField("prev_kv") else None
    return PutResult(rev or m.header.revision, prev)


def _delete_result(m: Any, rev: int = 0) -> DeleteResult:
    return DeleteResult(rev or m.header.revision, m.deleted, [_kv(k) for k in m.prev_kvs])


def _txn_result(m: Any, rev: int = 0) -> TxnResult:
    """Convert a transaction's answer.

    etcd fills the header of the outermost answer only: operations inside a transaction
    (nested transactions included) are given the outer revision, at which they all ran.
    """
    rev = rev or m.header.revision
    out: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
    for r in m.responses:
        kind = r.WhichOneof("response")
        if kind == "response_range":
            out.append(_range_result(r.response_range, rev))
        elif kind == "response_put":
            out.append(_put_result(r.response_put, rev))
        elif kind == "response_delete_range":
            out.append(_delete_result(r.response_delete_range, rev))
        else:
            out.append(_txn_result(r.response_txn, rev))
    return TxnResult(m.succeeded, rev, out)


def _check_size(req: Any, operation: str) -> None:
    size = req.ByteSize()
    if size > MAX_REQUEST_BYTES:
        raise RequestTooLargeError(size, MAX_REQUEST_BYTES, f"{operation} request")


# --------------------------------------------------------------------------------------------
# results of lease, status and watch calls


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A granted lease: its id and the TTL etcd granted (may exceed the one asked)."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease's remaining time; ``ttl == -1`` when it does not exist."""

    id: int
    ttl: int
    granted_ttl: int
    keys: list[bytes]


@dataclass(frozen=True, slots=True)
class Status:
    """A member's status."""

    version: str
    member_id: int
    leader: int
    raft_term: int
    revision: int
    db_size: int
    errors: list[str]


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One message of a watch stream.

    Attributes:
        watch_id: the watch it belongs to (-1 for a stream-wide progress answer).
        revision: the store revision in the header.
        events: the changes, in revision order.
        created: the answer to a create request.
        canceled: the watch was cancelled by etcd (see ``cancel_reason``).
        compact_revision: set when the start revision was compacted away.
        cancel_reason: why etcd cancelled the watch.
    """

    watch_id: int
    revision: int
    events: list[WatchEvent]
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""

    @property
    def is_progress(self) -> bool:
        """Whether this is a progress notification (no events, not a create or cancel)."""
        return not self.events and not self.created and not self.canceled


def _watch_response(m: Any) -> WatchResponse:
    events = []
    for e in m.events:
        etype = EventType.DELETE if e.type == _kvpb.Event.DELETE else EventType.PUT
        prev = _kv(e.prev_kv) if e.HasField("prev_kv") else None
        events.append(WatchEvent(etype, _kv(e.kv), prev))
    return WatchResponse(
        m.watch_id,
        m.header.revision,
        events,
        m.created,
        m.canceled,
        m.compact_revision,
        m.cancel_reason,
    )


async def _cancelled(operation: str) -> EtcdUnavailableError:
    """Handle an ``asyncio.CancelledError`` that came out of a gRPC call.

    grpc.aio raises a *fresh* ``CancelledError`` when a call is cancelled (and from any
    read or write on a call cancelled earlier). anyio only recognises the cancellations
    of its own scopes, so letting grpc's instance through would turn a caller's
    ``fail_after`` into a bare cancellation of the whole task. So:

    * when the current task is really being cancelled, yield once: anyio (or asyncio)
      delivers its own cancellation at that checkpoint, and it propagates from here;
    * otherwise the error only means "this call is gone": it is returned as an
      :class:`EtcdUnavailableError` for the caller to raise.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        await anyio.lowlevel.checkpoint()
        raise asyncio.CancelledError(f"{operation}: cancelled")
    return EtcdUnavailableError(f"{operation}: call cancelled")
