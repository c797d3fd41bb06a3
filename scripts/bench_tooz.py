"""tooz's lock and group membership on etcd (its etcd3gw driver), timed for ``scripts/bench.py``.

Usage::

    python scripts/bench_tooz.py HOST PORT NAME N

Runs in a venv of its own (tooz and etcd3gw with their dependencies; neither is ours). On
one coordinator (``etcd3+http://HOST:PORT``, heartbeats on): ``N`` lock acquire + release
cycles on lock ``NAME``, then ``N`` group join + leave cycles on group ``NAME``, one after
the other. Prints ``{"lock": [...], "join": [...]}``, wall times in seconds.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from tooz import coordination


def main(host: str, port: str, name: str, n: str) -> None:
    """Time the cycles and print the samples."""
    coord = coordination.get_coordinator(f"etcd3+http://{host}:{port}", b"bench-tooz")
    coord.start(start_heart=True)
    try:
        lock = coord.get_lock(name.encode())
        locks = []
        for _ in range(int(n)):
            t0 = time.perf_counter()
            lock.acquire(blocking=True)
            lock.release()
            locks.append(time.perf_counter() - t0)
        group = name.encode()
        with contextlib.suppress(coordination.GroupAlreadyExist):
            coord.create_group(group).get()
        joins = []
        for _ in range(int(n)):
            t0 = time.perf_counter()
            coord.join_group(group).get()
            coord.leave_group(group).get()
            joins.append(time.perf_counter() - t0)
    finally:
        coord.stop()
    print(json.dumps({"lock": locks, "join": joins}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
