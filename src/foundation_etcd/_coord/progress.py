"""Progress of a view's watch streams: asking etcd for it, verifying answers, and silence.

A watched view learns which revision it reflects from events, from progress notifications of
its own watch (etcd sends those only once the watch is synced), and from answers to progress
requests. etcd < 3.5.8 may answer a progress request ahead of pending events, so such an
answer is trusted only once one linearizable count confirms it (:func:`unchanged_since`).

Guarantees:
    * A stream is asked for progress when a waiter wants it (:meth:`Pinger.want`) or when
      it has been quiet for the progress interval; while nothing arrives, it is asked at most
      once per half interval. A wish made while no stream is up is served by the next one.
    * A stream silent for more than twice the interval although asked for progress, or one
      whose progress request fails, is closed: its reader sees a broken stream and the view
      resumes on a new one.
    * :func:`unchanged_since` is true only if the prefix at the progress revision has no key
      changed after the applied revision and as many keys as the view.
"""

from __future__ import annotations

import logging
import math
import time

import anyio

from .._core.errors import EtcdError
from .._transport import Transport, WatchStream

__all__ = ["RECHECK", "Pinger", "unchanged_since"]

log = logging.getLogger("foundation_etcd.watch")

RECHECK = 0.02  # seconds between verifications of progress while events are pending


class Pinger:
    """Progress requests of one view's watch streams, and the watchdog of their silence.

    Args:
        prefix: the view's prefix (for the log).
    """

    def __init__(self, prefix: bytes) -> None:
        self._prefix = prefix
        self._wanted = anyio.Event()

    def want(self) -> None:
        """Ask the stream for progress now (or the next stream, when none is up)."""
        self._wanted.set()

    async def run(self, stream: WatchStream, last: list[float], interval: float) -> None:
        """Ask for progress when the stream is quiet or a waiter needs it; kill it when dead.

        Args:
            stream: the stream to ask (and to close).
            last: ``[when the stream last delivered a response]`` (``time.monotonic``),
                updated by its reader.
            interval: the progress interval.
        """
        asked_at = math.inf
        while True:
            with anyio.move_on_after(interval / 2):
                await self._wanted.wait()
            now = time.monotonic()  # the clock of asyncio's loop, without anyio's lookup
            if now - last[0] > 2 * interval and now - asked_at > interval:
                log.info("watch on %r silent for %.1fs; restarting", self._prefix, now - last[0])
                stream.close()
                return
            if self._wanted.is_set() or now - last[0] > interval:
                self._wanted = anyio.Event()
                if asked_at == math.inf or asked_at < last[0] or now - asked_at > interval / 2:
                    asked_at = now
                    try:
                        await stream.request_progress()
                    except EtcdError:
                        stream.close()  # the reader sees the broken stream and resumes
                        return


async def unchanged_since(
    transport: Transport, prefix: bytes, applied: int, count: int, progress: int
) -> bool:
    """Whether ``count`` keys as applied at ``applied`` also equal the prefix at ``progress``.

    True when, at ``progress``, no key under the prefix was changed after ``applied`` and the
    number of keys is ``count`` (a deletion lowers the count; a re-creation has a newer mod
    revision). One linearizable count.
    """
    changed, total = await transport.count_prefix_changes(prefix, after=applied, revision=progress)
    return changed == 0 and total == count
