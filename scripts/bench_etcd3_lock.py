"""python3-etcd3's Lock, timed for ``scripts/bench.py`` in an interpreter of its own.

Usage::

    python scripts/bench_etcd3_lock.py HOST PORT NAME N

Acquires and releases the lock ``NAME`` ``N`` times, one after the other, and prints the
``N`` wall times in seconds as one JSON list. python3-etcd3 (``import etcd3``) is not a
dependency, and it cannot share an interpreter with etcd3aio.
"""

from __future__ import annotations

import json
import sys
import time

import etcd3


def main(host: str, port: str, name: str, n: str) -> None:
    """Time ``n`` acquire + release cycles and print the samples."""
    client = etcd3.client(host=host, port=int(port))
    lock = client.lock(name, ttl=60)
    samples = []
    for _ in range(int(n)):
        t0 = time.perf_counter()
        lock.acquire()
        lock.release()
        samples.append(time.perf_counter() - t0)
    print(json.dumps(samples))


if __name__ == "__main__":
    main(*sys.argv[1:5])
