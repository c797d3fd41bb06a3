"""A worker process: campaigns for an election forever and, as leader, makes fenced writes.

Usage: python -m integration.workers.campaigner ENDPOINTS NAMESPACE ELECTION TARGET TTL WRITER

``WRITER`` names this process in the histories: it is the value of its candidacy key and the
``writer`` of every write. As leader it writes ``{"writer", "token", "seq", "t"}`` to
``TARGET`` through :meth:`Leadership.put` (guarded by the fencing token) every 50 ms.

Events (JSON lines on stdout): ``ready``, ``lease`` (a lease was granted), ``elected``,
``write-ok`` (with the revision), ``write-refused`` (etcd refused the fenced write),
``write-error`` (no answer, or not sent), ``lost`` (the leadership or the campaign ended
because the session was lost), ``error`` (anything else, a session that could not be
opened included; the worker tries again), and ``log`` (library warnings).
"""

import itertools
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator

import anyio

from foundation_etcd import (
    Config,
    Election,
    EtcdError,
    LeadershipLostError,
    Lease,
    LeaseLostError,
    Session,
    open_session,
)
from foundation_etcd.lowlevel import open_transport

WRITE_INTERVAL = 0.05


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


class _EventLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say("log", logger=record.name, level=record.levelname, message=record.getMessage())


async def campaign_forever(
    s: Session, name: str, target: str, writer: str, seq: Iterator[int]
) -> None:
    election = Election(s, name)
    while True:
        token = 0
        try:
            async with election.campaign(writer) as lead:
                token = lead.fencing_token
                say("elected", token=token, key=lead.key.decode(), lease=lead.lease_id)
                while True:
                    n, sent = next(seq), time.time()
                    body = {"writer": writer, "token": token, "seq": n, "t": sent}
                    try:
                        rev = await lead.put(target, json.dumps(body))
                    except LeadershipLostError as exc:
                        say("write-refused", token=token, seq=n, reason=exc.reason)
                        raise
                    except EtcdError as exc:
                        say("write-error", token=token, seq=n, error=repr(exc))
                    else:
                        say("write-ok", token=token, seq=n, revision=rev, sent=sent)
                    await anyio.sleep(WRITE_INTERVAL)
        except (LeadershipLostError, LeaseLostError) as exc:
            say("lost", token=token, error=type(exc).__name__, reason=str(exc))
        except Exception as exc:  # etcd unreachable, ambiguous answers, ...
            say("error", token=token, error=type(exc).__name__, reason=repr(exc))
            await anyio.sleep(0.1)


async def main() -> None:
    endpoints, namespace, name, target, ttl, writer = sys.argv[1:7]
    logging.getLogger("foundation_etcd").addHandler(_EventLog(logging.WARNING))
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
                await campaign_forever(s, name, target, writer, seq)
        except EtcdError as exc:
            say("error", token=0, error=type(exc).__name__, reason=repr(exc))
            await anyio.sleep(0.2)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
