"""Waiting for a condition on local state, for tests."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import anyio

__all__ = ["wait_until"]


async def wait_until(predicate: Callable[[], object], *, poll: float = 0.01) -> None:
    """Return once ``predicate()`` is true; bound the wait with ``anyio.fail_after``.

    For conditions on in-memory state (a view, a list filled by a callback) that have no
    event of their own. The predicate may be a coroutine function; any truthy value ends
    the wait (``lambda: view.get(key)``).
    """
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await anyio.sleep(poll)
