"""Contending quota workers in a child process, for ``scripts/bench.py``; JSON lines.

Usage::

    python scripts/bench_quota_worker.py SIDE ENDPOINT NAMESPACE COUNTER WORKERS LIMIT NAME

``SIDE`` is ``lib`` (``WORKERS`` tasks sharing one ``connect()`` as node ``NAME``, each doing
``reserve({"slots": 1})`` + release in a loop) or ``raw`` (``WORKERS`` compare-and-swap
workers sharing one channel and watch of the counter key ``COUNTER``, hex-encoded, with the
same ``LIMIT``). Prints ``{"event": "ready"}`` once connected; then, for each ``go SECONDS``
line on stdin, runs the workers for that long and prints ``{"event": "done", "ops": n,
"cpu": seconds, ...}`` (CAS sides add ``txns``, ``retries`` and ``waits`` of that window).
End of input stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.quotas import CasCounter, for_a_while
from foundation_etcd import Config, connect


def say(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


async def main(argv: list[str]) -> None:
    """Connect one side's workers, then run a window for each ``go`` line on stdin."""
    side, endpoint, namespace, counter_hex, workers_s, limit_s, name = argv
    workers, limit = int(workers_s), int(limit_s)
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        if side == "lib":
            cfg = Config(endpoints=(endpoint,), namespace=namespace)
            cluster = await stack.enter_async_context(
                connect(cfg, node_id=name, hosts_agents=False)
            )
            await cluster.quotas.open_usage("slots")

            async def cycle(c: Any) -> None:
                async with c.quotas.reserve({"slots": 1}):
                    pass

            clients: list[Any] = [cluster] * workers
            counters: list[CasCounter] = []
        else:
            cas = await stack.enter_async_context(
                CasCounter(endpoint, bytes.fromhex(counter_hex), limit)
            )
            cycle = CasCounter.cycle  # type: ignore[assignment]
            clients = [cas] * workers
            counters = [cas]
        say("ready")
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            window = float(line.split()[1])
            before = [(c.txns, c.retries, c.waits) for c in counters]
            c0 = time.process_time()
            ops = await for_a_while(cycle, clients, window)
            extra = {}
            if counters:
                extra = {
                    k: sum(getattr(c, k) - b[i] for c, b in zip(counters, before, strict=True))
                    for i, k in enumerate(("txns", "retries", "waits"))
                }
            say("done", ops=ops, cpu=time.process_time() - c0, **extra)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    asyncio.run(main(sys.argv[1:]))
