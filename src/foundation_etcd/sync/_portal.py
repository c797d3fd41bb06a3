"""The blocking side of a connection: calls into its event-loop thread, and their contexts.

A :class:`Portal` is one connection's event loop, running in its own thread (anyio's
blocking portal, asyncio backend). Every twin method is one of four calls into it:

* :meth:`Portal.call` runs a coroutine there and blocks until it is done (a *checkpoint*:
  see below), within the caller's :func:`fail_after` deadline;
* :meth:`Portal.run` runs a plain function there (reads of views, properties): no
  checkpoint, no deadline, as in the async API, where such calls are not await points;
* :meth:`Portal.context` enters an async context manager in one task of the loop and
  keeps it open while the caller's ``with`` body runs (entry and exit in the same task,
  as anyio's cancel scopes require);
* :meth:`Portal.background` starts a task (``serve``) that runs until stopped.

**Cancellation becomes an error at the next checkpoint.** In the async API a lost lease
(or a lost lock, leadership or reservation) cancels the body that runs under it. A sync
body cannot be cancelled from outside; instead, once the async side of a context that the
calling thread is inside has ended (its task raised ``LockLostError``, ``LeaseLostError``,
...), the next :meth:`Portal.call` from that thread (any call that is ``await`` in the
async API, or :func:`checkpoint`) raises that error, and so does the ``with`` block's
exit. A sync body that does not call the library checks with :func:`checkpoint`, or with
the handle's own ``ensure_current()`` / ``lost``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import CancelledError, Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

import foundation_etcd as _fe

__all__ = ["Portal", "checkpoint", "fail_after"]

T = TypeVar("T")
R = TypeVar("R")

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class _Local(threading.local):
    def __init__(self) -> None:
        self.contexts: list[_Context[Any, Any]] = []  # entered by this thread, innermost last
        self.deadlines: list[float] = []  # time.monotonic() deadlines of fail_after blocks


_local = _Local()


@contextmanager
def fail_after(seconds: float | None) -> Iterator[None]:
    """Bound every call into the library made by this thread in the block.

    The blocking counterpart of ``anyio.fail_after`` around async calls: a call (or a
    context's entry, such as waiting for a lock) that would end after the deadline is
    cancelled on the event loop and raises :class:`TimeoutError`, with the same cleanup as
    a cancelled async call (a lock waiter's key is deleted, a call raises
    ``CallTimeoutError``). The caller's own code between calls is not interrupted.

    Args:
        seconds: the time allowed from now; ``None`` for no limit.
    """
    if seconds is None:
        yield
        return
    _local.deadlines.append(time.monotonic() + seconds)
    try:
        yield
    finally:
        _local.deadlines.pop()


def _remaining() -> float | None:
    """Seconds left of this thread's innermost deadline, ``None`` without one."""
    if not _local.deadlines:
        return None
    left = min(_local.deadlines) - time.monotonic()
    if left <= 0:
        raise TimeoutError("the foundation_etcd.sync.fail_after deadline has passed")
    return left


def checkpoint() -> None:
    """Raise the error that ended a context this thread is in, if one has ended.

    The sync body's counterpart of an async cancellation point: inside ``with
    lock.acquire() as held:`` (or ``campaign``, ``reserve``, ``session.bind``) it raises
    ``LockLostError`` (``LeadershipLostError``, ``LeaseLostError``, ...) once the lock,
    leadership or lease is known lost; otherwise it returns at once (no I/O). Every
    blocking call that is ``await`` in the async API checks the same first.
    """
    for ctx in _local.contexts:
        ctx.check()


def _wait(future: Future[T]) -> T:
    """The future's result; if the wait is interrupted (Ctrl-C), cancel the call first."""
    try:
        return future.result()
    except CancelledError:
        raise _fe.SessionClosedError("the connection closed during the call") from None
    except BaseException:
        if not future.done():
            future.cancel()  # cancels the task on the event loop
        raise


async def _await(fn: Callable[[], Awaitable[T]], limit: float | None) -> T:
    if limit is None:
        return await fn()
    with anyio.fail_after(limit):
        return await fn()


class Portal:
    """One connection's event-loop thread, and the calls of every twin into it."""

    def __init__(self, portal: BlockingPortal) -> None:
        self._portal = portal
        self.ended: Future[Any] | None = None  # the connection's own context task
        self.serving: set[Any] = set()  # the Serving handles still running
        self.close: Callable[[], None] = lambda: None  # set by the connection

    def check(self) -> None:
        """Raise if the connection has ended, or a context of this thread has (see above)."""
        ended = self.ended
        if ended is not None and ended.done():
            error = None if ended.cancelled() else ended.exception()
            why = f": {type(error).__name__}: {error}" if error is not None else " (closed)"
            raise _fe.SessionClosedError(f"the foundation_etcd.sync connection ended{why}")
        checkpoint()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` on the event loop; block until done (a checkpoint)."""
        self.check()
        limit = _remaining()
        try:
            future = self._portal.start_task_soon(_await, fn, limit)
        except RuntimeError as exc:
            self._refuse(exc)
        return _wait(future)

    def run(self, fn: Callable[[], T]) -> T:
        """Run the plain function ``fn()`` on the event loop thread; block until done."""
        try:
            future = self._portal.start_task_soon(fn)
        except RuntimeError as exc:
            self._refuse(exc)
        return _wait(future)

    def _refuse(self, exc: RuntimeError) -> NoReturn:
        if "event loop thread" in str(exc):
            raise RuntimeError(
                "foundation_etcd.sync was called on its own event loop thread (from a "
                "callback or an async hook): use the async API there"
            ) from exc
        raise _fe.SessionClosedError("the foundation_etcd.sync connection is closed") from exc

    def context(
        self, factory: Callable[[], AbstractAsyncContextManager[T]]
    ) -> AbstractContextManager[T]:
        """A blocking context manager that enters ``factory()`` on the event loop."""
        return _Context(self, factory, _same)

    def context_as(
        self, factory: Callable[[], AbstractAsyncContextManager[T]], wrap: Callable[[T], R]
    ) -> AbstractContextManager[R]:
        """Like :meth:`context`, the entered value passed through ``wrap`` (a twin)."""
        return _Context(self, factory, wrap)

    def start(self, fn: Callable[[], Awaitable[None]]) -> tuple[Future[None], anyio.CancelScope]:
        """Start ``await fn()`` in its own cancel scope; its future and the scope."""
        self.check()
        try:
            future, scope = self._portal.start_task(_scoped, fn)
        except RuntimeError as exc:
            self._refuse(exc)
        return future, scope

    def cancel(self, scope: anyio.CancelScope) -> None:
        """Cancel a scope from outside the loop (nothing if the loop has stopped)."""
        with contextlib.suppress(RuntimeError):
            self._portal.call(scope.cancel)


async def _scoped(fn: Callable[[], Awaitable[None]], *, task_status: Any) -> None:
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        await fn()


def _same(value: T) -> T:
    return value


class _Context(AbstractContextManager[R], Generic[T, R]):
    """An async context manager held open in one task of the loop for a sync ``with``."""

    def __init__(
        self,
        portal: Portal,
        factory: Callable[[], AbstractAsyncContextManager[T]],
        wrap: Callable[[T], R],
        *,
        track: bool = True,
    ) -> None:
        self._portal = portal
        self._factory = factory
        self._wrap = wrap
        self._track = track
        self._entered: Future[T] = Future()
        self._exit_info: ExcInfo = (None, None, None)
        self._exit: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopping = False
        self._cut = False  # the async side was cancelled from within; it may still clean up
        self.task: Future[bool | None] | None = None

    # the loop's side -----------------------------------------------------------------------
    async def _run(self, limit: float | None) -> bool | None:
        self._exit = anyio.Event()
        deadline = math.inf if limit is None else anyio.current_time() + limit
        with anyio.CancelScope(deadline=deadline) as scope:
            self._scope = scope
            try:
                cm = self._factory()
                value = await cm.__aenter__()
            except BaseException as exc:
                timed_out = scope.cancel_called and limit is not None and not self._stopping
                if timed_out and isinstance(exc, anyio.get_cancelled_exc_class()):
                    self._entered.set_exception(TimeoutError("fail_after deadline passed"))
                else:
                    self._entered.set_exception(exc)
                raise
            scope.deadline = math.inf  # the deadline bounds the entry only
            self._entered.set_result(value)
            try:
                await self._exit.wait()
            except BaseException as exc:  # cancelled from within (lease or ownership lost)
                self._cut = True  # said to the body at once: its cleanup may take a while
                if await cm.__aexit__(type(exc), exc, exc.__traceback__):
                    return None
                raise
            return await cm.__aexit__(*self._exit_info)
        return None  # cancelled by the caller (interrupted while entering)

    # the caller's side ---------------------------------------------------------------------
    def __enter__(self) -> R:
        portal = self._portal
        portal.check()
        limit = _remaining()
        try:
            self.task = portal._portal.start_task_soon(self._run, limit)
        except RuntimeError as exc:
            portal._refuse(exc)
        try:
            value = self._entered.result()
        except BaseException:
            if not self._entered.done():  # interrupted (Ctrl-C): stop entering, then raise
                self._stop()
            raise
        if self._track:
            _local.contexts.append(self)
        return self._wrap(value)

    def _stop(self) -> None:
        self._stopping = True
        while self._scope is None and self.task is not None and not self.task.done():
            time.sleep(0.001)  # the task has not started yet
        if self._scope is not None:
            self._portal.cancel(self._scope)
        if self.task is not None:
            with contextlib.suppress(BaseException):
                self.task.result()

    def check(self) -> None:
        """Raise the error the async side ended with, if it has ended early.

        Said as soon as it is known, not once the async side's cleanup (a resign, a release
        etcd does not answer, bounded by the request timeout) has finished: an ownership
        known lost raises its own error, any other block cut short a ``LeaseLostError``.
        """
        task = self.task
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error
        if self._entered.done() and not self._entered.exception():
            ended = getattr(self._entered.result(), "ended", None)
            lost = ended() if callable(ended) else None
            if isinstance(lost, BaseException):
                raise lost
        if self._cut and task is not None and not task.done():
            raise _fe.LeaseLostError(0, "the block's session lease was lost; it is ending")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._track:
            for i in range(len(_local.contexts) - 1, -1, -1):
                if _local.contexts[i] is self:
                    del _local.contexts[i]
                    break
        task, event = self.task, self._exit
        assert task is not None and event is not None
        if not task.done():
            self._exit_info = (exc_type, exc, tb)
            with contextlib.suppress(RuntimeError):  # the loop stopped: the task is ending
                self._portal._portal.call(event.set)
        try:
            return bool(task.result())
        except CancelledError:
            raise _fe.SessionClosedError("the connection closed inside the block") from exc
        except BaseException as error:
            if error is exc:
                return False  # the body's own error (raised by a checkpoint): unchanged
            raise
