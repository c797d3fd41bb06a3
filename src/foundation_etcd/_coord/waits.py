"""Waiting for etcd to change: the one wait-for-delete helper every primitive uses.

Guarantees:
    * :func:`wait_deleted` returns once ``key`` is deleted at a revision after the one given,
      or when etcd cannot say (the watch was compacted past it or cancelled): the caller
      then reads the key again. It never returns early on a broken stream: the watch is
      resumed from the last revision seen, with backoff.
    * It writes nothing; cancelling it leaves nothing behind.
"""

from __future__ import annotations

import logging

import anyio

from .._core.errors import EtcdError
from .._core.kv import EventType
from .._transport import Transport

__all__ = ["wait_deleted"]

log = logging.getLogger("foundation_etcd.waits")


async def wait_deleted(transport: Transport, key: bytes, after_revision: int) -> None:
    """Return once ``key`` is deleted at a revision after ``after_revision`` (or unknowable).

    Args:
        transport: the connection to watch on.
        key: the key to wait for.
        after_revision: the revision the caller last saw the key at.
    """
    delay = 0.05
    while True:
        stream = transport.open_watch()
        try:
            await stream.create(key, None, after_revision + 1, progress_notify=False)
            while True:
                resp = await stream.read()
                if resp.compact_revision or resp.canceled:
                    return  # cannot tell: let the caller look again
                for ev in resp.events:
                    after_revision = ev.revision
                    if ev.type is EventType.DELETE:
                        return
        except EtcdError as exc:
            log.info("watch on %r broke (%s); resuming", key, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
        finally:
            stream.close()
