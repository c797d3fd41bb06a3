"""Shared watched views: one view per prefix for the whole process, opened on first use.

Guarantees:
    * However many features ask for the same prefix at once, one view is opened (one watch
      stream); each later call returns it.
    * Every view runs in the task group given at construction and is closed with it.
    * Views that were opened elsewhere can be adopted (:meth:`SharedViews.adopt`), so that a
      prefix is never watched twice.
    * A feature that closes its view when it no longer needs it opens one of its own
      (:meth:`SharedViews.open_own`): it runs in the same task group until the feature's
      ``keep`` coroutine returns, and is never shared.
    * Opening rides out etcd faults: these views are opened by a process that is already
      connected (its session proves etcd is there), so a first list that fails because a
      member does not answer (paused, killed, cut off: the read meets the request deadline)
      is tried again with jittered backoff until it succeeds. A caller of a shared view
      waits for that at most twice the request timeout, then gets
      :class:`EtcdUnavailableError` (the opening goes on: a later call finds the view once
      etcd answers). A refusal (:class:`AuthError`) is raised to the caller.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._core.errors import AuthError, EtcdError, EtcdUnavailableError
from .._transport import Transport
from .watch import WatchedView, open_view

__all__ = ["SharedViews"]

log = logging.getLogger("foundation_etcd.watch")


class SharedViews:
    """Opens and shares watched views by prefix. Call it: ``await views(prefix)``.

    Args:
        transport: the connection the views watch on.
        task_group: where the views run (they end with it).
    """

    def __init__(self, transport: Transport, task_group: TaskGroup) -> None:
        self._transport = transport
        self._tg = task_group
        self._views: dict[bytes, WatchedView] = {}
        self._opening: dict[bytes, anyio.Event] = {}  # set when opened, or refused
        self._refused: dict[bytes, AuthError] = {}
        self._wait = 2 * transport.config.request_timeout

    async def __call__(self, prefix: bytes) -> WatchedView:
        """The watched view of ``prefix``, opened once and kept until the task group ends.

        Raises:
            EtcdUnavailableError: not open after twice the request timeout (etcd does not
                answer); the opening goes on.
            AuthError: etcd refused the first list.
        """
        view = self._views.get(prefix)
        if view is not None:
            return view
        opened = self._opening.get(prefix)
        if opened is None:  # one view per prefix, however many ask at once
            opened = self._opening[prefix] = anyio.Event()
            self._refused.pop(prefix, None)  # a refusal before is asked again
            self._tg.start_soon(self._run_shared, prefix, opened)
        with anyio.move_on_after(self._wait):
            await opened.wait()
        view = self._views.get(prefix)
        if view is not None:
            return view
        if prefix in self._refused:
            raise self._refused[prefix]
        raise EtcdUnavailableError(
            f"view of {prefix!r}: no first list within {self._wait:g} s (etcd does not "
            "answer); it opens once etcd answers"
        )

    async def _run_shared(self, prefix: bytes, opened: anyio.Event) -> None:
        async def keep(view: WatchedView) -> None:
            self._views[prefix] = view
            opened.set()
            await anyio.sleep_forever()

        try:
            await self._run(prefix, keep, task_status=anyio.TASK_STATUS_IGNORED)
        except AuthError as exc:
            if prefix in self._views:
                raise  # refused after it was open: as any view that stops
            self._refused[prefix] = exc  # before: the callers waiting get it
            del self._opening[prefix]
            opened.set()

    def opened(self) -> dict[bytes, WatchedView]:
        """Every view opened or adopted so far, by prefix (a copy; no I/O)."""
        return dict(self._views)

    def adopt(self, prefix: bytes, view: WatchedView) -> None:
        """Share a view of ``prefix`` that its opener keeps running."""
        self._views.setdefault(prefix, view)

    async def open_own(
        self, prefix: bytes, keep: Callable[[WatchedView], Awaitable[None]]
    ) -> WatchedView:
        """A view of ``prefix`` of the caller's own, open until ``keep(view)`` returns.

        ``keep`` runs in this object's task group once the view is loaded; when it returns
        (or the task group ends) the view is closed.
        """
        view: WatchedView = await self._tg.start(self._run, prefix, keep)
        return view

    async def _run(
        self,
        prefix: bytes,
        keep: Callable[[WatchedView], Awaitable[None]] | None = None,
        *,
        task_status: TaskStatus[Any],
    ) -> None:
        delay, started = 0.05, False
        while True:
            try:
                async with open_view(self._transport, prefix) as view:
                    started = True
                    task_status.started(view)
                    if keep is None:
                        await anyio.sleep_forever()
                    else:
                        await keep(view)
                        return
            except EtcdError as exc:
                if started or isinstance(exc, AuthError):
                    raise
                log.info("view of %r: first list failed (%s); trying again", prefix, exc)
                await anyio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
