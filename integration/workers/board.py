"""A notice board for the process tests: what changed wakes whoever waits for a condition.

The tests read their workers' lines and exits in reader tasks; each reader calls
:meth:`Board.notify` after it records something, and the test awaits a condition on what
was recorded instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio


class Board:
    """Something changed (an event, a worker line, an exit): wake whoever waits."""

    def __init__(self) -> None:
        self._changed = anyio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, predicate: Callable[[], bool], seconds: float) -> bool:
        """Wait until ``predicate()`` holds; ``False`` when ``seconds`` passed first."""
        with anyio.move_on_after(seconds):
            while not predicate():
                await self._changed.wait()
            return True
        return predicate()
