"""Run a worker's body until SIGTERM asks it to stop (the tests' clean shutdown)."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def until_sigterm(body: Callable[[anyio.Event], Awaitable[T]]) -> T:
    """Run ``body(stop)``; ``stop`` is set on SIGTERM so the body can finish its work."""
    stop = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                async for _ in signals:
                    stop.set()

            tg.start_soon(on_signal)
            result = await body(stop)
            tg.cancel_scope.cancel()
    return result
