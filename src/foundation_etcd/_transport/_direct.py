"""Unary calls straight on grpc.aio's channel core, without a task of their own per call.

``grpc.aio``'s ``UnaryUnaryMultiCallable`` wraps each call in a ``UnaryUnaryCall`` object
that runs the request in an ``asyncio.Task`` of its own, which the caller then awaits: a
task created, scheduled and finished, and one more pass of the event loop, on every request.
Measured here on a one-key Range against etcd 3.5.1, that wrapping is 35-60 µs of client
CPU per request of the 230-260 a request costs (docs/design.md, "the wire"). A
:class:`DirectUnary` makes the same call on the same channel's core (``channel.call(...)``,
then ``await call.unary_unary(...)``) in the caller's own task, and builds the same
``grpc.aio.AioRpcError`` from the call's status, so every caller sees what a stub would
give it: the response message, ``AioRpcError`` on a failed status, ``CancelledError`` (with
the call cancelled) when the caller is cancelled.

The core API is grpc's private one (``grpc._cython.cygrpc``), stable since grpc 1.32, so it
is used only when every piece is found and the channel has no interceptors (an
instrumentation library that adds them keeps seeing every call); otherwise, or with the
environment variable ``FOUNDATION_ETCD_GRPC_STUBS=1``, :func:`direct_unary` returns grpc's
own multicallable. Calls still in flight when the transport closes are cancelled by
:meth:`Calls.cancel_all` before the channel is closed, as ``grpc.aio.Channel.close`` does
for its own.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from anyio.lowlevel import checkpoint_if_cancelled

log = logging.getLogger("foundation_etcd.transport")

__all__ = ["Calls", "DirectUnary", "direct_unary"]

try:  # grpc's private core API; the public stubs are used when any piece is missing
    from grpc._cython import cygrpc as _cygrpc
    from grpc.aio._call import _create_rpc_error

    _build_context = _cygrpc.build_census_context
except (ImportError, AttributeError):  # pragma: no cover - depends on the grpc version
    _cygrpc = None

_CANCELLED = "Locally cancelled by application!"  # grpc.aio's own detail for a cancel


class Calls:
    """The direct calls of one channel still in flight (cancelled when it closes)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active: set[Any] = set()

    def cancel_all(self) -> None:
        """Cancel every call in flight: each caller gets a ``CANCELLED`` ``AioRpcError``."""
        for call in list(self.active):
            if not call.done():
                call.cancel("transport closed")
        self.active.clear()


class DirectUnary:
    """One unary method of a channel, called on the channel's core in the caller's task."""

    __slots__ = (
        "_calls",
        "_core",
        "_deserialize",
        "_extra",
        "_md_in",
        "_md_out",
        "_method",
        "_serialize",
    )

    def __init__(self, multicallable: Any, calls: Calls) -> None:
        """Take the method, its codecs and its registration from grpc's ``multicallable``."""
        self._core = multicallable._channel
        self._method = multicallable._method
        # newer grpc registers the method with the channel: its handle goes with each call
        handle = getattr(multicallable, "_registered_call_handle", None)
        self._extra: tuple[int, ...] = () if handle is None else (handle,)
        self._serialize = multicallable._request_serializer
        self._deserialize = multicallable._response_deserializer
        self._calls = calls
        self._md_in: object = None  # the metadata last passed in, and it as a tuple
        self._md_out: tuple[tuple[str, str | bytes], ...] = ()

    async def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (grpc's multicallable signature)
        metadata: Any = None,
        wait_for_ready: bool | None = None,
    ) -> Any:
        """Send ``request``; return the response message.

        Raises:
            grpc.aio.AioRpcError: the call ended with a status other than OK.
        """
        # a caller already cancelled sends nothing (grpc's stub would start its task only
        # at the next pass of the loop, where the cancellation ends it unsent)
        await checkpoint_if_cancelled()
        if metadata is not self._md_in:  # the transport passes the same object each time
            self._md_in, self._md_out = metadata, tuple(metadata or ())
        payload = self._serialize(request)
        deadline = None if timeout is None else time.time() + timeout
        call = self._core.call(self._method, deadline, None, wait_for_ready, *self._extra)
        active = self._calls.active
        active.add(call)
        try:
            response = await call.unary_unary(payload, self._md_out, _build_context())
        except BaseException:  # cancelled (or interrupted): the call must not go on alone
            if not call.done():
                call.cancel(_CANCELLED)
            raise
        finally:
            active.discard(call)
        if call.is_ok():
            return self._deserialize(response)
        raise _create_rpc_error(call._initial_metadata, call._status)


def _wanted() -> bool:
    return _cygrpc is not None and os.environ.get("FOUNDATION_ETCD_GRPC_STUBS", "") in ("", "0")


def direct_unary(multicallable: Any, calls: Calls) -> Any:
    """A :class:`DirectUnary` for grpc.aio's ``multicallable``, or it unchanged if unsupported."""
    if not _wanted() or getattr(multicallable, "_interceptors", True):
        return multicallable
    try:
        return DirectUnary(multicallable, calls)
    except AttributeError as exc:  # pragma: no cover - depends on the grpc version
        log.debug("grpc's core call API not found (%s): calls go through its stubs", exc)
        return multicallable
