"""A worker process: one participant of a double barrier, held inside until a gate opens.

Usage: python -m integration.workers.barrier_party ENDPOINTS NAMESPACE NAME COUNT TTL GATE

It enters the double barrier ``NAME`` of ``COUNT`` participants, waits until the barrier
``GATE`` is not set, leaves, and exits.

Events (JSON lines on stdout, each with ``t``, the wall-clock time): ``ready`` (with its
``lease``), ``entered`` (``round``, ``key``), ``leaving`` (just before ``leave`` is called),
``left`` (``revision``: etcd's revision read just after ``leave`` returned), and ``error``.
"""

import json
import sys
import time
import warnings

import anyio

from foundation_etcd import Barrier, Config, DoubleBarrier, open_session
from foundation_etcd.lowlevel import open_transport


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def main() -> None:
    endpoints, namespace, name, count, ttl, gate = sys.argv[1:7]
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=float(ttl))
    async with open_transport(cfg) as t, open_session(t) as s:
        party = DoubleBarrier(s, name, int(count))
        say("ready", lease=s.lease.id)
        try:
            await party.enter()
            say("entered", round=party.round, key=(party.key or b"").decode())
            await Barrier(s, gate).wait()
            say("leaving")
            await party.leave()
            say("left", revision=await t.revision())
        except Exception as exc:
            say("error", error=repr(exc))
            raise


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
