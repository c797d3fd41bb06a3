"""A TCP proxy that can cut a client off from its server: pass, drop, or blackhole.

The proxy listens on a free port of 127.0.0.1 and forwards every accepted connection to
its target. It runs its own asyncio event loop in its own thread, so it keeps forwarding
(or refusing to) while the test's event loop is busy or blocked, and its mode can be
switched from any thread. A mode switch has taken effect when the call returns.

Modes:

* **pass** — bytes flow both ways untouched (gRPC's HTTP/2 included).
* **drop** — every open connection is reset (RST: ``SO_LINGER`` 0, then close), on both
  sides; new connections are reset right after they are accepted. Like a crashed host
  that answers again, or a firewall sending resets.
* **blackhole** — connections stay open but nothing is forwarded either way: bytes are read
  and discarded, so writers do not block. New connections are accepted and blackholed too.
  Like a network partition: the client only notices through its own timeouts.

Bytes discarded by a blackhole are gone, so a connection that lost some cannot carry its
protocol any more: when the proxy returns to **pass**, such connections (and those accepted
during the blackhole, which were never connected to the target) are reset, as a long
partition would end them. Connections that lost nothing simply carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from .._core.known_servers import is_known, mark_known, unmark_known
from ._sockets import close_orphaned_sockets, reset

__all__ = ["FaultProxy", "FaultProxyFactory", "ProxyMode", "ProxyStatistics"]

_CHUNK = 64 * 1024


class ProxyMode(enum.Enum):
    """What the proxy does with traffic."""

    PASS = "pass"
    DROP = "drop"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    """Counters of a :class:`FaultProxy`.

    Attributes:
        mode: the current mode.
        connections_accepted: connections accepted since the start, in any mode.
        open_connections: connections currently open.
        connections_reset: connections reset by the proxy (drop, or return to pass).
        bytes_forwarded: bytes forwarded, both directions.
        bytes_discarded: bytes read and thrown away by a blackhole, both directions.
    """

    mode: ProxyMode
    connections_accepted: int
    open_connections: int
    connections_reset: int
    bytes_forwarded: int
    bytes_discarded: int


class _Link:
    """One client connection and, when connected, its upstream connection."""

    __slots__ = (
        "client_reader",
        "client_writer",
        "connecting",
        "dead",
        "killed",
        "tainted",
        "up_writer",
    )

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client_reader = reader
        self.client_writer = writer
        self.up_writer: asyncio.StreamWriter | None = None
        self.connecting = False
        self.tainted = False  # some bytes (or an end of stream) were discarded
        self.dead = False
        self.killed = asyncio.Event()


class FaultProxy:
    """A TCP proxy from a free local port to ``target`` whose traffic can be cut.

    Args:
        target: ``host:port`` to forward to.
        host: address to listen on.
        port: port to listen on; a free one by default.
        connect_timeout: how long to wait for the target when a client connects, seconds.

    Example::

        with FaultProxy(server.endpoint) as proxy:
            config = Config(endpoints=(proxy.endpoint,))
            ...
            proxy.blackhole()
    """

    def __init__(
        self,
        target: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        target_host, sep, target_port = target.rpartition(":")
        if not sep or not target_host or not target_port.isdigit():
            raise ValueError(f"target must be host:port, not {target!r}")
        self._target = (target_host.strip("[]"), int(target_port))
        self._listen = (host, port)
        self._connect_timeout = connect_timeout
        self._mode = ProxyMode.PASS
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Every transport not yet collected, so that none outlives the loop unclosed.
        self._transports: weakref.WeakSet[asyncio.WriteTransport] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._address: tuple[str, int] | None = None
        self._closed = False
        self._marked: str | None = None  # in front of a throwaway server: marked as one
        self._accepted = 0
        self._resets = 0
        self._forwarded = 0
        self._discarded = 0

    def __repr__(self) -> str:
        where = self.endpoint if self._address else "not started"
        return f"<FaultProxy {where} -> {self.target} {self._mode.value}>"

    # -- public API

    @property
    def target(self) -> str:
        """Where connections are forwarded, ``host:port``."""
        return f"{self._target[0]}:{self._target[1]}"

    @property
    def endpoint(self) -> str:
        """Where clients connect, ``host:port``."""
        if self._address is None:
            raise RuntimeError("the proxy is not started")
        return f"{self._address[0]}:{self._address[1]}"

    @property
    def mode(self) -> ProxyMode:
        """The current mode."""
        return self._mode

    @property
    def connections_accepted(self) -> int:
        """Connections accepted since the start, in any mode."""
        return self._accepted

    @property
    def bytes_forwarded(self) -> int:
        """Bytes forwarded so far, both directions."""
        return self._forwarded

    def statistics(self) -> ProxyStatistics:
        """Return a snapshot of the counters."""
        return ProxyStatistics(
            mode=self._mode,
            connections_accepted=self._accepted,
            open_connections=len(self._links),
            connections_reset=self._resets,
            bytes_forwarded=self._forwarded,
            bytes_discarded=self._discarded,
        )

    def start(self, timeout: float = 10.0) -> FaultProxy:
        """Start listening (in the proxy's own thread) and return the proxy.

        Raises:
            OSError: the listening socket could not be opened.
            RuntimeError: the proxy was started before or is closed.
        """
        if self._thread is not None or self._closed:
            raise RuntimeError(f"{self!r} cannot be started again")
        ready: Future[tuple[str, int]] = Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"FaultProxy->{self.target}", daemon=True
        )
        self._thread.start()
        try:
            self._address = ready.result(timeout)
        except Exception:
            self.close()
            raise
        if is_known([self.target]):
            self._marked = self.endpoint
            mark_known(self._marked)
        return self

    def set_mode(self, mode: ProxyMode, timeout: float = 5.0) -> None:
        """Switch to ``mode``; it has taken effect when this returns. Thread-safe.

        Raises:
            RuntimeError: the proxy is not running.
        """
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            raise RuntimeError(f"{self!r} is not running")
        if self._thread is threading.current_thread():
            self._apply(mode)
            return

        async def apply() -> None:
            self._apply(mode)

        asyncio.run_coroutine_threadsafe(apply(), loop).result(timeout)

    def pass_(self) -> None:
        """Forward traffic both ways (the initial mode)."""
        self.set_mode(ProxyMode.PASS)

    def drop(self) -> None:
        """Reset every connection now and every new one as soon as it is accepted."""
        self.set_mode(ProxyMode.DROP)

    def blackhole(self) -> None:
        """Keep connections open but forward nothing, either way."""
        self.set_mode(ProxyMode.BLACKHOLE)

    def close(self, timeout: float = 10.0) -> None:
        """Stop listening, close every connection and end the proxy's thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._marked is not None:
            unmark_known(self._marked)
            self._marked = None
        loop, thread, stopping = self._loop, self._thread, self._stopping
        if loop is not None and not loop.is_closed() and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended on its own
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"{self!r}: its thread did not end within {timeout:g} s")

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the proxy's thread

    def _run(self, ready: Future[tuple[str, int]]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.run_until_complete(self._main(ready))
            loop.run_until_complete(loop.shutdown_asyncgens())
            # aborted transports close their sockets in a later loop callback: run the
            # loop a little longer so that none is left for the garbage collector
            loop.run_until_complete(asyncio.sleep(0.05))
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            loop.close()
            close_orphaned_sockets(loop)

    async def _main(self, ready: Future[tuple[str, int]]) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._on_client, *self._listen)
        try:
            sockname = server.sockets[0].getsockname()
            ready.set_result((str(sockname[0]), int(sockname[1])))
            await self._stopping.wait()
        finally:
            server.close()
            await self._shut_down()
            await server.wait_closed()

    async def _shut_down(self) -> None:
        """Reset every connection and wait (bounded) for every task of the loop to end.

        Connections accepted just before the listener closed may not have reached their
        handler yet; the handler resets them itself (the proxy is closed), so those tasks
        are waited for rather than cancelled.
        """
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        deadline = loop.time() + 2.0
        while True:
            for link in list(self._links):
                self._kill(link)
            for task in list(self._tasks):
                task.cancel()
            others = [t for t in asyncio.all_tasks() if t is not me]
            if not others or loop.time() > deadline:
                break
            await asyncio.wait(others, timeout=0.1)
        for transport in list(self._transports):
            transport.abort()
        for _ in range(3):  # let the transports' connection_lost callbacks run
            await asyncio.sleep(0)

    def _apply(self, mode: ProxyMode) -> None:
        self._mode = mode
        for link in list(self._links):
            if mode is ProxyMode.DROP or (
                mode is ProxyMode.PASS
                and (link.tainted or (link.up_writer is None and not link.connecting))
            ):
                if not link.dead:
                    self._resets += 1
                self._kill(link)

    def _kill(self, link: _Link) -> None:
        if link.dead:
            return
        link.dead = True
        link.killed.set()
        reset(link.client_writer)
        reset(link.up_writer)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        self._transports.add(writer.transport)
        if self._mode is ProxyMode.DROP or self._closed:
            self._resets += 1
            reset(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        link = _Link(reader, writer)
        self._links.add(link)
        self._tasks.add(task)
        try:
            if self._mode is ProxyMode.PASS:
                up_reader = await self._connect(link)
                if up_reader is None:
                    return
            else:
                up_reader = None
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._pump(link, reader, upstream=True))
                if up_reader is not None:
                    tasks.create_task(self._pump(link, up_reader, upstream=False))
            if link.tainted:
                # A blackholed connection whose peer hung up gets no answer either: it stays
                # open until the mode changes (it is then reset) or the proxy closes.
                await link.killed.wait()
        finally:
            self._links.discard(link)
            self._tasks.discard(task)
            if not link.dead:
                link.dead = True
                writer.close()
                if link.up_writer is not None:
                    link.up_writer.close()

    async def _connect(self, link: _Link) -> asyncio.StreamReader | None:
        link.connecting = True
        try:
            async with asyncio.timeout(self._connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except (OSError, TimeoutError):
            self._kill(link)
            return None
        finally:
            link.connecting = False
        link.up_writer = up_writer
        self._transports.add(up_writer.transport)
        if link.dead:  # dropped while connecting
            reset(up_writer)
            return None
        return up_reader

    async def _pump(self, link: _Link, source: asyncio.StreamReader, *, upstream: bool) -> None:
        """Copy one direction until end of stream; discard while blackholed."""
        while True:
            try:
                data = await source.read(_CHUNK)
            except OSError:
                self._kill(link)
                return
            sink = link.up_writer if upstream else link.client_writer
            if not data:
                if self._mode is not ProxyMode.PASS:
                    link.tainted = True  # the end of stream is swallowed too
                elif link.dead or link.tainted or sink is None or sink.is_closing():
                    self._kill(link)
                elif sink.can_write_eof():
                    with contextlib.suppress(OSError):
                        sink.write_eof()
                else:
                    self._kill(link)
                return
            if self._mode is ProxyMode.PASS and sink is not None and not link.dead:
                try:
                    sink.write(data)
                    await sink.drain()
                except OSError:
                    self._kill(link)
                    return
                self._forwarded += len(data)
            else:
                self._discarded += len(data)
                link.tainted = True


class FaultProxyFactory(Protocol):
    """What the ``fault_proxy_factory`` fixture is: it returns a started proxy."""

    def __call__(self, target: str) -> FaultProxy:
        """Start a proxy to ``target`` (``host:port``), closed when the test ends."""
        ...
