"""The etcd transport: the only module that talks to etcd or imports gRPC.

It speaks etcd's v3 gRPC API over one ``grpc.aio`` channel with the protobuf stubs that the
``etcd3aio`` package maintains (its client layer is not used: this module decides what is
retried). It maps every gRPC error to the library's error tree, here and nowhere else.

Guarantees:
    * Reads are linearizable unless ``serializable=True`` is asked.
    * Writes are never retried. A write that fails before it could reach etcd raises
      :class:`EtcdUnavailableError`; one whose outcome is unknown (sent, no answer) raises
      :class:`AmbiguousResultError` and must be resolved by re-reading.
    * Requests over etcd's limits (1.5 MiB, 128 operations) raise before they are sent.
    * Every request carries ``hasleader``: a member cut off from its raft leader refuses it
      at once (``NoLeaderError``, not applied) instead of letting it hang.
    * HTTP/2 keepalive pings notice a blackholed connection; the channel then reconnects,
      to another endpoint when several are given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.lowlevel
import grpc
import grpc.aio
from etcd3aio import _protobuf as pb

from ._config import Config
from ._errors import (
    AmbiguousResultError,
    AuthError,
    CompactedError,
    EtcdServerError,
    EtcdUnavailableError,
    FoundationEtcdError,
    LeaseNotFoundError,
    NoLeaderError,
    RequestTooLargeError,
    TooManyOperationsError,
)
from ._kv import (
    AnyOp,
    Bytes,
    Compare,
    DeleteOp,
    DeleteResult,
    EventType,
    KeyValue,
    Op,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchEvent,
    to_bytes,
)

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "KeepAliveStream",
    "LeaseGrant",
    "LeaseInfo",
    "Status",
    "Transport",
    "UnsafeEtcdVersionWarning",
    "WatchResponse",
    "WatchStream",
    "open_transport",
]

log = logging.getLogger("foundation_etcd.transport")

MAX_REQUEST_BYTES: Final = 1536 * 1024  # etcd --max-request-bytes default
MAX_TXN_OPS: Final = 128  # etcd --max-txn-ops default

_rpc = pb.rpc_pb2
_kvpb = pb.kv_pb2

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
        return RequestTooLargeError(0, MAX_REQUEST_BYTES, f"{operation} request")
    if "too many operations in txn" in low:
        return TooManyOperationsError(-1, MAX_TXN_OPS)
    if "too many requests" in low:
        return EtcdUnavailableError(text, code=name, details=details)
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


# --------------------------------------------------------------------------------------------
# protobuf conversion


def _kv(m: Any) -> KeyValue:
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def _compare_pb(c: Compare) -> Any:
    kwargs: dict[str, Any] = {
        "key": c.key,
        "target": _CMP_TARGET[c.target],
        "result": _CMP_RESULT[c.op],
        _CMP_FIELD[c.target]: c.operand,
    }
    if c.range_end is not None:
        kwargs["range_end"] = c.range_end
    return _rpc.Compare(**kwargs)


def _range_pb(op: RangeOp) -> Any:
    req = _rpc.RangeRequest(key=op.key)  # only non-default fields: each one costs
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
    return req


def _put_pb(op: PutOp) -> Any:
    req = _rpc.PutRequest(key=op.key, value=op.value)
    if op.lease:
        req.lease = op.lease
    if op.prev_kv:
        req.prev_kv = True
    if op.ignore_lease:
        req.ignore_lease = True
    return req


def _delete_pb(op: DeleteOp) -> Any:
    req = _rpc.DeleteRangeRequest(key=op.key, prev_kv=op.prev_kv)
    if op.range_end is not None:
        req.range_end = op.range_end
    return req


def _txn_pb(compare: Sequence[Compare], success: Sequence[AnyOp], failure: Sequence[AnyOp]) -> Any:
    for branch in (compare, success, failure):
        if len(branch) > MAX_TXN_OPS:
            raise TooManyOperationsError(len(branch), MAX_TXN_OPS)
    return _rpc.TxnRequest(
        compare=[_compare_pb(c) for c in compare],
        success=[_op_pb(o) for o in success],
        failure=[_op_pb(o) for o in failure],
    )


def _op_pb(op: AnyOp) -> Any:
    if isinstance(op, RangeOp):
        return _rpc.RequestOp(request_range=_range_pb(op))
    if isinstance(op, PutOp):
        return _rpc.RequestOp(request_put=_put_pb(op))
    if isinstance(op, DeleteOp):
        return _rpc.RequestOp(request_delete_range=_delete_pb(op))
    if isinstance(op, TxnOp):
        return _rpc.RequestOp(request_txn=_txn_pb(op.compare, op.success, op.failure))
    raise TypeError(f"not a transaction operation: {op!r}")


def _range_result(m: Any) -> RangeResult:
    return RangeResult([_kv(k) for k in m.kvs], m.header.revision, m.count, m.more)


def _put_result(m: Any) -> PutResult:
    return PutResult(m.header.revision, _kv(m.prev_kv) if m.HasField("prev_kv") else None)


def _delete_result(m: Any) -> DeleteResult:
    return DeleteResult(m.header.revision, m.deleted, [_kv(k) for k in m.prev_kvs])


def _txn_result(m: Any) -> TxnResult:
    out: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
    for r in m.responses:
        kind = r.WhichOneof("response")
        if kind == "response_range":
            out.append(_range_result(r.response_range))
        elif kind == "response_put":
            out.append(_put_result(r.response_put))
        elif kind == "response_delete_range":
            out.append(_delete_result(r.response_delete_range))
        else:
            out.append(_txn_result(r.response_txn))
    return TxnResult(m.succeeded, m.header.revision, out)


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


# --------------------------------------------------------------------------------------------
# streams


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


class KeepAliveStream:
    """One open lease keepalive stream. Use :meth:`Transport.open_keepalive`.

    One keepalive is in flight at a time; responses come back in order.
    """

    def __init__(self, call: Any) -> None:
        self._call = call

    async def keepalive(self, lease_id: int) -> int:
        """Refresh ``lease_id`` and return the TTL etcd granted; ``<= 0`` means it is gone.

        Raises:
            EtcdUnavailableError: the stream broke; open a new one.
        """
        try:
            await self._call.write(_rpc.LeaseKeepAliveRequest(ID=lease_id))
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "keepalive", write=False) from exc
        except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            raise EtcdUnavailableError(f"keepalive: stream finished ({exc})") from exc
        except asyncio.CancelledError:
            raise await _cancelled("keepalive") from None
        if resp is grpc.aio.EOF:
            raise EtcdUnavailableError("keepalive: stream closed by the server")
        return int(resp.TTL)

    def close(self) -> None:
        """Close the stream (idempotent)."""
        self._call.cancel()


class WatchStream:
    """One open watch stream carrying one watch. Use :meth:`Transport.open_watch`."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def create(
        self,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        *,
        prev_kv: bool = False,
        progress_notify: bool = True,
    ) -> None:
        """Ask etcd to start the watch; the answer arrives through :meth:`read`."""
        req = _rpc.WatchCreateRequest(
            key=key,
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        )
        if range_end is not None:
            req.range_end = range_end
        await self._write(_rpc.WatchRequest(create_request=req))

    async def request_progress(self) -> None:
        """Ask etcd for a progress notification (the current revision)."""
        await self._write(_rpc.WatchRequest(progress_request=_rpc.WatchProgressRequest()))

    async def _write(self, req: Any) -> None:
        try:
            await self._call.write(req)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "watch", write=False) from exc
        except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            raise EtcdUnavailableError(f"watch: stream finished ({exc})") from exc
        except asyncio.CancelledError:
            raise await _cancelled("watch") from None

    async def read(self) -> WatchResponse:
        """Wait for the next message.

        Raises:
            EtcdUnavailableError: the stream ended or broke; open a new one.
        """
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "watch", write=False) from exc
        except asyncio.CancelledError:
            raise await _cancelled("watch") from None
        if resp is grpc.aio.EOF:
            raise EtcdUnavailableError("watch: stream closed by the server")
        return _watch_response(resp)

    def close(self) -> None:
        """Close the stream (idempotent)."""
        self._call.cancel()


# --------------------------------------------------------------------------------------------
# the transport


def _target(endpoints: Sequence[str]) -> tuple[str, str | None]:
    """Return the gRPC target for ``endpoints`` and the host name to verify with TLS."""
    addrs: list[str] = []
    hostname: str | None = None
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            addrs.append(endpoint)
        except ValueError:
            hostname = hostname or host
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
            addrs.extend(f"{info[4][0]}:{port}" for info in infos)
    return "ipv4:" + ",".join(dict.fromkeys(addrs)), hostname


class Transport:
    """An open connection to an etcd cluster. Build one with :meth:`connect`.

    All methods are coroutines and cancellation points. Keys and values are ``bytes``
    (``str`` is accepted and encoded as UTF-8).
    """

    def __init__(self, config: Config, channel: grpc.aio.Channel) -> None:
        self.config = config
        self._channel = channel
        self._kv = pb.KVStub(channel)
        self._lease = pb.LeaseStub(channel)
        self._watch = pb.WatchStub(channel)
        self._maint = pb.MaintenanceStub(channel)
        self._auth = pb.AuthStub(channel)
        self._timeout = config.request_timeout
        self._metadata: tuple[tuple[str, str], ...] = (("hasleader", "true"),)
        self.server_version = ""

    # lifecycle -----------------------------------------------------------------------------
    @classmethod
    async def connect(cls, config: Config) -> Transport:
        """Open a channel to ``config.endpoints``, authenticate, and check the server.

        Raises:
            EtcdUnavailableError: no endpoint answered within ``config.connect_timeout``.
            AuthError: the user or password was refused.
        """
        try:
            target, hostname = _target(config.endpoints)
        except OSError as exc:
            raise EtcdUnavailableError(
                f"cannot resolve endpoints {config.endpoints}: {exc}"
            ) from exc
        options: list[tuple[str, Any]] = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.keepalive_time_ms", int(config.grpc_keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.grpc_keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.max_send_message_length", MAX_REQUEST_BYTES + 512 * 1024),
        ]
        if config.ca_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=config.ca_cert.read_bytes(),
                private_key=config.client_key.read_bytes() if config.client_key else None,
                certificate_chain=config.client_cert.read_bytes() if config.client_cert else None,
            )
            name = config.server_name or hostname
            if name:
                options.append(("grpc.ssl_target_name_override", name))
            channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        self = cls(config, channel)
        try:
            await self._first_contact()
        except BaseException:
            await channel.close()
            raise
        return self

    async def _first_contact(self) -> None:
        deadline = self.config.connect_timeout
        try:
            resp = await self._maint.Status(
                _rpc.StatusRequest(), timeout=deadline, wait_for_ready=True
            )
        except asyncio.CancelledError:
            raise await _cancelled("connect") from None
        except grpc.aio.AioRpcError as exc:
            err = _translate(exc, "connect", write=False)
            if isinstance(err, EtcdUnavailableError) or exc.code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                raise EtcdUnavailableError(
                    f"cannot reach etcd at {', '.join(self.config.endpoints)} within "
                    f"{deadline:g} s ({exc.details()})",
                    code=exc.code().name,
                    details=exc.details() or "",
                ) from exc
            raise err from exc
        self.server_version = str(resp.version)
        if self.server_version in _UNSAFE_VERSIONS:
            warnings.warn(
                f"etcd {self.server_version} has known data-safety bugs (3.5.0-3.5.2 may lose "
                "consistency after a crash); upgrade to 3.5.13 or newer",
                UnsafeEtcdVersionWarning,
                stacklevel=3,
            )
        if self.config.user is not None:
            await self._authenticate()

    async def _authenticate(self) -> None:
        try:
            resp = await self._auth.Authenticate(
                _rpc.AuthenticateRequest(name=self.config.user, password=self.config.password),
                timeout=self._timeout,
            )
        except asyncio.CancelledError:
            raise await _cancelled("authenticate") from None
        except grpc.aio.AioRpcError as exc:
            err = _translate(exc, "authenticate", write=False)
            if isinstance(err, EtcdServerError):
                err = AuthError(f"authenticate: {exc.details()}", code=err.code)
            raise err from exc
        self._metadata = (("hasleader", "true"), ("token", str(resp.token)))

    async def refresh_auth(self) -> None:
        """Log in again (a no-op without a user): streams opened afterwards use the new token.

        Raises:
            AuthError: the credentials were refused.
        """
        if self.config.user is not None:
            await self._authenticate()

    async def close(self) -> None:
        """Close the channel; open streams end."""
        await self._channel.close()

    async def _unary(self, method: Any, req: Any, operation: str, *, write: bool) -> Any:
        try:
            return await method(req, timeout=self._timeout, metadata=self._metadata)
        except asyncio.CancelledError:
            gone = await _cancelled(operation)
            if write:
                raise AmbiguousResultError(
                    f"{operation}: call cancelled after sending", operation=operation
                ) from None
            raise gone from None
        except grpc.aio.AioRpcError as exc:
            err = _translate(exc, operation, write=write)
            if (
                isinstance(err, AuthError)
                and self.config.user is not None
                and "invalid auth token" in (exc.details() or "")
            ):
                # The token expired: etcd rejected the request before applying it.
                await self._authenticate()
                try:
                    return await method(req, timeout=self._timeout, metadata=self._metadata)
                except grpc.aio.AioRpcError as exc2:
                    raise _translate(exc2, operation, write=write) from exc2
            raise err from exc

    # key-value -----------------------------------------------------------------------------
    async def get(self, key: Bytes, *, serializable: bool = False) -> KeyValue | None:
        """Read one key; ``None`` when absent."""
        req = _rpc.RangeRequest(key=to_bytes(key))
        if serializable:
            req.serializable = True
        m = await self._unary(self._kv.Range, req, "range", write=False)
        return _kv(m.kvs[0]) if m.kvs else None

    async def range(self, op: RangeOp) -> RangeResult:
        """Run a read built with :meth:`Op.get`."""
        m = await self._unary(self._kv.Range, _range_pb(op), "range", write=False)
        return _range_result(m)

    async def get_prefix(
        self, prefix: Bytes, *, revision: int = 0, page: int = 1000
    ) -> RangeResult:
        """Read every key under ``prefix`` at one revision, in pages of ``page`` keys.

        All pages are read at the revision of the first, so the result is one snapshot.
        """
        p = to_bytes(prefix)
        first = await self.range(Op.get(p, prefix=True, limit=page, revision=revision))
        kvs = list(first.kvs)
        more = first.more
        rev = first.revision if revision == 0 else revision
        end = Op.get(p, prefix=True).range_end
        while more and kvs:
            nxt = kvs[-1].key + b"\0"
            res = await self.range(Op.get(nxt, range_end=end, limit=page, revision=rev))
            kvs.extend(res.kvs)
            more = res.more
        return RangeResult(kvs, first.revision, len(kvs), False)

    async def count_prefix_changes(
        self, prefix: bytes, *, after: int, revision: int
    ) -> tuple[int, int]:
        """At ``revision``: whether a key under ``prefix`` changed after ``after``, and how many.

        One transaction of two reads at one revision. The first returns 0 or 1: etcd
        applies ``min_mod_revision`` to the keys it returns but not to ``count``, so it
        is read as keys (at most one, keys only).
        """
        end = Op.get(prefix, prefix=True).range_end
        changed = _rpc.RangeRequest(
            key=prefix,
            range_end=end,
            keys_only=True,
            limit=1,
            revision=revision,
            min_mod_revision=after + 1,
        )
        total = _rpc.RangeRequest(key=prefix, range_end=end, count_only=True, revision=revision)
        req = _rpc.TxnRequest(
            success=[_rpc.RequestOp(request_range=changed), _rpc.RequestOp(request_range=total)]
        )
        m = await self._unary(self._kv.Txn, req, "txn", write=False)
        return len(m.responses[0].response_range.kvs), int(m.responses[1].response_range.count)

    async def put(
        self, key: Bytes, value: Bytes, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        """Write one key.

        Raises:
            RequestTooLargeError: before sending, when the request exceeds 1.5 MiB.
            AmbiguousResultError: the outcome is unknown.
        """
        req = _put_pb(Op.put(key, value, lease=lease, prev_kv=prev_kv))
        _check_size(req, "put")
        return _put_result(await self._unary(self._kv.Put, req, "put", write=True))

    async def delete(
        self, key: Bytes, *, prefix: bool = False, prev_kv: bool = False
    ) -> DeleteResult:
        """Delete one key or every key under a prefix."""
        req = _delete_pb(Op.delete(key, prefix=prefix, prev_kv=prev_kv))
        return _delete_result(await self._unary(self._kv.DeleteRange, req, "delete", write=True))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[AnyOp] = (),
        failure: Sequence[AnyOp] = (),
    ) -> TxnResult:
        """Run a transaction: if every compare holds, ``success``, else ``failure``.

        Raises:
            TooManyOperationsError: before sending, over 128 operations in a branch.
            RequestTooLargeError: before sending, when the request exceeds 1.5 MiB.
            AmbiguousResultError: a writing transaction's outcome is unknown.
        """
        req = _txn_pb(compare, success, failure)
        _check_size(req, "txn")
        write = any(not isinstance(o, RangeOp) for o in (*success, *failure))
        return _txn_result(await self._unary(self._kv.Txn, req, "txn", write=write))

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Compact the key-value history up to ``revision``."""
        req = _rpc.CompactionRequest(revision=revision, physical=physical)
        await self._unary(self._kv.Compact, req, "compact", write=True)

    # leases --------------------------------------------------------------------------------
    async def lease_grant(self, ttl: int) -> LeaseGrant:
        """Grant a new lease of ``ttl`` seconds (etcd may grant more)."""
        req = _rpc.LeaseGrantRequest(TTL=ttl)
        m = await self._unary(self._lease.LeaseGrant, req, "lease grant", write=True)
        if m.error:
            raise EtcdServerError(f"lease grant: {m.error}")
        return LeaseGrant(int(m.ID), int(m.TTL))

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys at one revision.

        Raises:
            LeaseNotFoundError: the lease is already gone.
        """
        req = _rpc.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._unary(self._lease.LeaseRevoke, req, "lease revoke", write=True)
        except LeaseNotFoundError as exc:
            raise LeaseNotFoundError(lease_id, details=exc.details) from exc

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        """Read a lease's remaining TTL (``-1`` when it does not exist)."""
        req = _rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        m = await self._unary(self._lease.LeaseTimeToLive, req, "lease ttl", write=False)
        return LeaseInfo(int(m.ID), int(m.TTL), int(m.grantedTTL), list(m.keys))

    async def lease_ids(self) -> list[int]:
        """List every lease that exists."""
        m = await self._unary(
            self._lease.LeaseLeases, _rpc.LeaseLeasesRequest(), "lease list", write=False
        )
        return [int(x.ID) for x in m.leases]

    def open_keepalive(self) -> KeepAliveStream:
        """Open a lease keepalive stream."""
        return KeepAliveStream(self._lease.LeaseKeepAlive(metadata=self._metadata))

    # watch and maintenance -----------------------------------------------------------------
    def open_watch(self) -> WatchStream:
        """Open a watch stream (``hasleader``: etcd cancels it when it loses its leader)."""
        return WatchStream(self._watch.Watch(metadata=self._metadata))

    async def status(self) -> Status:
        """Ask the member the channel is connected to for its status."""
        m = await self._unary(self._maint.Status, _rpc.StatusRequest(), "status", write=False)
        return Status(
            str(m.version),
            int(m.header.member_id),
            int(m.leader),
            int(m.raftTerm),
            int(m.header.revision),
            int(m.dbSize),
            list(m.errors),
        )


@asynccontextmanager
async def open_transport(config: Config) -> AsyncIterator[Transport]:
    """Connect to etcd for the duration of the block (see :meth:`Transport.connect`)."""
    transport = await Transport.connect(config)
    try:
        yield transport
    finally:
        with anyio.CancelScope(shield=True):
            await transport.close()
