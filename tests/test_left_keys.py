"""Keys a process left under its live lease: deleted in the background, never while in use.

A delete that got no answer (a lock's release, a reservation's release, an unregister)
and a write whose answer was lost and that was not tried again (a registration, a
reservation) leave a key under the session lease. The session lives on, so the lease never
ends: without the background deletion the lock stays blocked, the quota stays used and the
agent shows live, for as long as the process runs.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from foundation_etcd import (
    AmbiguousResultError,
    Config,
    Lock,
    Quotas,
    RegistrationsFailedError,
    Registry,
    connect,
    open_session,
)
from foundation_etcd._coord.coalesce import Coalescer
from foundation_etcd._coord.views import SharedViews
from foundation_etcd._coord.waits import wait_deleted
from foundation_etcd.lowlevel import EventType, Transport, open_transport, prefix_end
from test_lost_answers import AnswerLost, AppliedLate  # tests/ is on sys.path

pytestmark = pytest.mark.etcd


class Unanswered(AnswerLost):
    """A transport whose next ``armed`` deletes (transactions or DeleteRanges) are never sent."""

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        deletes = success and all(type(op).__name__ == "DeleteOp" for op in success)
        if self.armed and deletes:
            self.armed -= 1
            raise AmbiguousResultError("txn: no answer (test)", operation="txn")
        return await self._t.txn(compare, success, failure)

    async def delete(self, key, **options):  # type: ignore[no-untyped-def]
        if self.armed:
            self.armed -= 1
            raise AmbiguousResultError("delete: no answer (test)", operation="delete")
        return await self._t.delete(key, **options)


async def history(t: Transport, key: bytes, start: int, until: int) -> list[tuple[str, int]]:
    """The events of ``key`` from ``start`` through ``until``: (kind, create revision)."""
    out: list[tuple[str, int]] = []
    stream = t.open_watch()
    try:
        await stream.create(key, None, start, progress_notify=False)
        while not out or out[-1][1] != -1:
            resp = await stream.read()
            for ev in resp.events:
                if ev.revision > until:
                    return out
                kind = "put" if ev.type is EventType.PUT else "delete"
                out.append((kind, ev.kv.create_revision if kind == "put" else 0))
                if ev.revision == until:
                    return out
    finally:
        stream.close()
    return out


async def test_a_lock_release_without_answer_does_not_block_the_name(etcd_config: Config) -> None:
    async with open_transport(etcd_config) as t, connect(etcd_config, node_id="b") as b:
        lossy = Unanswered(t)
        async with open_session(lossy) as session:  # type: ignore[arg-type]
            async with Lock(session, "left").acquire() as held:
                key, rev = held.key, held.fencing_token
                lossy.armed = 1  # the release gets no answer: the key is left
            assert lossy.armed == 0
            with anyio.fail_after(10):  # deleted in the background while the session lives
                await wait_deleted(t, key, rev)
                async with b.lock("left").acquire():
                    pass
            assert not session.closed and not session.lease.lost
            async with Lock(session, "left").acquire() as again:  # the name works here too
                assert again.fencing_token > rev


async def test_a_registration_not_tried_again_is_deleted_and_one_held_is_not(
    etcd_config: Config,
) -> None:
    ks = etcd_config.keyspace
    key = ks.agent_live("ghost")
    async with (
        open_transport(etcd_config) as t,
        open_session(t) as session,
        anyio.create_task_group() as tg,
    ):
        late = AppliedLate(t, tg)
        registry = Registry(t, session, ks, "lossy", None, Coalescer(late))  # type: ignore[arg-type]
        late.armed = 1
        with pytest.raises(AmbiguousResultError):
            await registry.register("ghost")
        start = await t.revision()
        late.later.set()  # applied now, after the caller gave up: a ghost
        with anyio.fail_after(10):
            await late.applied.wait()
            await wait_deleted(t, key, start)
        # registered again and held: the watcher of the key leaves it alone, also when it
        # is written again (metadata) and until it is unregistered
        reg = await registry.register("ghost")
        await registry.update_meta("ghost", {"v": 2})
        assert await registry.unregister("ghost")
        end = await t.revision()
        events = await history(t, key, start + 1, end)
        assert events == [
            ("put", events[0][1]),  # the ghost
            ("delete", 0),
            ("put", reg.incarnation),
            ("put", reg.incarnation),  # the metadata
            ("delete", 0),  # the unregister, not the watcher
        ], events
        assert events[0][1] < reg.incarnation
        tg.cancel_scope.cancel()


async def test_an_unregister_without_answer_leaves_no_live_agent(etcd_config: Config) -> None:
    ks = etcd_config.keyspace
    async with open_transport(etcd_config) as t, open_session(t) as session:
        lossy = Unanswered(t)
        registry = Registry(t, session, ks, "lossy", None, Coalescer(lossy))  # type: ignore[arg-type]
        reg = await registry.register("leaving")
        lossy.armed = 1
        with pytest.raises(AmbiguousResultError):
            await registry.unregister("leaving")
        with anyio.fail_after(10):
            await wait_deleted(t, reg.key, reg.incarnation)
        assert not session.lease.lost
        assert (await registry.register("leaving")).incarnation > reg.incarnation


@pytest.mark.parametrize("fault", ["release unanswered", "reserve applied late"])
async def test_a_reservation_left_behind_frees_the_quota(etcd_config: Config, fault: str) -> None:
    async with (
        open_transport(etcd_config) as t,
        connect(etcd_config, node_id="other") as other,
        anyio.create_task_group() as tg,
    ):
        await other.quotas.set_limit("slots", 1)
        lossy: Any = Unanswered(t) if fault == "release unanswered" else AppliedLate(t, tg)
        async with open_session(lossy) as session:
            quotas = Quotas(session, etcd_config.keyspace, holder="me", views=SharedViews(t, tg))
            if fault == "release unanswered":
                async with quotas.reserve({"slots": 1}):
                    lossy.armed = 1  # its release gets no answer: its key is left
            else:
                lossy.armed = 1
                with pytest.raises(AmbiguousResultError):
                    async with quotas.reserve({"slots": 1}):
                        pytest.fail("admitted without an answer")
                lossy.later.set()  # a ghost reservation now takes the only slot
                with anyio.fail_after(10):
                    await lossy.applied.wait()
            assert lossy.armed == 0
            with anyio.fail_after(10):  # the other process is admitted once it is deleted
                async with other.quotas.reserve({"slots": 1}):
                    pass
            async with quotas.reserve({"slots": 1}):  # and this process's own works
                pass
            assert not session.lease.lost
        tg.cancel_scope.cancel()


class BatchAppliedLate(AppliedLate):
    """Its next armed transaction (nested ones included) answers ambiguously, applies later."""

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        if self.armed and success:
            self.armed -= 1
            self.applied = anyio.Event()
            self._tg.start_soon(self._late, self.later, self.applied, compare, success, failure)
            raise AmbiguousResultError("txn: no answer in time (test)", operation="txn")
        return await self._t.txn(compare, success, failure)


async def test_many_registrations_applied_late_are_all_deleted(etcd_config: Config) -> None:
    ks = etcd_config.keyspace
    ids = [f"many-{i:03}" for i in range(100)]
    async with (
        open_transport(etcd_config) as t,
        open_session(t) as session,
        anyio.create_task_group() as tg,
    ):
        late = BatchAppliedLate(t, tg)
        registry = Registry(t, session, ks, "lossy", None, Coalescer(late))  # type: ignore[arg-type]
        late.armed = 1  # the one request that carries the 100 registrations
        with pytest.raises(RegistrationsFailedError) as info:
            await registry.register_many(dict.fromkeys(ids))
        assert set(info.value.failed) == set(ids) and not info.value.registered
        assert all(isinstance(e, AmbiguousResultError) for e in info.value.failed.values())
        start = await t.revision()
        late.later.set()  # applied now: 100 ghosts at one revision
        prefix = ks.agents_live_prefix()
        stream = t.open_watch()  # one watch of the prefix: every put and delete since
        await stream.create(prefix, prefix_end(prefix), start + 1, progress_notify=False)
        put: set[bytes] = set()
        deleted: set[bytes] = set()
        with anyio.fail_after(20):  # each is deleted (all watched on one shared stream)
            while len(deleted) < len(ids):
                for ev in (await stream.read()).events:
                    (put if ev.type is EventType.PUT else deleted).add(ev.kv.key)
        stream.close()
        assert put == deleted == {ks.agent_live(a) for a in ids}
        assert (await t.get_prefix(prefix)).kvs == []
        tg.cancel_scope.cancel()


class LateThenUnanswered(AppliedLate):
    """As :class:`AppliedLate`; its ``drop`` next deletes (txns or DeleteRanges) go unanswered."""

    drop = 0

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        if self.drop and success and all(type(op).__name__ == "DeleteOp" for op in success):
            self.drop -= 1
            raise AmbiguousResultError("txn: no answer (test)", operation="txn")
        return await super().txn(compare, success, failure)

    async def delete(self, key, **options):  # type: ignore[no-untyped-def]
        if self.drop:
            self.drop -= 1
            raise AmbiguousResultError("delete: no answer (test)", operation="delete")
        return await self._t.delete(key, **options)


async def test_a_key_watched_already_is_deleted_when_its_release_gets_no_answer(
    etcd_config: Config,
) -> None:
    """The key's watcher (there since a write applied late) is woken by the hand-off."""
    prefix = etcd_config.keyspace.lock_prefix("twice")
    async with (
        open_transport(etcd_config) as t,
        connect(etcd_config, node_id="b") as b,
        anyio.create_task_group() as tg,
    ):
        lossy = LateThenUnanswered(t, tg)
        async with open_session(lossy) as session:  # type: ignore[arg-type]
            lossy.armed = 1
            with pytest.raises(AmbiguousResultError):
                async with Lock(session, "twice").acquire():
                    pytest.fail("held without an answer")
            lossy.later.set()
            with anyio.fail_after(10):  # the ghost is deleted: b gets the lock
                await lossy.applied.wait()
                async with b.lock("twice").acquire():
                    pass
            async with Lock(session, "twice").acquire() as held:
                lossy.drop = 1  # its release gets no answer: the key is left
            assert lossy.drop == 0
            with anyio.fail_after(10):  # the watcher of the key deletes it: b gets the lock
                await wait_deleted(t, held.key, held.fencing_token)
                async with b.lock("twice").acquire():
                    pass
            assert (await t.get_prefix(prefix)).kvs == []
        tg.cancel_scope.cancel()
