"""Writes that etcd applied but whose answer never came back (AmbiguousResultError).

The caller is told the outcome is unknown; what the write left behind must not outlive the
call as a ghost: a lock queue entry nobody holds, a leader key no body runs for, or a live
registration its process cannot use or remove.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest

from foundation_etcd import (
    AmbiguousResultError,
    Config,
    Election,
    Lock,
    Registry,
    connect,
    open_session,
)
from foundation_etcd._coord.coalesce import Coalescer
from foundation_etcd.lowlevel import Transport, open_transport

pytestmark = pytest.mark.etcd


class AnswerLost:
    """A transport whose next ``armed`` writing transactions apply but answer ambiguously."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.armed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        res = await self._t.txn(compare, success, failure)
        if self.armed and any(getattr(op, "value", None) is not None for op in success):
            self.armed -= 1
            raise AmbiguousResultError("txn: answer lost (test)", operation="txn")
        return res


@pytest.mark.parametrize("kind", ["lock", "lock-nowait", "election"])
async def test_a_candidacy_whose_answer_was_lost_leaves_no_key(
    etcd_config: Config, kind: str
) -> None:
    ks = etcd_config.keyspace
    prefix = ks.election_prefix("lost") if kind == "election" else ks.lock_prefix("lost")
    async with open_transport(etcd_config) as t, connect(etcd_config, node_id="b") as b:
        lossy = AnswerLost(t)
        async with open_session(lossy) as session:  # type: ignore[arg-type]
            lossy.armed = 1
            with pytest.raises(AmbiguousResultError):
                if kind == "election":
                    async with Election(session, "lost").campaign(b"a"):
                        pytest.fail("led without an answer")
                else:
                    lock = Lock(session, "lost")
                    enter = lock.acquire_nowait() if kind == "lock-nowait" else lock.acquire()
                    async with enter:
                        pytest.fail("held without an answer")
            assert lossy.armed == 0  # the write was applied, its answer dropped
            # nothing is left under the prefix: another process takes the name at once
            assert (await t.get_prefix(prefix)).kvs == []
            with anyio.fail_after(5):
                if kind == "election":
                    async with b.election("lost").campaign(b"b") as lead:
                        assert lead.key.startswith(prefix)
                else:
                    async with b.lock("lost").acquire_nowait():
                        pass
            # and the process whose answer was lost can take it again itself
            async with Lock(session, "lost2").acquire() as held:
                assert held.fencing_token > 0


async def test_a_registration_whose_answer_was_lost_can_be_made_again(
    etcd_config: Config,
) -> None:
    ks = etcd_config.keyspace
    async with (
        open_transport(etcd_config) as t,
        open_session(t) as session,
        connect(etcd_config, node_id="o") as o,
    ):
        lossy = AnswerLost(t)
        registry = Registry(t, session, ks, "lossy", None, Coalescer(lossy))  # type: ignore[arg-type]
        lossy.armed = 1
        before = await t.revision()
        with pytest.raises(AmbiguousResultError):
            await registry.register("orphan")
        # applied (the key's first write since; a watcher deletes it in the background)
        stream = t.open_watch()
        await stream.create(ks.agent_live("orphan"), None, before + 1, progress_notify=False)
        with anyio.fail_after(5):
            while not (events := (await stream.read()).events):
                pass
        stream.close()
        orphan = events[0].kv
        assert orphan.lease == session.lease.id
        assert registry.owned() == {}  # but not known to be held
        reg = await registry.register("orphan")  # the caller tries again: it works
        kv = await o.transport.get(ks.agent_live("orphan"))
        assert kv is not None and kv.lease == session.lease.id
        assert reg.incarnation == kv.create_revision > orphan.create_revision
        assert set(registry.owned()) == {"orphan"}
        assert await registry.unregister("orphan")
        assert await o.transport.get(ks.agent_live("orphan")) is None


class AppliedLate:
    """A transport whose next armed writing transaction answers ambiguously at once and is
    applied only when ``later`` is set: what a paused raft leader does with a proposal it
    forwards after it resumes."""

    def __init__(self, transport: Transport, tg: anyio.abc.TaskGroup) -> None:
        self._t, self._tg = transport, tg
        self.armed = 0
        self.later = anyio.Event()
        self.applied = anyio.Event()  # set once the last armed write was applied

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        if self.armed and any(getattr(op, "value", None) is not None for op in success):
            self.armed -= 1
            self.applied = anyio.Event()
            self._tg.start_soon(self._late, self.later, self.applied, compare, success, failure)
            raise AmbiguousResultError("txn: no answer in time (test)", operation="txn")
        return await self._t.txn(compare, success, failure)

    async def _late(self, later, applied, compare, success, failure):  # type: ignore[no-untyped-def]
        await later.wait()
        await self._t.txn(compare, success, failure)
        applied.set()


async def test_a_candidacy_applied_late_is_deleted_and_a_real_one_is_not(
    etcd_config: Config,
) -> None:
    prefix = etcd_config.keyspace.lock_prefix("late")
    async with (
        open_transport(etcd_config) as t,
        connect(etcd_config, node_id="b") as b,
        anyio.create_task_group() as tg,
    ):
        late = AppliedLate(t, tg)
        async with open_session(late) as session:  # type: ignore[arg-type]
            late.armed = 1
            with pytest.raises(AmbiguousResultError):
                async with Lock(session, "late").acquire():
                    pytest.fail("held without an answer")
            assert (await t.get_prefix(prefix)).kvs == []  # not applied yet
            late.later.set()  # now it is: a ghost candidacy under the live lease
            with anyio.fail_after(10):  # b gets the lock once the ghost is deleted
                await late.applied.wait()
                async with b.lock("late").acquire():
                    pass
            # a real candidacy of this process is left alone (the watcher is told of it, or
            # waits for the name's in-process lock: never deletes it while held)
            data = etcd_config.keyspace.key("late-data")
            for _ in range(3):
                async with Lock(session, "late").acquire() as held:
                    kv = await t.get(held.key)
                    assert kv is not None and kv.create_revision == held.fencing_token
                    await held.put(data, b"still held")  # fenced writes still pass
            await t.delete(data)
            # a second write with no answer, applied late too: the same watcher deletes it
            late.armed, late.later = 1, anyio.Event()
            with pytest.raises(AmbiguousResultError):
                async with Lock(session, "late").acquire():
                    pytest.fail("held without an answer")
            late.later.set()
            with anyio.fail_after(10):
                await late.applied.wait()  # the ghost exists now (unless deleted already)
                async with b.lock("late").acquire():  # so b gets it after the deletion
                    pass
            assert (await t.get_prefix(prefix)).kvs == []
        tg.cancel_scope.cancel()
