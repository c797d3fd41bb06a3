"""One contending counter writer in its own process, for ``scripts/bench_counter.py``.

Usage::

    python scripts/bench_counter_worker.py ENDPOINT NAMESPACE SHARDS

Opens a transport and a session, prints ``{"event": "ready"}``, then for each line
``go MODE NAME START SECONDS`` on stdin waits until the wall time ``START``, adds 1 in a
loop until ``START + SECONDS`` and prints ``{"event": "done", "ops": n, "txns": t,
"retries": r, "elapsed": s}``: ``ops`` confirmed increments, ``txns`` transactions sent,
``retries`` those that lost to another writer, ``elapsed`` seconds from ``START`` to the
end of the last increment. ``MODE`` is:

* ``cas``: a compare-and-swap counter on one key (``bench-cas/NAME``, a decimal string):
  read it once with its mod revision, then ``txn(mod_revision == seen, put value + 1,
  failure: get key)``; a lost compare takes the value read back in the failure branch
  and tries again at once. The textbook optimistic counter.
* ``sharded``: ``ShardedCounter(session, NAME, shards=SHARDS).add(1)``.

An ambiguous increment (no answer) ends the worker with ``{"event": "error"}``: the run's
exactness check could not hold. End of input stops it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from typing import Any

from foundation_etcd import Config, Session, open_session
from foundation_etcd._coord.counters import ShardedCounter
from foundation_etcd.lowlevel import Compare, Op, Transport, open_transport


def say(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class CasCounter:
    """The raw baseline: one key, compare its mod revision, put +1, read back on failure."""

    def __init__(self, transport: Transport, key: bytes) -> None:
        self._t, self._key = transport, key
        self._mod, self._value = 0, 0
        self.txns = self.retries = 0

    async def load(self) -> None:
        """Read the key once (value and mod revision)."""
        kv = await self._t.get(self._key)
        self._mod, self._value = (0, 0) if kv is None else (kv.mod_revision, int(kv.value))

    async def add_one(self) -> None:
        """Add 1, retrying at once on every lost compare."""
        while True:
            self.txns += 1
            res = await self._t.txn(
                [Compare.mod_revision(self._key) == self._mod],
                [Op.put(self._key, str(self._value + 1))],
                [Op.get(self._key)],
            )
            if res.succeeded:
                self._mod, self._value = res.revision, self._value + 1
                return
            self.retries += 1
            kv = res.range(0).first
            self._mod, self._value = (0, 0) if kv is None else (kv.mod_revision, int(kv.value))


async def window(session: Session, mode: str, name: str, start: float, seconds: float) -> None:
    """Run one measured window and report it."""
    ks = session.config.keyspace
    if mode == "cas":
        cas = CasCounter(session.transport, ks.key("bench-cas", name))
        await cas.load()
        add = cas.add_one
    else:
        counter = ShardedCounter(session, name, shards=int(sys.argv[3]))
        add = counter.add
    await asyncio.sleep(max(0.0, start - time.time()))
    ops, end = 0, start + seconds
    while time.time() < end:
        await add()
        ops += 1
    elapsed = time.time() - start
    if mode == "cas":
        txns, retries = cas.txns, cas.retries
    else:
        stats = counter.statistics()
        txns, retries = stats.txns, stats.conflicts
    say("done", ops=ops, txns=txns, retries=retries, elapsed=elapsed)


async def main(endpoint: str, namespace: str) -> None:
    """Connect, then run a window for each ``go`` line on stdin."""
    cfg = Config(endpoints=(endpoint,), namespace=namespace, ttl=10.0)
    loop = asyncio.get_running_loop()
    async with open_transport(cfg) as t, open_session(t) as session:
        say("ready")
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            _, mode, name, start, seconds = line.split()
            try:
                await window(session, mode, name, float(start), float(seconds))
            except Exception as exc:
                say("error", error=repr(exc))
                return


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
