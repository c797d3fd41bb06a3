"""Child of scripts/bench_sync.py: python3-etcd3's ``Lock`` in its own process and venv.

Usage: ``PYTHON bench_sync_peer.py HOST:PORT OPS``; prints one JSON line with the
acquire+release wall times (seconds) after untimed warm-up operations.
"""

from __future__ import annotations

import json
import sys
import time

import etcd3


def main() -> None:
    """Time ``OPS`` acquire+release cycles of one python3-etcd3 lock."""
    host, port = sys.argv[1].rsplit(":", 1)
    ops = int(sys.argv[2])
    client = etcd3.client(host=host, port=int(port))
    lock = client.lock("bench-sync-peer", ttl=10)
    for _ in range(20):
        lock.acquire()
        lock.release()
    samples = []
    for _ in range(ops):
        t0 = time.perf_counter()
        lock.acquire()
        lock.release()
        samples.append(time.perf_counter() - t0)
    print(json.dumps({"lock": samples}))


if __name__ == "__main__":
    main()
