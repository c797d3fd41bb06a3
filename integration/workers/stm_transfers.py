"""A worker process: concurrent tasks moving money between accounts with ``cluster.transact``.

Usage: python -m integration.workers.stm_transfers ENDPOINTS NAMESPACE NODE_ID SEED
       [TASKS] [ACCOUNTS] [MAX_ATTEMPTS]

Each task loops: pick two accounts ``acct:{i}`` and an amount (1-20), then one
``cluster.transact`` reads both balances, moves ``min(amount, source balance)`` and writes a
record ``xfer:{id}`` = ``{"src", "dst", "amount"}`` in the same transaction. The id is
``{node}.{task}.{seq}``, unique across processes.

Events (one JSON object per line, one write each, so a SIGKILL never cuts a line; each with
``event`` and wall time ``t``):

* ``ready`` once connected.
* ``attempt`` with ``id``, ``src``, ``dst``, ``amount`` (asked), before ``transact`` is called:
  the transfer in flight.
* ``confirmed`` with ``id``, ``amount`` (moved) and ``attempts`` once ``transact`` returned.
* ``conflict`` with ``id`` and ``attempts`` when ``transact`` raised
  ``TransactionConflictError`` (nothing written); the task carries on.
* ``ambiguous`` with ``id`` when the commit got no answer (it may have been applied); the
  task carries on.
* ``error`` when a task fails otherwise; that task stops.
* ``stopped`` after SIGTERM (each task finishes its transfer in flight, none starts another),
  with the cluster's ``transact_statistics``.
"""

import dataclasses
import json
import random
import sys
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable

import anyio

import foundation_etcd
from foundation_etcd import AmbiguousResultError, Config, TransactionConflictError, Tx

from .stopping import until_sigterm

MAX_AMOUNT = 20


def say(event: str, **fields: object) -> None:
    # one write per line (< PIPE_BUF): a SIGKILL cuts the output between lines, never inside
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def make_transfer(
    src: str, dst: str, asked: int, xid: str, tries: list[int]
) -> Callable[[Tx], Awaitable[int]]:
    """One transfer: move ``min(asked, balance of src)``, record it as ``xfer:{xid}``."""

    async def transfer(tx: Tx) -> int:
        tries[0] = tx.attempt
        a = await tx.get(src)
        b = await tx.get(dst)
        if not isinstance(a, int) or not isinstance(b, int):
            raise RuntimeError(f"{src}={a!r} {dst}={b!r}: not initialised")
        amount = min(asked, a)
        tx.put(src, a - amount)
        tx.put(dst, b + amount)
        tx.put(f"xfer:{xid}", {"src": src, "dst": dst, "amount": amount})
        return amount

    return transfer


async def run(
    cfg: Config,
    node_id: str,
    seed: str,
    tasks: int,
    accounts: int,
    max_attempts: int,
    stop: anyio.Event,
) -> dict[str, int]:
    names = [f"acct:{i}" for i in range(accounts)]
    async with foundation_etcd.connect(cfg, node_id=node_id) as c:
        say("ready", node=node_id)

        async def mover(task: int) -> None:
            rng = random.Random(f"{seed}:{task}")
            seq = 0
            while not stop.is_set():
                src, dst = rng.sample(names, 2)
                asked = rng.randint(1, MAX_AMOUNT)
                xid = f"{node_id}.{task}.{seq}"
                seq += 1
                tries = [0]  # the attempt that ran last
                transfer = make_transfer(src, dst, asked, xid, tries)
                say("attempt", id=xid, src=src, dst=dst, amount=asked)
                try:
                    moved = await c.transact(transfer, max_attempts=max_attempts)
                except TransactionConflictError as exc:
                    say("conflict", id=xid, attempts=exc.attempts, tries=tries[0])
                    continue
                except AmbiguousResultError as exc:
                    say("ambiguous", id=xid, error=repr(exc))
                    continue
                except Exception as exc:
                    say("error", id=xid, error=repr(exc), trace=traceback.format_exc())
                    return
                say("confirmed", id=xid, amount=moved, attempts=tries[0])

        async with anyio.create_task_group() as tg:
            for task in range(tasks):
                tg.start_soon(mover, task)
        return dataclasses.asdict(c.transact_statistics)


async def main() -> None:
    endpoints, namespace, node_id, seed = sys.argv[1:5]
    tasks = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    accounts = int(sys.argv[6]) if len(sys.argv) > 6 else 10
    max_attempts = int(sys.argv[7]) if len(sys.argv) > 7 else 16
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=3.0)
    stats = await until_sigterm(
        lambda stop: run(cfg, node_id, seed, tasks, accounts, max_attempts, stop)
    )
    say("stopped", node=node_id, stats=stats)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
