"""A worker process: tasks adding to sharded counters, reporting every add as JSON lines.

Usage: python -m integration.workers.counter_worker ENDPOINTS NAMESPACE WORKER SEED [TASKS]

Each task adds random amounts (-3..5, never 0) to the counter ``shared`` (every worker's)
or to ``own-{WORKER}`` (this worker's only), one add at a time, until SIGTERM. Events, one
JSON object per line, each written with one ``write`` and flushed (a SIGKILL can cut the
output between lines, never inside one):

* ``ready`` once connected (a session open, the handles made);
* ``begin`` with ``id``, ``counter`` and ``n`` just before an add is sent: in flight;
* ``done`` with ``id`` once the add returned: confirmed, applied exactly once;
* ``refused`` with ``id`` when it lost to other writers every time
  (``TransactionConflictError``): not applied; the task goes on;
* ``error`` with ``id`` when an add raised (its task stops; ``ambiguous`` says whether the
  add may have been applied);
* ``stopped`` after SIGTERM, once every task finished its add, with each handle's
  statistics.
"""

import json
import random
import sys
import time
import warnings

import anyio

from foundation_etcd import (
    AmbiguousResultError,
    Config,
    ShardedCounter,
    TransactionConflictError,
    open_session,
)
from foundation_etcd.lowlevel import open_transport

from .stopping import until_sigterm

SHARDS = 16  # as many as the test's writers: random homes collide at first, and move


def say(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


async def run(cfg: Config, worker: str, seed: str, tasks: int, stop: anyio.Event) -> None:
    async with open_transport(cfg) as t, open_session(t) as session:
        counters = {
            name: ShardedCounter(session, name, shards=SHARDS)
            for name in ("shared", f"own-{worker}")
        }
        say("ready", worker=worker, lease=session.lease.id)

        async def adder(task: int) -> None:
            rng = random.Random(f"{seed}:{task}")
            seq = 0
            while not stop.is_set():
                name = "shared" if rng.random() < 0.75 else f"own-{worker}"
                n = rng.choice([-3, -2, -1, 1, 2, 3, 4, 5])
                add_id = f"{worker}:{task}:{seq}"
                say("begin", id=add_id, counter=name, n=n)
                try:
                    await counters[name].add(n)
                except TransactionConflictError:
                    say("refused", id=add_id)
                    seq += 1
                    continue
                except Exception as exc:
                    ambiguous = isinstance(exc, AmbiguousResultError)
                    say("error", id=add_id, error=repr(exc), ambiguous=ambiguous)
                    return
                say("done", id=add_id)
                seq += 1

        async with anyio.create_task_group() as tg:
            for task in range(tasks):
                tg.start_soon(adder, task)
        stats = {name: vars_of(c) for name, c in counters.items()}
        say("stopped", worker=worker, statistics=stats)


def vars_of(c: ShardedCounter) -> dict[str, int]:
    s = c.statistics()
    return {
        "adds": s.adds,
        "txns": s.txns,
        "conflicts": s.conflicts,
        "ambiguous": s.ambiguous,
    }


async def main() -> None:
    endpoints, namespace, worker, seed = sys.argv[1:5]
    tasks = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=3.0)
    await until_sigterm(lambda stop: run(cfg, worker, seed, tasks, stop))


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
