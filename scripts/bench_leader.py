"""The leader killed in ``scripts/bench.py``'s election failover run; JSON lines on stdout.

Usage::

    python scripts/bench_leader.py ENDPOINT NAMESPACE NAME TTL

Opens a session of ``TTL`` seconds, campaigns in election ``NAME`` and, once it leads,
prints ``{"event": "leader", "key": ..., "ttl": ...}`` (its candidate key and the TTL as
granted); then waits until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import warnings

from foundation_etcd import Config, Election, open_session
from foundation_etcd.lowlevel import open_transport


async def main(endpoint: str, namespace: str, name: str, ttl: str) -> None:
    """Campaign, announce the leadership, wait forever."""
    cfg = Config(endpoints=(endpoint,), namespace=namespace, ttl=float(ttl))
    async with open_transport(cfg) as t, open_session(t, cfg) as session:
        async with Election(session, name).campaign(b"child") as lead:
            line = {"event": "leader", "key": lead.key.decode(), "ttl": session.lease.ttl}
            print(json.dumps(line), flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    asyncio.run(main(*sys.argv[1:5]))
