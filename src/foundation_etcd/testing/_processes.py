"""Child processes bounded by the test run that started them, and their directories.

Guarantees, for every process started with :func:`spawn`:

* it runs in its own session (``start_new_session``), so a Ctrl-C in the terminal reaches
  pytest, whose teardown then stops etcd in order;
* on Linux it asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``, set
  by a tiny interpreter that then execs the program), so a SIGKILLed pytest takes its etcd
  servers with it. That signal fires when the *thread* that forked the child ends, so every
  child is forked from one long-lived spawner thread rather than from whichever (possibly
  short-lived, e.g. ``anyio.to_thread``) thread asked.

Every owner registered with :func:`track` is force-closed by an ``atexit`` handler if it is
still open when the interpreter exits. Directories made by :func:`make_run_dir` carry the
owner's pid in their name; those of runs that were killed (pid gone) are removed the first
time a directory is made in the same place.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Protocol

__all__ = ["ForceClosable", "make_run_dir", "spawn", "track", "untrack"]

# Run between the fork and the program: ask for SIGKILL when the parent dies, then become
# the program (same pid; the setting survives exec). A separate interpreter rather than
# ``preexec_fn``: Python code run in a forked child of a process with gRPC's threads and fork
# handlers can crash the child.
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


def spawn(argv: list[str], *, log: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` bounded by this process (see the module), output to ``log``.

    Args:
        argv: the program and its arguments.
        log: receives the child's stdout and stderr; its stdin is ``/dev/null``.
        env: the child's whole environment.

    Returns:
        The child, whose pid is the program's own (the helper interpreter execs it).
    """

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            _with_pdeathsig(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    return _SPAWNER.popen(popen)


class ForceClosable(Protocol):
    """What :func:`track` accepts: an owner of processes and files that can be torn down."""

    def _force_close(self) -> None:
        """Kill whatever runs and remove the files, raising nothing."""
        ...


_SPAWNER = _Spawner()
_DIR_PREFIX = "foundation-etcd-"
_SWEPT: set[str] = set()
_LIVE: set[ForceClosable] = set()
_LIVE_LOCK = threading.Lock()


def track(owner: ForceClosable) -> None:
    """Have ``owner`` force-closed at interpreter exit unless :func:`untrack` is called."""
    with _LIVE_LOCK:
        _LIVE.add(owner)


def untrack(owner: ForceClosable) -> None:
    """Forget ``owner`` (it closed itself); no-op if it is not tracked."""
    with _LIVE_LOCK:
        _LIVE.discard(owner)


@atexit.register
def _cleanup_at_exit() -> None:
    with _LIVE_LOCK:
        owners = list(_LIVE)
    for owner in owners:
        owner._force_close()


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


def make_run_dir(name: str, base_dir: str | os.PathLike[str] | None) -> Path:
    """Sweep ``base_dir`` of orphans (once), then make a fresh directory there for ``name``.

    Args:
        name: part of the directory's name (a member name).
        base_dir: where; the system's temporary directory when ``None``.

    Returns:
        The new, empty directory; removing it is the caller's job.
    """
    _sweep_orphans(base_dir)
    prefix = f"{_DIR_PREFIX}{os.getpid()}-{name}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
