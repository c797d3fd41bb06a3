"""A worker process: takes a lock again and again; inside, makes a few fenced writes.

Usage: python -m integration.workers.locker ENDPOINTS NAMESPACE LOCK TARGET TTL WRITER SEED

``WRITER`` names this process in the histories: it is the value of its waiter key and the
``writer`` of every write. Each holding makes 2 to 4 writes of
``{"writer", "token", "seq", "t"}`` to ``TARGET`` through :meth:`LockHandle.put` (guarded by
the fencing token), 50 ms apart.

Events (JSON lines on stdout): ``ready``, ``lease``, ``enter`` (the body starts),
``write-ok``, ``write-refused``, ``write-error``, ``exit`` (released normally) or ``lost``
(lock or session lost; the body was cancelled) and ``error`` (anything else, a session
that could not be opened included; the worker tries again), carrying ``body_end``, the
time the body stopped running (``null`` when it never ran); and ``log``.
"""

import itertools
import json
import logging
import random
import sys
import time
import warnings
from collections.abc import Iterator

import anyio

from foundation_etcd import (
    Config,
    EtcdError,
    Lease,
    LeaseLostError,
    Lock,
    LockLostError,
    Session,
    open_session,
)
from foundation_etcd.lowlevel import open_transport


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


class _EventLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say("log", logger=record.name, level=record.levelname, message=record.getMessage())


async def take_turns(
    s: Session, name: str, target: str, writer: str, seq: Iterator[int], rng: random.Random
) -> None:
    lock = Lock(s, name)
    while True:
        token = 0
        body_end = 0.0
        try:
            async with lock.acquire(writer) as held:
                token = held.fencing_token
                say("enter", token=token, key=held.key.decode(), lease=held.lease_id)
                try:
                    for _ in range(rng.randint(2, 4)):
                        n, sent = next(seq), time.time()
                        body = {"writer": writer, "token": token, "seq": n, "t": sent}
                        try:
                            rev = await held.put(target, json.dumps(body))
                        except LockLostError as exc:
                            say("write-refused", token=token, seq=n, reason=exc.reason)
                            raise
                        except EtcdError as exc:
                            say("write-error", token=token, seq=n, error=repr(exc))
                        else:
                            say("write-ok", token=token, seq=n, revision=rev, sent=sent)
                        await anyio.sleep(0.05)
                finally:
                    body_end = time.time()
            say("exit", token=token, body_end=body_end)
        except (LockLostError, LeaseLostError) as exc:
            say("lost", token=token, body_end=body_end or None, error=type(exc).__name__)
        except Exception as exc:  # etcd unreachable, ambiguous answers, ...
            say("error", token=token, body_end=body_end or None, reason=repr(exc))
            await anyio.sleep(0.1)
        await anyio.sleep(rng.uniform(0, 0.1))


async def main() -> None:
    endpoints, namespace, name, target, ttl, writer, seed = sys.argv[1:8]
    logging.getLogger("foundation_etcd").addHandler(_EventLog(logging.WARNING))
    rng = random.Random(seed)
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=float(ttl))
    seq = itertools.count(1)

    async def granted(lease: Lease) -> None:
        say("lease", lease=lease.id, generation=lease.generation)

    while True:  # a session that could not be opened (etcd electing a leader) is retried
        try:
            async with open_transport(cfg) as t, open_session(t) as s:
                s.on_renewed(granted)
                await granted(s.lease)
                say("ready")
                await take_turns(s, name, target, writer, seq, rng)
        except EtcdError as exc:
            say("error", token=0, body_end=None, reason=repr(exc))
            await anyio.sleep(0.2)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
