"""Where calls wait for their replies: one pair of watches per agent called, shared.

A call waits for its done record (``signals/done/{agent}/{id}``, with the reply) or its dead
letter (``signals/dead/{agent}/{id}``). Two watches made for each call (two creates, two
cancels and their four answers on the doorbell stream) cost more client CPU than the call's
own transaction. So a process keeps, per agent it calls, one watch of each of the agent's two
prefixes, from the start of its first call to that agent; every call to the agent shares
them, and they close once no call to it has waited for :data:`IDLE` seconds.

Guarantees:
    * A call registers before it sends: a reply committed after the watches were created
      reaches it. One committed before (a duplicate id, or the first call to an agent, whose
      watches were created after the send committed) is read once: the caller compares the
      creation revision (:meth:`Desk.ready`) with its send's revision.
    * When a watch may have missed changes (its doorbell stream could not resume), every
      call waiting on it reads its two keys again.
    * An error of a watch (etcd refused it, the doorbells stopped) is raised in every call
      waiting on it.
    * Cost: while the watches are open, this process receives the done record of every
      signal the agent handles, whoever sent it. A busy agent's done records reach the
      processes that called it in the last ``IDLE`` seconds, and no other.

On lease loss: nothing changes here; the watches are not tied to the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc

from .._coord.bells import Bell
from .._coord.doorbells import Doorbells
from .._core.errors import AuthError
from .._core.keys import Keyspace, prefix_end
from .._core.kv import KeyValue

__all__ = ["IDLE", "Desk", "Replies", "Waiter"]

IDLE = 2.0  # seconds an agent's watches stay open after its last call


class Waiter:
    """One call's place at a :class:`Desk`: the records that arrived for its id."""

    __slots__ = ("_desk", "_event", "kvs", "missed")

    def __init__(self, desk: Desk) -> None:
        self._desk = desk
        self._event = asyncio.Event()  # (asyncio's: anyio's costs a backend lookup each)
        self.kvs: list[KeyValue] = []
        self.missed = False

    def _wake(self) -> None:
        self._event.set()

    async def wait(self) -> tuple[list[KeyValue], bool]:
        """Wait for records of this id; return them and whether changes may have been missed.

        Raises:
            AuthError: etcd refused one of the watches.
            anyio.ClosedResourceError: the doorbells stopped.
        """
        while True:
            error = self._desk.error
            if error is not None:
                raise error
            if self.kvs or self.missed:
                kvs, self.kvs = self.kvs, []
                missed, self.missed = self.missed, False
                return kvs, missed
            await self._event.wait()
            self._event.clear()  # what woke it is in kvs, missed or the desk's error


class Desk:
    """One agent's two watches and the calls waiting on them. Made by :class:`Replies`."""

    def __init__(self, bells: Doorbells, keyspace: Keyspace, agent_id: str) -> None:
        self.done_prefix = keyspace.signals_done_prefix(agent_id)
        self.dead_prefix = keyspace.dead_letters_prefix(agent_id)
        self.done = bells.watch(self.done_prefix, prefix_end(self.done_prefix), -1, no_delete=True)
        self.dead = bells.watch(self.dead_prefix, prefix_end(self.dead_prefix), -1, no_delete=True)
        self.waiting: dict[str, list[Waiter]] = {}
        self.error: AuthError | anyio.ClosedResourceError | None = None
        self.users = 0
        self.released = anyio.current_time()
        # replies are routed by the doorbells' reader itself (no task between it and a call)
        self.done.notify = lambda: self._route(self.done, self.done_prefix)
        self.dead.notify = lambda: self._route(self.dead, self.dead_prefix)

    async def ready(self) -> int:
        """Wait until etcd created both watches; the higher of their creation revisions."""
        return max(await self.done.ready(), await self.dead.ready())

    def _wake_all(self, *, missed: bool = False) -> None:
        for waiters in self.waiting.values():
            for w in waiters:
                w.missed = w.missed or missed
                w._wake()

    def _route(self, bell: Bell, prefix: bytes) -> None:
        """Hand what ``bell`` has to the calls it is for (never raises: see ``Bell.notify``)."""
        if self.error is not None:
            return
        try:
            events = bell.take()
        except (AuthError, anyio.ClosedResourceError) as exc:
            self.error = exc
            self._wake_all()
            return
        if events is None:
            return
        if bell.missed:
            self._wake_all(missed=True)
            return
        for ev in events:
            sid = ev.kv.key[len(prefix) :].decode(errors="replace")
            for w in self.waiting.get(sid, ()):
                w.kvs.append(ev.kv)
                w._wake()

    async def run(self, replies: Replies, agent_id: str) -> None:
        """Keep the desk until it has been idle for ``IDLE`` seconds; then close it."""
        try:
            while self.error is None:
                await anyio.sleep(IDLE)
                if self.users == 0 and anyio.current_time() - self.released >= IDLE:
                    break
        finally:
            self._leave(replies, agent_id)
            self.done.close()
            self.dead.close()

    def _leave(self, replies: Replies, agent_id: str) -> None:
        if replies._desks.get(agent_id) is self:
            del replies._desks[agent_id]


class Replies:
    """Every :class:`Desk` of one process. Built by ``connect``, used by ``call``.

    Args:
        bells: the process's doorbell stream.
        keyspace: the key layout.
        tasks: the task group that runs the desks (closed with the cluster).
    """

    def __init__(self, bells: Doorbells, keyspace: Keyspace, tasks: anyio.abc.TaskGroup) -> None:
        self._bells, self._ks, self._tasks = bells, keyspace, tasks
        self._desks: dict[str, Desk] = {}

    def __len__(self) -> int:
        return len(self._desks)

    @contextmanager
    def expect(self, agent_id: str, signal_id: str) -> Iterator[tuple[Desk, Waiter]]:
        """Wait for ``signal_id``'s records at ``agent_id``'s desk (made if need be)."""
        desk = self._desks.get(agent_id)
        if desk is None or desk.error is not None:
            desk = Desk(self._bells, self._ks, agent_id)
            try:
                self._tasks.start_soon(desk.run, self, agent_id)
            except BaseException:  # the cluster is closing: no desk without its task
                desk.done.close()
                desk.dead.close()
                raise
            self._desks[agent_id] = desk
        waiter = Waiter(desk)
        desk.waiting.setdefault(signal_id, []).append(waiter)
        desk.users += 1
        try:
            yield desk, waiter
        finally:
            desk.users -= 1
            desk.released = anyio.current_time()
            waiters = desk.waiting[signal_id]
            waiters.remove(waiter)
            if not waiters:
                del desk.waiting[signal_id]
