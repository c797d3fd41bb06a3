"""aetcd's Lock, timed for ``scripts/bench.py`` in an interpreter of its own.

Usage::

    python scripts/bench_aetcd_lock.py HOST PORT NAME N

Acquires and releases the lock ``NAME`` ``N`` times, one after the other, on one
``aetcd.Client``, and prints the ``N`` wall times in seconds as one JSON list. aetcd is
not a dependency, and it cannot share an interpreter with etcd3aio (both register etcd's
protos in protobuf's default pool). Its ``acquire`` grants a lease each time (a lease
grant, then a Txn; ``release`` is a Txn): three round trips a cycle.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aetcd


async def main(host: str, port: str, name: str, n: str) -> None:
    """Time ``n`` acquire + release cycles and print the samples."""
    async with aetcd.Client(host=host, port=int(port)) as client:
        lock = client.lock(name.encode(), ttl=60)
        samples = []
        for _ in range(int(n)):
            t0 = time.perf_counter()
            await lock.acquire()
            await lock.release()
            samples.append(time.perf_counter() - t0)
    print(json.dumps(samples))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
