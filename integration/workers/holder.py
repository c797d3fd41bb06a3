"""A worker process: opens a session, holds a key under its lease, reports events as JSON lines.

Usage: python -m integration.workers.holder ENDPOINTS NAMESPACE KEY TTL
"""

import json
import sys
import time
import warnings

import anyio

from foundation_etcd import Config, Lease, open_session
from foundation_etcd.lowlevel import open_transport


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def main() -> None:
    endpoints, namespace, key, ttl = sys.argv[1:5]
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=float(ttl))
    async with open_transport(cfg) as t, open_session(t) as s:

        async def reregister(lease: Lease) -> None:
            await t.put(key.encode(), b"held", lease=lease.id)
            say("renewed", lease=lease.id, generation=lease.generation)
            lease.on_lost(lambda gone: say("lost", lease=gone.id, reason=gone.lost_reason))

        s.on_renewed(reregister)
        lease = s.lease
        lease.on_lost(lambda gone: say("lost", lease=gone.id, reason=gone.lost_reason))
        await t.put(key.encode(), b"held", lease=lease.id)
        say("ready", lease=lease.id, generation=lease.generation)
        await anyio.sleep_forever()


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
