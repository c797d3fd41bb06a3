"""Lease keepalive and watch streams: one gRPC bidirectional stream each."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from .._core.errors import (
    EtcdUnavailableError,
)
from ._wire import (
    WatchResponse,
    _cancelled,
    _rpc,
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
