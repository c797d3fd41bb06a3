"""The two traces of docs/design.md, measured: which modules an operation's code runs in.

``sys.setprofile`` records every call into a ``foundation_etcd`` module while the operation
runs, with the task it ran in. The expected sets below are the ones design.md lists: a
module joining a path fails here first, so the document is changed with the code.
"""

import asyncio
import sys
from collections import defaultdict
from types import FrameType
from typing import Any

import anyio
import pytest

from foundation_etcd import AgentRunContext, Config, clustered, connect

pytestmark = pytest.mark.etcd

# the stateful modules (neither ``_core``, which is pure, nor the transport) each path crosses
SPAWN_PATH = {
    # the call chain: spawn, placement, the assignment reaching the node, hosting, the hook
    "_agents.cluster",
    "_agents.scheduler",
    "_coord.watch",
    "_agents.runtime",
    "_agents.agent",
    # what the chain reads or builds on the way
    "_agents.membership",  # the node view's loads
    "_coord.views",  # the scheduler's views, opened once
    "_coord.audit",  # the spawn decision's audit record
    "_agents.registry",  # the hosted agent's registration (and the agents view's event)
    "_coord.coalesce",  # the registration's write
    "_coord.session",  # the lease guard of the registration
    "_agents.delivery",  # the agent's deliverer, built before on_start
    "_agents.protection",  # its signal checks (signing and sealing), built with it
    "_coord.doorbells",  # its inbox's doorbell (when the stream runs before on_start)
    "_agents.failover",  # a listener of the assignment view in every node
}
LOCK_PATH = {"_agents.cluster", "_coord.lock", "_coord.ownership", "_coord.session", "_coord.watch"}


class Tracer:
    """Modules called, per task, between :meth:`start` and :meth:`stop`.

    A coroutine resumed (its awaited result arrived) reports a ``call`` again with the same
    frame: only a frame's first ``call`` is a call. The frames of the coroutines already
    waiting when the trace starts are known from the start: a background task that only
    resumes inside the window (a watch answering, a timer) has called nothing new.
    """

    def __init__(self) -> None:
        self.by_task: dict[str, list[str]] = defaultdict(list)
        self._frames: set[FrameType] = set()

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("foundation_etcd.") or frame in self._frames:
            return
        self._frames.add(frame)
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        self.by_task[task.get_name() if task else "-"].append(module[len("foundation_etcd.") :])

    def start(self) -> None:
        for task in asyncio.all_tasks():
            coro: Any = task.get_coro()
            while coro is not None and getattr(coro, "cr_frame", None) is not None:
                self._frames.add(coro.cr_frame)
                coro = coro.cr_await
        sys.setprofile(self._profile)

    def stop(self) -> None:
        sys.setprofile(None)
        self._frames.clear()

    def stateful(self) -> set[str]:
        return {
            m
            for calls in self.by_task.values()
            for m in calls
            if m.startswith(("_agents.", "_coord."))
        }


tracer = Tracer()


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines ``task`` is inside, outermost first."""
    names = []
    coro: Any = task.get_coro()
    while coro is not None:
        names.append(getattr(coro, "__qualname__", ""))
        coro = getattr(coro, "cr_await", None)
    return names


def monitor_running() -> bool:
    """Whether some task is inside an ownership's key monitor (``ownership._monitor``)."""
    return any("_monitor" in awaiting(task) for task in asyncio.all_tasks())


def streams_up() -> bool:
    """Whether every watched view reads its stream and that stream's progress pinger runs.

    A view is current when ``open_view`` yields, from its listing; its watch stream is created
    after that, in its own task, with the pinger (``progress.Pinger.run``) a task beside the
    reader. On a loaded machine that can still be happening when a trace starts.
    """
    readers = pingers = views = 0
    for task in asyncio.all_tasks():
        names = awaiting(task)
        if "WatchedView._run" in names:
            views += 1
            readers += "WatchedView._read_loop" in names
        elif "Pinger.run" in names[:-1]:  # started: it awaits something
            pingers += 1
    return readers == pingers == views


started: dict[str, anyio.Event] = {}


@clustered("trace-agent", resources={"cpu": 1})
class Traced:
    async def on_start(self, ctx: AgentRunContext) -> None:
        tracer.stop()
        started[ctx.agent_id].set()


async def test_spawn_until_on_start(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="tr", capacity={"cpu": 2}) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.serve)
            started.update({"warm-up": anyio.Event(), "traced": anyio.Event()})
            await c.spawn(Traced, "warm-up")  # the views are opened once, before the trace
            with anyio.fail_after(10):
                await started["warm-up"].wait()
            await c.despawn("warm-up")
            # its hosting ends after despawn returns (on_stop, unregister, the incarnation's
            # release): the trace starts once it has, or the release's modules join it.
            # No event marks that end; the runtime's table of hosted agents does.
            assert c.runtime is not None
            with anyio.fail_after(10):
                while "warm-up" in c.runtime.hosted:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            # the watch streams of the views opened on the way start after them
            with anyio.fail_after(10):
                while not streams_up():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            # the node's failover leadership starts its key monitor 50 ms after it is won
            # (ownership, waits): the trace starts once that has happened, or it may fall
            # inside the traced window
            with anyio.fail_after(10):
                while not monitor_running():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            tracer.by_task.clear()
            me = asyncio.current_task()
            assert me is not None
            with anyio.fail_after(10):
                tracer.start()
                try:
                    await c.spawn(Traced, "traced")
                    await started["traced"].wait()  # on_start stops the tracer
                finally:
                    tracer.stop()
            tg.cancel_scope.cancel()
    spawn_calls = tracer.by_task[me.get_name()]
    entered = spawn_calls.index("_agents.scheduler")
    assert "_agents.cluster" not in spawn_calls[entered:], "spawn called back into Cluster"
    crossed = tracer.stateful()
    assert {"_agents.cluster", "_agents.scheduler", "_coord.watch", "_agents.runtime"} <= crossed
    assert crossed <= SPAWN_PATH, sorted(crossed - SPAWN_PATH)


async def test_lock_acquire(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="tl") as c:
        async with c.lock("traced").acquire():  # warm up
            pass
        # the node view's watch stream starts after connect returns (and its pinger, in
        # _coord.progress): the trace starts once both run, or their start joins the trace
        with anyio.fail_after(10):
            while not streams_up():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tracer.by_task.clear()
        tracer.start()
        try:
            async with c.lock("traced").acquire():
                tracer.stop()
        finally:
            tracer.stop()
    crossed = tracer.stateful()
    assert {"_coord.lock", "_coord.ownership"} <= crossed
    assert crossed <= LOCK_PATH, sorted(crossed - LOCK_PATH)
