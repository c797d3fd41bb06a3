"""The sdist's own tests on every other Python 3.11+ found on this machine.

``make test`` runs the whole suite (``tests/`` and ``integration/``) on the interpreter of the
project's ``.venv``. For each other CPython 3.11 or newer on the machine, this installs the
project **from its sdist** into a new virtual environment outside the checkout (with the
``test`` extra) and runs the sdist's own tests there, from the unpacked sdist, so the code
under test is the installed one. Which tests (``--tests``):

* ``single-etcd`` (the default; ``make test`` and ``make test-pythons``): ``tests/``
  without the tests marked ``once`` (they start Python processes or virtual environments,
  or are scale tests; the code they reach is the code the other tests run in process).
  About 1.5 minutes for two interpreters at once here, installs not included.
* ``unit``: ``tests/unit``, the pure code.

``make test`` starts the preparation in the background first (``start``: the sdist built, a
venv per interpreter made and the sdist installed into it, at ``nice`` 10 while the checks
and the main suite run) and runs the tests last, in the foreground (``wait``), all
interpreters at once. The tests do not run beside the main suite: sharing a 2-core machine
with it, timing tests of both failed (a session's keepalive, a watch's promptness). When
its owner (the ``make`` that started it) is gone, the background process stops what it runs
and removes the venvs. With no command, everything runs in the foreground.

Interpreters are looked for as ``python3.11`` ... ``python3.19`` on ``PATH`` and as
``$PYENV_ROOT/versions/*/bin/python3`` (a pyenv shim that does not run is skipped); one per
minor version, the ``.venv``'s own version excluded. ``FOUNDATION_ETCD_PYTHONS`` (paths
separated by spaces) replaces the search; set to an empty string, nothing runs.

Each interpreter's output is printed when it ends: all of it when its install or a test
failed, its summary line otherwise. ``wait`` exits 1 if any run failed.

Usage::

    python scripts/test_pythons.py [--list] [--tests unit|single-etcd] [-- PYTEST-ARGS...]
    python scripts/test_pythons.py start [--owner PID]
    python scripts/test_pythons.py wait [--tests unit|single-etcd] [-- PYTEST-ARGS...]
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

from foundation_etcd.testing._processes import _pid_alive as alive

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".test-pythons"  # what a background run writes: its logs and results
OLDEST = (3, 11)
NICE = 10
PROBE = "import platform, sys; print(platform.python_implementation(), *sys.version_info[:2])"
WHERE = "import foundation_etcd, sys; print(foundation_etcd.__file__, sys.prefix)"
STEP_TIMEOUT = 900.0
WAIT_TIMEOUT = 1800.0
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider"]
SELECTIONS = {  # --tests: what runs on each other interpreter
    # the pure code, no etcd; in one process (8 s; xdist workers cost 40 s here)
    "unit": ["-n", "0", "tests/unit"],
    # make test and make test-pythons: all of tests/ but the `once` tests
    "single-etcd": ["-n", "3", "-m", "not once", "tests"],
}


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


@dataclass(frozen=True)
class Prepared:
    """An interpreter's venv with the sdist installed, or why it could not be made."""

    name: str
    python: str  # the venv's interpreter ("" when the install failed)
    tree: str  # the unpacked sdist, where its tests run
    error: str
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
            raise StepFailed("stopped (interrupted, or the make that started it has ended)")
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

    def prepare(self, it: Interpreter, sdist: Path, tree: Path) -> Prepared:
        """Make the interpreter's venv and install the sdist into it (with ``test``)."""
        start = time.monotonic()
        log = self.logs / f"python-{it.name}.log"
        venv = self.work / f"venv-{it.name}"
        python = str(venv / "bin" / "python")
        try:
            self.step([it.path, "-m", "venv", str(venv)], self.work, log)
            # no .pyc for every installed file: what the tests import compiles on first use
            install = ["-m", "pip", "install", "--quiet", "--no-compile", f"{sdist}[test]"]
            self.step([python, *install], self.work, log)
            module, prefix = self.step([python, "-c", WHERE], tree, log).split()
            if not Path(module).is_relative_to(prefix):
                raise StepFailed(f"foundation_etcd came from {module}, not the new environment")
        except StepFailed as exc:
            return Prepared(it.name, "", str(tree), f"install: {exc}", time.monotonic() - start)
        return Prepared(it.name, python, str(tree), "", time.monotonic() - start)

    def test(self, ready: Prepared, extra: list[str]) -> Outcome:
        """Run the sdist's tests (``extra``: the selection and more arguments) there."""
        if ready.error:
            return Outcome(ready.name, False, ready.error, ready.seconds)
        start = time.monotonic()
        log = self.logs / f"python-{ready.name}.log"
        try:
            output = self.step([ready.python, *PYTEST, *extra], Path(ready.tree), log)
        except StepFailed as exc:
            with log.open("a", encoding="utf-8") as out:
                out.write(f"\n{exc}\n")
            return Outcome(ready.name, False, str(exc), ready.seconds + time.monotonic() - start)
        seconds = ready.seconds + time.monotonic() - start
        return Outcome(ready.name, True, summary(output), seconds)


def summary(output: str) -> str:
    """Pytest's last line (``723 passed, 3 skipped in 108.58s``), without its rule."""
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def prepare_all(others: list[Interpreter], runner: Runner, owner: int) -> list[Prepared]:
    """Build the sdist, then make every interpreter's venv at once."""
    if owner:

        def watch_owner() -> None:
            while not runner.stop.wait(1.0):
                if not alive(owner):
                    runner.kill_all()

        threading.Thread(target=watch_owner, daemon=True).start()
    try:
        sdist, tree = runner.build_sdist()
    except StepFailed as exc:
        text = (runner.logs / "sdist.log").read_text(encoding="utf-8", errors="replace")
        return [Prepared(it.name, "", "", f"sdist: {exc}\n{text}", 0.0) for it in others]
    with ThreadPoolExecutor(max_workers=len(others)) as pool:
        return list(pool.map(lambda it: runner.prepare(it, sdist, tree), others))


def test_all(ready: list[Prepared], runner: Runner, extra: list[str]) -> list[Outcome]:
    """Run every prepared interpreter's tests at once."""
    with ThreadPoolExecutor(max_workers=max(1, len(ready))) as pool:
        try:
            return list(pool.map(lambda r: runner.test(r, extra), ready))
        except KeyboardInterrupt:
            runner.kill_all()
            raise


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
        print(f"python {it.name} ({it.path}): the sdist's tests", flush=True)


def start(owner: int) -> int:
    """Start the preparation in a background process of its own; returns at once."""
    others = discover()
    announce(others)
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    (STATE / "plan.json").write_text(json.dumps([asdict(it) for it in others]), encoding="utf-8")
    if not others:
        (STATE / "prepared.json").write_text("[]", encoding="utf-8")
        return 0
    cmd = [sys.executable, __file__, "_prepare", "--owner", str(owner)]
    with (STATE / "background.log").open("wb") as out:
        # same session as make (a group of its own): see Runner.step
        subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            process_group=0, preexec_fn=lambda: os.nice(NICE),
        )  # fmt: skip
    print(f"test_pythons: preparing in the background at nice {NICE}; 'wait' runs the tests")
    return 0


def background(owner: int) -> int:
    """The background process: prepare every venv, write ``prepared.json``, clean up.

    The venvs (``work``) are removed once the owner is gone, whether its ``wait`` ran the
    tests or the make failed before it.
    """
    plan = json.loads((STATE / "plan.json").read_text(encoding="utf-8"))
    others = [Interpreter(p["path"], tuple(p["version"])) for p in plan]
    work = Path(tempfile.mkdtemp(prefix="fe-pythons-"))
    (STATE / "work").write_text(str(work), encoding="utf-8")
    try:
        ready = prepare_all(others, Runner(work, STATE), owner)
        tmp = STATE / "prepared.json.tmp"
        tmp.write_text(json.dumps([asdict(r) for r in ready]), encoding="utf-8")
        tmp.replace(STATE / "prepared.json")
        while owner and alive(owner):
            time.sleep(1.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def wait(extra: list[str]) -> int:
    """Wait for the preparation, run the tests in the foreground; 1 if any failed."""
    prepared = STATE / "prepared.json"
    if not (STATE / "plan.json").exists():
        print("test_pythons: nothing was started ('start' first)", file=sys.stderr)
        return 2
    deadline = time.monotonic() + WAIT_TIMEOUT
    said = time.monotonic()
    while not prepared.exists():
        if time.monotonic() > deadline:
            print(f"test_pythons: not prepared in {WAIT_TIMEOUT:.0f} s", file=sys.stderr)
            return 1
        if time.monotonic() - said >= 30:
            print("test_pythons: still installing", flush=True)
            said = time.monotonic()
        time.sleep(0.5)
    ready = [Prepared(**r) for r in json.loads(prepared.read_text(encoding="utf-8"))]
    if not ready:
        print("test_pythons: no other CPython 3.11+ found; nothing to run")
        return 0
    names = ", ".join(r.name for r in ready)
    print(f"test_pythons: {' '.join(extra)} of the sdist on python {names}, at once", flush=True)
    work = Path((STATE / "work").read_text(encoding="utf-8"))  # removed by the background
    return report(test_all(ready, Runner(work, STATE), extra), STATE)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run",
                        choices=["run", "start", "wait", "_prepare"])  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--owner", type=int, default=0, help="stop when this process is gone")
    parser.add_argument(
        "--tests",
        choices=sorted(SELECTIONS),
        default="single-etcd",
        help="tests/unit, or tests/ without the `once` tests (the default)",
    )
    argv = sys.argv[1:] if argv is None else argv
    more = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(more) - (1 if "--" in argv else 0)])
    extra = [*SELECTIONS[args.tests], *more]
    if args.command == "start":
        return start(args.owner)
    if args.command == "wait":
        return wait(extra)
    if args.command == "_prepare":
        return background(args.owner)
    others = discover()
    announce(others)
    if args.list or not others:
        return 0
    with tempfile.TemporaryDirectory(prefix="fe-pythons-") as tmp:
        runner = Runner(Path(tmp), Path(tmp))
        ready = prepare_all(others, runner, 0)
        return report(test_all(ready, runner, extra), Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
