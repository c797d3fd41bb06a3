"""A child process for tests/test_sync.py: takes a lock through the sync facade, again and again.

Usage: python tests/sync_lock_worker.py ENDPOINTS NAMESPACE WRITER ROUNDS

Each holding reads a counter, waits 20 ms, and writes it back plus one through the lock's
fenced ``put``; it prints one JSON line per holding (``enter``/``exit`` monotonic times,
the fencing token) and ``{"done": ...}`` at the end.
"""

import json
import sys
import time
import warnings

import foundation_etcd as fe


def main() -> None:
    endpoints, namespace, writer, rounds = sys.argv[1:5]
    cfg = fe.Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=3.0)
    with fe.sync.connect(cfg, node_id=writer, hosts_agents=False) as cluster:
        counter = cluster.keyspace.key("test", "counter")
        lock = cluster.lock("counter")
        print(json.dumps({"ready": writer}), flush=True)
        for _ in range(int(rounds)):
            with lock.acquire(writer) as held:
                enter = time.monotonic()
                kv = cluster.transport.get(counter)
                n = int(kv.value) if kv is not None else 0
                time.sleep(0.02)
                held.put(counter, str(n + 1))
                leave = time.monotonic()
            line = {"writer": writer, "enter": enter, "exit": leave, "token": held.token}
            print(json.dumps(line), flush=True)
        print(json.dumps({"done": writer}), flush=True)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    main()
