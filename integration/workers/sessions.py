"""A worker process holding several sessions, each with a key under its lease.

Usage: python -m integration.workers.sessions ENDPOINTS NAMESPACE COUNT TTL NAME

Each session has its own transport to every endpoint (so the sessions spread their
keepalives over the members) and keeps ``{NAME}-{i}`` under its lease. Default timings.

Events (JSON lines on stdout): ``ready`` (every session open, with their lease ids),
``lost`` (a lease was lost, with the reason), ``renewed`` (a replacement lease), ``stats``
(each session's counters, on SIGINT's way out) and ``log`` (library warnings).
"""

import json
import logging
import signal
import sys
import time
import warnings
from contextlib import AsyncExitStack

import anyio

from foundation_etcd import Config, Lease, Session, open_session
from foundation_etcd.lowlevel import open_transport


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


class _EventLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say("log", logger=record.name, level=record.levelname, message=record.getMessage())


def watch_lease(session: Session, index: int, lease: Lease) -> None:
    lease.on_lost(
        lambda lost: (
            lost.lost_reason != "session closed"
            and say("lost", session=index, lease=lost.id, reason=lost.lost_reason)
        )
    )


async def main() -> None:
    endpoints, namespace, count, ttl, name = sys.argv[1:6]
    logging.getLogger("foundation_etcd").addHandler(_EventLog(logging.WARNING))
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=float(ttl))
    async with AsyncExitStack() as stack:
        sessions: list[Session] = []
        for i in range(int(count)):
            t = await stack.enter_async_context(open_transport(cfg))
            s = await stack.enter_async_context(open_session(t))
            sessions.append(s)
            watch_lease(s, i, s.lease)

            async def renewed(lease: Lease, i: int = i, s: Session = s, t: object = t) -> None:
                watch_lease(s, i, lease)
                say("renewed", session=i, lease=lease.id, generation=lease.generation)

            s.on_renewed(renewed)
            await t.put(cfg.keyspace.key(f"{name}-{i}"), b"", lease=s.lease.id)
        say("ready", leases=[s.lease.id for s in sessions])
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                break
        say(
            "stats",
            sessions=[
                {
                    "keepalives": st.keepalives,
                    "failures": st.keepalive_failures,
                    "losses": st.leases_lost,
                }
                for st in (s.statistics() for s in sessions)
            ],
        )


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
