import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent

# The longest tests (about a minute each, most of it waiting on TTLs and faults) go first,
# so that the two xdist workers of `make test` finish together instead of one of them
# starting a one-minute test at the end (longest-first packing).
_LONGEST_FIRST = (
    "test_signals_nemesis.py",
    "test_quota_stress.py",
    "test_election_nemesis.py",
    "test_installed_wheel.py",
    "test_quota_crafted.py",
    "test_leader_faults.py",
    "test_demo.py",
    "test_stm_stress.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


class Worker:
    """A Python worker process speaking JSON lines on stdout."""

    def __init__(self, module: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        self.events: list[dict] = []

    async def next_event(self, name: str | None = None, limit: float = 20) -> dict:
        assert self.proc.stdout is not None
        with anyio.fail_after(limit):
            while True:
                line = await anyio.to_thread.run_sync(self.proc.stdout.readline)
                if not line:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError(f"worker exited: {err[-3000:]}")
                ev = json.loads(line)
                self.events.append(ev)
                if name is None or ev["event"] == name:
                    return ev

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def spawn_worker() -> Iterator:
    workers: list[Worker] = []

    def spawn(module: str, *args: str) -> Worker:
        w = Worker(module, *args)
        workers.append(w)
        return w

    yield spawn
    for w in workers:
        w.stop()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collect garbage after every test, so that a leaked socket is blamed on its test."""
    yield
    gc.collect()
