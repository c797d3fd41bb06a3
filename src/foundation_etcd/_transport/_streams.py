"""Lease keepalive and watch streams: one gRPC bidirectional stream each."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import grpc
import grpc.aio

from .._core.errors import (
    EtcdUnavailableError,
)
from ._protos import rpc as _rpc
from ._wire import (
    WatchResponse,
    _cancelled,
    _translate,
    _watch_response,
)

# --------------------------------------------------------------------------------------------
# streams


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
    """One open watch stream. Use :meth:`Transport.open_watch`.

    A stream may carry many watches: etcd tells them apart by watch id, in every response.
    Ids are chosen by etcd unless :meth:`create` passes one (etcd >= 3.4 honours it; it must
    be unique on the stream). etcd handles the requests of a stream in the order they were
    written and answers the creates in that order, so creates can be pipelined without
    waiting for each answer. Only one task may write at a time, and one read at a time.

    A write gRPC has not taken within ``write_timeout`` closes the stream and raises
    :class:`EtcdUnavailableError`: a stream stuck that way would otherwise hang its reader
    and the writer that watches over it (the one that asks for progress) together.

    Args:
        call: the gRPC stream-stream call.
        write_timeout: seconds one write may take before the stream is given up.
    """

    def __init__(self, call: Any, write_timeout: float) -> None:
        self._call = call
        self._write_timeout = write_timeout

    async def create(
        self,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        *,
        prev_kv: bool = False,
        progress_notify: bool = True,
        watch_id: int = 0,
        no_delete: bool = False,
        no_put: bool = False,
    ) -> None:
        """Ask etcd to start a watch; the answer arrives through :meth:`read`.

        Args:
            key: the key, or the start of the range.
            range_end: the end of the range (exclusive); ``None`` for ``key`` alone.
            start_revision: the first revision to deliver; 0 for "after the current one".
            prev_kv: deliver each key's previous value with its event.
            progress_notify: let etcd send progress notifications to this watch.
            watch_id: the watch's id on this stream, chosen by the caller (> 0, unused on
                the stream); 0 lets etcd choose.
            no_delete: do not deliver deletions.
            no_put: do not deliver puts.
        """
        req = _rpc.WatchCreateRequest(
            key=key,
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        )
        if range_end is not None:
            req.range_end = range_end
        if watch_id > 0:
            req.watch_id = watch_id
        if no_put:
            req.filters.append(_rpc.WatchCreateRequest.NOPUT)
        if no_delete:
            req.filters.append(_rpc.WatchCreateRequest.NODELETE)
        await self._write(_rpc.WatchRequest(create_request=req))

    async def cancel(self, watch_id: int) -> None:
        """Ask etcd to end the watch ``watch_id``; it answers with a ``canceled`` response.

        A cancel written after the watch's create takes effect even when the create's answer
        has not arrived yet (etcd handles the requests of a stream in order).
        """
        req = _rpc.WatchCancelRequest(watch_id=watch_id)
        await self._write(_rpc.WatchRequest(cancel_request=req))

    async def request_progress(self) -> None:
        """Ask etcd for a progress notification (the current revision)."""
        await self._write(_rpc.WatchRequest(progress_request=_rpc.WatchProgressRequest()))

    async def _write(self, req: Any) -> None:
        with anyio.move_on_after(self._write_timeout) as scope:
            try:
                await self._call.write(req)
            except grpc.aio.AioRpcError as exc:
                raise _translate(exc, "watch", write=False) from exc
            except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                raise EtcdUnavailableError(f"watch: stream finished ({exc})") from exc
            except asyncio.CancelledError:
                raise await _cancelled("watch") from None
        if scope.cancelled_caught:
            self.close()
            raise EtcdUnavailableError(
                f"watch: a write was not taken in {self._write_timeout:g}s; stream closed"
            )

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
