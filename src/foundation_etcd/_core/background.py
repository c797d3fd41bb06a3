"""Background tasks beside a ``with`` body, without wrapping the body's exceptions.

anyio task groups wrap every exception that crosses them in an ``ExceptionGroup``. The
library's context managers (sessions, views, subscriptions) run helper tasks beside the
caller's body; an error raised by the caller's own code must come out as itself, not
wrapped. :func:`background_tasks` keeps that promise: the body's exception is held while the
helper tasks are cancelled and re-raised unchanged once they have stopped. A failing helper
task still cancels the body and surfaces as an exception group (a bug, not a usage error).

:func:`cleanup_scope` is the one way the library runs cleanup (a revoke, a resign, an
unregister, a final checkpoint) on the way out: shielded from the cancellation that is
ending the body, and bounded so that an unreachable etcd cannot hold the exit forever.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

__all__ = ["background_tasks", "cancel_scope", "cleanup_scope", "loop_time", "unless_set"]


@asynccontextmanager
async def background_tasks() -> AsyncIterator[TaskGroup]:
    """A task group for helper tasks; they are cancelled when the body ends.

    Yields:
        The task group to start helper tasks in.
    """
    body_error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        try:
            yield tg
        except BaseException as exc:  # held, and re-raised unchanged below
            body_error = exc
        tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


def loop_time() -> float:
    """The event loop's clock: ``anyio.current_time()`` on asyncio, without its backend lookup.

    The library runs on asyncio only (``require_asyncio``); hot paths read the clock several
    times per request.
    """
    return asyncio.get_running_loop().time()


_scope_class: type[anyio.CancelScope] | None = None


def cancel_scope(*, shield: bool = False, deadline: float = math.inf) -> anyio.CancelScope:
    """``anyio.CancelScope(shield=..., deadline=...)`` without a backend lookup per call.

    ``anyio.CancelScope()`` looks up the running backend every time (about 3 µs, four times
    what making the scope costs); the library runs on asyncio only (``require_asyncio``),
    so the class that lookup returns is remembered from the first scope and made directly.
    """
    global _scope_class
    if _scope_class is None:
        _scope_class = type(anyio.CancelScope())
    return _scope_class(shield=shield, deadline=deadline)


async def unless_set(event: anyio.Event, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
    """Run ``fn(*args)``, cancelled if ``event`` is set first; whether it ran to its end.

    An exception of ``fn`` is raised as it is (not in an exception group).
    """
    error: Exception | None = None
    finished = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            await fn(*args)
            finished = True
        except Exception as exc:  # raised below, unwrapped
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return finished  # False: cancelled by ``event`` (the group's own cancel, not the caller's)


def cleanup_scope(limit: float) -> anyio.CancelScope:
    """A scope for cleanup: shielded from outer cancellation, and over after ``limit`` seconds.

    Args:
        limit: how long the cleanup may take; past it the scope's body is cancelled.
    """
    return cancel_scope(shield=True, deadline=loop_time() + limit)
