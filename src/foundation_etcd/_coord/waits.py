"""Waiting for etcd to change: the one wait-for-delete helper every primitive uses.

Guarantees:
    * :func:`wait_deleted` returns once ``key`` is deleted at a revision after the one given,
      or when etcd cannot say (the watch was compacted past it or cancelled): the caller
      then reads the key again. It never returns early on a broken stream: the watch is
      resumed from the last revision seen, with backoff. :func:`wait_written` is the same
      for a put.
    * It writes nothing; cancelling it leaves nothing behind.
"""

from __future__ import annotations

import logging

import anyio

from .._core.errors import EtcdError
from .._core.kv import EventType
from .._transport import Transport

__all__ = ["wait_deleted", "wait_written"]

log = logging.getLogger("foundation_etcd.waits")


async def wait_deleted(transport: Transport, key: bytes, after_revision: int) -> None:
    """Return once ``key`` is deleted at a revision after ``after_revision`` (or unknowable).

    Args:
        transport: the connection to watch on.
        key: the key to wait for.
        after_revision: the revision the caller last saw the key at.
    """
    await _wait(transport, key, after_revision, EventType.DELETE)


async def wait_written(transport: Transport, key: bytes, after_revision: int) -> tuple[int, int]:
    """Return once ``key`` is put at a revision after ``after_revision`` (or unknowable).

    Returns:
        The revision of that put (or of the last event seen when etcd cannot tell), and the
        key's create revision then (0 when etcd cannot tell).
    """
    return await _wait(transport, key, after_revision, EventType.PUT)


async def _wait(
    transport: Transport, key: bytes, after_revision: int, kind: EventType
) -> tuple[int, int]:
    delay = 0.05
    while True:
        stream = transport.open_watch()
        try:
            await stream.create(key, None, after_revision + 1, progress_notify=False)
            while True:
                resp = await stream.read()
                if resp.compact_revision or resp.canceled:  # cannot tell: the caller looks
                    return max(after_revision, resp.compact_revision - 1), 0
                for ev in resp.events:
                    after_revision = ev.revision
                    if ev.type is kind:
                        return after_revision, ev.kv.create_revision
        except EtcdError as exc:
            log.info("watch on %r broke (%s); resuming", key, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
        finally:
            stream.close()
