"""Child processes: the programs the benchmarks start, and their JSON-lines protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

CHILD_TIMEOUT = 30.0  # seconds to wait for a child process's next line
SCRIPTS = Path(__file__).resolve().parent.parent
NODE_SCRIPT = SCRIPTS / "bench_node.py"
LEADER_SCRIPT = SCRIPTS / "bench_leader.py"
ETCD3_LOCK_SCRIPT = SCRIPTS / "bench_etcd3_lock.py"
AETCD_LOCK_SCRIPT = SCRIPTS / "bench_aetcd_lock.py"
AETCD_REQUIREMENT = "aetcd==1.0.0"
QUOTA_WORKER_SCRIPT = SCRIPTS / "bench_quota_worker.py"


@contextlib.asynccontextmanager
async def child_process(*argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process speaking JSON lines on stdout; SIGKILLed at the end if still alive."""
    with tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
        )
        proc.stderr_file = err  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def expect_line(proc: asyncio.subprocess.Process, event: str) -> dict[str, Any]:
    """The child's next JSON line whose ``event`` is ``event`` (earlier lines are skipped)."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), CHILD_TIMEOUT)
        if not line:
            await proc.wait()
            err = proc.stderr_file  # type: ignore[attr-defined]
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"child exited ({proc.returncode}) before {event!r}:\n{tail}")
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("event") == event:
                return msg


class ChildFailed(RuntimeError):
    """A child program exited with an error; the message is the last line it wrote."""


async def run_json(*argv: str) -> Any:
    """Run a child program to its end and return the JSON it printed on stdout.

    Raises:
        ChildFailed: it exited with an error (the message: its last line on stderr).
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ChildFailed(" ".join(err.decode(errors="replace").strip().splitlines()[-1:]))
    return json.loads(out)
