"""The reads and compares of an election's or a lock's queue, built from names only (pure).

The queue is every key under one prefix, each ``{prefix}{lease_hex}`` of a candidate; the
one with the lowest create revision owns the name (``_coord/ownership.py``).
"""

from __future__ import annotations

from functools import lru_cache

from .kv import Compare, Op, RangeOp

__all__ = ["predecessor", "queue_ops"]


@lru_cache(maxsize=256)
def queue_ops(prefix: bytes, key: bytes) -> tuple[Compare, RangeOp, RangeOp]:
    """The compare "the own key is absent", a read of the queue's first key and of the own."""
    first = Op.get(prefix, prefix=True, limit=1, sort_by_create=True)
    return Compare.create_revision(key) == 0, first, Op.get(key)


def predecessor(prefix: bytes, token: int) -> RangeOp:
    """A read of the newest key created before ``token``: the one a waiter watches."""
    return Op.get(
        prefix,
        prefix=True,
        limit=1,
        sort_by_create=True,
        descending=True,
        max_create_revision=token - 1,
    )
