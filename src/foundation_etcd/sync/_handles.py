"""What the generated twins are built on: the wrapper base, receivers, serve handles, connections.

Written by hand, and small: everything that mirrors the async API is generated
(``scripts/gen_sync.py``); this module only says how one object, one stream, one background
task and one connection cross from the event-loop thread to the caller's.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
from anyio.from_thread import start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream

from ._portal import Portal, _Context

__all__ = ["Connection", "Receiver", "Serving", "SyncWrapper", "maybe"]

log = logging.getLogger("foundation_etcd.sync")

T = TypeVar("T")
C = TypeVar("C")
W = TypeVar("W")


def maybe(twin: Callable[[Portal, T], W], portal: Portal, obj: T | None) -> W | None:
    """``twin(portal, obj)``, or ``None`` for ``None``."""
    return None if obj is None else twin(portal, obj)


class SyncWrapper(Generic[T]):
    """The base of every twin: an async object, and the portal of its connection."""

    __slots__ = ("_obj", "_portal")

    def __init__(self, portal: Portal, obj: T) -> None:
        self._portal = portal
        self._obj = obj

    @property
    def wrapped(self) -> T:
        """The async object itself; use it only on the connection's event-loop thread."""
        return self._obj

    def __repr__(self) -> str:
        return f"<sync {self._obj!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncWrapper) and other._obj is self._obj

    def __hash__(self) -> int:
        return id(self._obj)


class Receiver(Generic[T]):
    """The blocking side of a stream of changes (``watch_nodes``, ``observe``, ...).

    Iterate over it (``for changes in receiver:``), or call :meth:`receive`; bound the
    wait with ``foundation_etcd.sync.fail_after``. The iteration ends when the stream does.
    """

    __slots__ = ("_portal", "_stream")

    def __init__(self, portal: Portal, stream: MemoryObjectReceiveStream[T]) -> None:
        self._portal = portal
        self._stream = stream

    def receive(self) -> T:
        """The next item, waiting for it (a checkpoint).

        Raises:
            anyio.EndOfStream: the stream has ended.
        """
        return self._portal.call(self._stream.receive)

    def receive_nowait(self) -> T:
        """The next item if one is waiting.

        Raises:
            anyio.WouldBlock: none is waiting.
            anyio.EndOfStream: the stream has ended.
        """
        return self._portal.run(self._stream.receive_nowait)

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                yield self.receive()
            except anyio.EndOfStream:
                return


class Serving:
    """A task started by a blocking ``serve(...)``, running on the connection's event loop.

    ``serve`` returns it at once. :meth:`stop` ends it (hosted agents stop gracefully, as
    when an async ``serve`` is cancelled); the connection stops it when it closes. An
    error that ended it is raised by :meth:`wait` and :meth:`stop`, and logged.
    """

    def __init__(self, portal: Portal, fn: Callable[[], Awaitable[None]]) -> None:
        self._portal = portal
        self._future, self._scope = portal.start(fn)
        self._seen = False
        portal.serving.add(self)
        self._future.add_done_callback(self._ended)

    def _ended(self, future: Future[None]) -> None:
        self._portal.serving.discard(self)
        if not future.cancelled() and future.exception() is not None:
            log.error("serve stopped with an error", exc_info=future.exception())

    @property
    def running(self) -> bool:
        """Whether it still runs."""
        return not self._future.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until it ends (``serve`` runs until stopped), at most ``timeout`` seconds.

        Raises:
            TimeoutError: it still runs after ``timeout``.
            Exception: the error it ended with.
        """
        self._seen = True
        if self._future.cancelled():
            return
        self._future.result(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop it and wait until it has stopped; raise the error it ended with, if any."""
        if self.running:
            self._portal.cancel(self._scope)
        self.wait(timeout)

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _refuse_event_loop() -> None:
    """Refuse to block a thread that runs an event loop (asyncio, or trio through sniffio)."""
    try:
        asyncio.get_running_loop()
        library = "asyncio"
    except RuntimeError:
        library = ""
        try:
            sniffio = importlib.import_module("sniffio")
            library = str(sniffio.current_async_library())
        except Exception:  # no sniffio, or no async library here
            library = ""
    if library:
        raise RuntimeError(
            f"foundation_etcd.sync blocks, and this thread runs {library}: use the async "
            "API (asyncio) there, or call the sync API from a worker thread "
            "(anyio.to_thread.run_sync, trio.to_thread.run_sync)"
        )


class Connection(AbstractContextManager[C], Generic[C]):
    """An open-able connection: ``with connect(...) as cluster:`` or :meth:`open`.

    Entering starts one event-loop thread (anyio's blocking portal, asyncio backend),
    enters the async ``connect`` there and keeps it open (keepalives, watches and views
    run on that thread while the caller blocks or does other work). Closing stops any
    ``serve`` still running, leaves the async ``connect`` (unregistering, revoking the
    lease) and stops the thread.
    """

    def __init__(
        self, factory: Callable[[], AbstractAsyncContextManager[Any]], wrap: Callable[..., C]
    ) -> None:
        self._factory = factory
        self._wrap = wrap
        self._thread: AbstractContextManager[Any] | None = None
        self._ctx: _Context[Any, Any] | None = None
        self._portal: Portal | None = None
        self._value: C | None = None
        self._lock = threading.RLock()

    def open(self) -> C:
        """Connect, for use without ``with``; :meth:`close` ends it.

        A connection still open at interpreter exit is closed then. Any thread may call it:
        the first opens the connection, the others get the same one.
        """
        with self._lock:  # one connection, however many threads open it at once
            return self._open()

    def _open(self) -> C:
        if self._value is not None:
            return self._value
        _refuse_event_loop()
        thread = start_blocking_portal("asyncio")
        portal = Portal(thread.__enter__())
        ctx: _Context[Any, Any] = _Context(portal, self._factory, lambda v: v, track=False)
        try:
            obj = ctx.__enter__()
        except BaseException:
            thread.__exit__(*sys.exc_info())
            raise
        portal.ended = ctx.task
        portal.close = self.close
        self._thread, self._ctx, self._portal = thread, ctx, portal
        self._value = self._wrap(portal, obj)
        atexit.register(self.close)
        return self._value

    def close(self) -> None:
        """Close the connection (nothing if it is not open)."""
        self._close(None, None, None)

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        with self._lock:  # closed once, even by threads closing it at once
            thread, ctx, portal = self._thread, self._ctx, self._portal
            if thread is None or ctx is None or portal is None:
                return False
            self._thread = self._ctx = self._portal = self._value = None
        atexit.unregister(self.close)
        failed: BaseException | None = None
        try:
            for serving in list(portal.serving):
                try:
                    serving.stop()
                except Exception as error:  # logged; raised below if nothing else is
                    failed = failed or error
            suppressed = ctx.__exit__(exc_type, exc, tb)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop has stopped already
                portal._portal.call(portal._portal.stop, True)
            thread.__exit__(None, None, None)
        if failed is not None and exc is None:
            raise failed
        return suppressed

    def __enter__(self) -> C:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._close(exc_type, exc, tb)
