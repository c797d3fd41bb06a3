"""The sdist's own tests on every other Python 3.11+ found on this machine (``make test``).

``make test`` runs the whole suite (``tests/`` and ``integration/``) on the interpreter of the
project's ``.venv``. For each other CPython 3.11 or newer on the machine, this installs the
project **from its sdist** into a new virtual environment outside the checkout (with the
``test`` extra) and runs the sdist's own ``tests/`` there, from the unpacked sdist, so the code
under test is the installed one. Those runs leave out the tests marked ``once``: they start
Python processes or virtual environments, or are scale tests, and the code they reach is the
code the other tests run in process.

``make test`` starts the runs in the background first (``start``, at ``nice`` 10, so they take
what the main suite leaves of a 2-core machine) and collects them last (``wait``): together
the suites finish in under ten minutes. A background run ends when its owner (the ``make``
that started it) is gone. With no command, the runs go in the foreground.

Interpreters are looked for as ``python3.11`` ... ``python3.19`` on ``PATH`` and as
``$PYENV_ROOT/versions/*/bin/python3`` (a pyenv shim that does not run is skipped); one per
minor version, the ``.venv``'s own version excluded. ``FOUNDATION_ETCD_PYTHONS`` (paths
separated by spaces) replaces the search; set to an empty string, nothing runs.

Each interpreter's output is printed when it ends: all of it when its install or a test
failed, its summary line otherwise. ``wait`` exits 1 if any run failed.

Usage::

    python scripts/test_pythons.py [--list] [-- PYTEST-ARGS...]
    python scripts/test_pythons.py start [--owner PID]
    python scripts/test_pythons.py wait
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".test-pythons"  # what a background run writes: its logs and results
OLDEST = (3, 11)
NICE = 10
PROBE = "import platform, sys; print(platform.python_implementation(), *sys.version_info[:2])"
WHERE = "import foundation_etcd, sys; print(foundation_etcd.__file__, sys.prefix)"
STEP_TIMEOUT = 900.0
WAIT_TIMEOUT = 1800.0
PYTEST = ["-m", "pytest", "-n", "2", "-m", "not once", "-p", "no:cacheprovider", "tests"]


@dataclass(frozen=True)
class Interpreter:
    """A CPython found on this machine."""

    path: str
    version: tuple[int, int]

    @property
    def name(self) -> str:
        """``3.12`` for CPython 3.12."""
        return f"{self.version[0]}.{self.version[1]}"


@dataclass(frozen=True)
class Outcome:
    """How one interpreter's install and test run ended."""

    name: str
    ok: bool
    summary: str
    seconds: float


class StepFailed(Exception):
    """A command exited non-zero, did not end in time, or the owner went away."""


def probe(path: str) -> Interpreter | None:
    """The interpreter at ``path``, or None if it does not run or is not CPython."""
    try:
        done = subprocess.run(
            [path, "-c", PROBE], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 3 or words[0] != "CPython":
        return None
    return Interpreter(path, (int(words[1]), int(words[2])))


def candidates() -> list[str]:
    """Paths to try: ``FOUNDATION_ETCD_PYTHONS`` alone when it is set."""
    given = os.environ.get("FOUNDATION_ETCD_PYTHONS")
    if given is not None:
        return given.split()
    found = [p for n in range(11, 20) if (p := shutil.which(f"python3.{n}"))]
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found += sorted(glob.glob(os.path.join(pyenv, "versions", "*", "bin", "python3")))
    return found


def discover() -> list[Interpreter]:
    """One interpreter per minor version from 3.11 on, the running one's version excluded."""
    mine = sys.version_info[:2]
    chosen: dict[tuple[int, int], Interpreter] = {}
    for path in candidates():
        found = probe(path)
        if found is None or found.version < OLDEST or found.version == mine:
            continue
        chosen.setdefault(found.version, found)
    return [chosen[v] for v in sorted(chosen)]


class Runner:
    """Runs the steps of every interpreter; stops them all when ``stop`` is set."""

    def __init__(self, work: Path, logs: Path) -> None:
        self.work = work
        self.logs = logs
        self.stop = threading.Event()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def step(self, cmd: list[str], cwd: Path, log: Path) -> str:
        """Run one command, its output appended to ``log``; StepFailed unless it exits 0."""
        with log.open("ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            # a process group of its own (to kill it whole), in the same session: with the
            # kernel's autogroup scheduling, a new session would also be a new CPU group,
            # and the nice level would then weigh nothing against the main suite
            proc = subprocess.Popen(
                cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                process_group=0,
            )  # fmt: skip
            with self._lock:
                self._procs.add(proc)
            try:
                data, _ = proc.communicate(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill(proc)
                data, _ = proc.communicate()
                out.write(data)
                raise StepFailed(f"no result in {STEP_TIMEOUT:.0f} s") from None
            finally:
                with self._lock:
                    self._procs.discard(proc)
            out.write(data)
        if self.stop.is_set():
            raise StepFailed("stopped: the make that started this run has ended")
        if proc.returncode != 0:
            raise StepFailed(f"exited {proc.returncode}")
        return data.decode(errors="replace")

    def kill_all(self) -> None:
        """Stop every running step (and what it started: each is its own process group)."""
        self.stop.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def build_sdist(self) -> tuple[Path, Path]:
        """The sdist built from the checkout, and the directory it unpacks to."""
        log = self.logs / "sdist.log"
        self.step([sys.executable, "-m", "build", "--sdist", "--outdir", str(self.work), "."],
                  ROOT, log)  # fmt: skip
        (sdist,) = self.work.glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(self.work, filter="data")
        return sdist, self.work / sdist.name.removesuffix(".tar.gz")

    def run(self, it: Interpreter, sdist: Path, tree: Path, extra: list[str]) -> Outcome:
        """Install the sdist for one interpreter, then run its tests (no ``once`` ones)."""
        start = time.monotonic()
        log = self.logs / f"python-{it.name}.log"
        venv = self.work / f"venv-{it.name}"
        python = str(venv / "bin" / "python")
        try:
            self.step([it.path, "-m", "venv", str(venv)], self.work, log)
            self.step([python, "-m", "pip", "install", "--quiet", f"{sdist}[test]"], self.work, log)
            module, prefix = self.step([python, "-c", WHERE], tree, log).split()
            if not Path(module).is_relative_to(prefix):
                raise StepFailed(f"foundation_etcd came from {module}, not the new environment")
            output = self.step([python, *PYTEST, *extra], tree, log)
        except StepFailed as exc:
            with log.open("a", encoding="utf-8") as out:
                out.write(f"\n{exc}\n")
            return Outcome(it.name, False, str(exc), time.monotonic() - start)
        return Outcome(it.name, True, summary(output), time.monotonic() - start)


def summary(output: str) -> str:
    """Pytest's last line (``723 passed, 3 skipped in 108.58s``), without its rule."""
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_all(others: list[Interpreter], logs: Path, extra: list[str], owner: int) -> list[Outcome]:
    """Build the sdist, then install and test it on every interpreter at once."""
    with tempfile.TemporaryDirectory(prefix="fe-pythons-") as tmp:
        runner = Runner(Path(tmp), logs)
        if owner:

            def watch_owner() -> None:
                while not runner.stop.wait(1.0):
                    if not alive(owner):
                        runner.kill_all()

            threading.Thread(target=watch_owner, daemon=True).start()
        try:
            sdist, tree = runner.build_sdist()
        except StepFailed as exc:
            text = (logs / "sdist.log").read_text(encoding="utf-8", errors="replace")
            return [Outcome("sdist", False, f"building the sdist: {exc}\n{text}", 0.0)]
        with ThreadPoolExecutor(max_workers=len(others)) as pool:
            outcomes = list(pool.map(lambda it: runner.run(it, sdist, tree, extra), others))
        runner.stop.set()
        return outcomes


def report(outcomes: list[Outcome], logs: Path) -> int:
    """Print each run's result (a failed one's whole log); 1 if any failed."""
    for o in outcomes:
        if not o.ok:
            log = logs / f"python-{o.name}.log"
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            print(f"\n----- python {o.name} FAILED ({o.summary}); its log -----\n{text}")
    for o in outcomes:
        state = "" if o.ok else "FAILED: "
        print(f"python {o.name}: {state}{o.summary} ({o.seconds:.0f} s with the install)")
    return 0 if all(o.ok for o in outcomes) else 1


def announce(others: list[Interpreter]) -> None:
    """Say what will run."""
    if not others:
        print("test_pythons: no other CPython 3.11+ found; nothing to run", flush=True)
    for it in others:
        print(f"python {it.name} ({it.path}): the sdist's tests/ -m 'not once'", flush=True)


def start(owner: int, extra: list[str]) -> int:
    """Start the runs in a background process of their own; returns at once."""
    others = discover()
    announce(others)
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    (STATE / "plan.json").write_text(json.dumps([asdict(it) for it in others]), encoding="utf-8")
    if not others:
        (STATE / "results.json").write_text("[]", encoding="utf-8")
        return 0
    cmd = [sys.executable, __file__, "_background", "--owner", str(owner), "--", *extra]
    with (STATE / "background.log").open("wb") as out:
        subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            process_group=0, preexec_fn=lambda: os.nice(NICE),
        )  # fmt: skip
    print(f"test_pythons: started in the background at nice {NICE}; 'wait' collects them")
    return 0


def background(owner: int, extra: list[str]) -> int:
    """The background process: run everything, then write ``results.json``."""
    plan = json.loads((STATE / "plan.json").read_text(encoding="utf-8"))
    others = [Interpreter(p["path"], tuple(p["version"])) for p in plan]
    outcomes = run_all(others, STATE, extra, owner)
    tmp = STATE / "results.json.tmp"
    tmp.write_text(json.dumps([asdict(o) for o in outcomes]), encoding="utf-8")
    tmp.replace(STATE / "results.json")
    return 0


def wait() -> int:
    """Wait for the background runs, print their results; 1 if any failed."""
    results = STATE / "results.json"
    if not (STATE / "plan.json").exists():
        print("test_pythons: nothing was started ('start' first)", file=sys.stderr)
        return 2
    deadline = time.monotonic() + WAIT_TIMEOUT
    said = time.monotonic()
    while not results.exists():
        if time.monotonic() > deadline:
            print(f"test_pythons: no result in {WAIT_TIMEOUT:.0f} s", file=sys.stderr)
            return 1
        if time.monotonic() - said >= 30:
            running = sorted(p.name for p in STATE.glob("python-*.log"))
            print(f"test_pythons: still running ({', '.join(running) or 'building'})", flush=True)
            said = time.monotonic()
        time.sleep(0.5)
    outcomes = [Outcome(**o) for o in json.loads(results.read_text(encoding="utf-8"))]
    return report(outcomes, STATE)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run",
                        choices=["run", "start", "wait", "_background"])  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--owner", type=int, default=0, help="stop when this process is gone")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    if args.command == "start":
        return start(args.owner, extra)
    if args.command == "wait":
        return wait()
    if args.command == "_background":
        return background(args.owner, extra)
    others = discover()
    announce(others)
    if args.list or not others:
        return 0
    with tempfile.TemporaryDirectory(prefix="fe-pythons-logs-") as logs:
        return report(run_all(others, Path(logs), extra, 0), Path(logs))


if __name__ == "__main__":
    sys.exit(main())
