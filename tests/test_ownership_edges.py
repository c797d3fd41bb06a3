"""Locks and leaderships at their edges: a key deleted under a holder, a key left at the
own name, a stale handle, a monitor across a compaction."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from foundation_etcd import (
    Config,
    Election,
    Lock,
    LockLostError,
    OwnershipLostError,
    open_session,
)
from foundation_etcd.lowlevel import open_transport
from test_left_keys import Unanswered  # tests/ is on sys.path

pytestmark = pytest.mark.etcd


async def test_a_key_deleted_under_a_short_hold_raises_at_the_exit(etcd_config: Config) -> None:
    """Deleted before the key monitor starts (50 ms): the exit still says it was lost."""
    async with open_transport(etcd_config) as t, open_session(t) as a:
        with anyio.fail_after(10), pytest.raises(LockLostError, match="deleted"):
            async with Lock(a, "d").acquire() as held:
                await t.delete(held.key)  # an operator deletes the holder's key


@pytest.mark.parametrize("kind", ["election", "lock"])
async def test_after_a_resign_without_answer_the_next_candidacy_is_a_new_one(
    etcd_config: Config, kind: str
) -> None:
    data = etcd_config.keyspace.key("edges-data")
    async with open_transport(etcd_config) as t:
        lossy = Unanswered(t)
        async with open_session(lossy) as session:  # type: ignore[arg-type]

            def enter(value: bytes) -> Any:
                if kind == "election":
                    return Election(session, "e").campaign(value)
                return Lock(session, "l").acquire(value)

            async with enter(b"v1") as first:
                lossy.armed = 1  # its resign gets no answer: the key is left
            with anyio.fail_after(10):
                async with enter(b"v2") as second:
                    assert second.fencing_token > first.fencing_token  # a new key, a new token
                    kv = await t.get(second.key)
                    assert kv is not None and kv.value == b"v2"
                    with pytest.raises(OwnershipLostError):  # the ended handle writes nothing
                        await first.put(data, b"written by an ended ownership")
                    assert await t.get(data) is None
            assert first.lost and second.lost  # both ended: released


async def test_a_key_at_the_own_name_written_by_another_client_is_not_adopted(
    etcd_config: Config,
) -> None:
    prefix = etcd_config.keyspace.lock_prefix("f")
    async with open_transport(etcd_config) as t, open_session(t) as a:
        await t.put(prefix + f"{a.lease.id:x}".encode(), b"someone else, no lease")
        async with Lock(a, "f").acquire(b"mine") as held:
            holder = await Lock(a, "f").holder()
            assert holder is not None and holder.lease_id == a.lease.id == held.lease_id
            assert holder.value == b"mine"
        await t.put(prefix + f"{a.lease.id:x}".encode(), b"again")
        async with Lock(a, "f").acquire_nowait(b"mine") as held:  # nowait too
            kv = await t.get(held.key)
            assert kv is not None and kv.value == b"mine" and kv.lease == a.lease.id


async def test_an_owners_key_monitor_after_a_compaction_does_not_spin(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter that became owner across a compaction watches from now, not from its token."""
    async with (
        open_transport(etcd_config) as t,
        open_transport(etcd_config) as other,
        open_session(t) as b,
        open_session(other) as a,
    ):
        reads = 0
        cls: Any = type(t)
        real_range = cls.range

        async def counting_range(self: Any, *args: Any, **kw: Any) -> Any:
            nonlocal reads
            reads += self is t
            return await real_range(self, *args, **kw)

        monkeypatch.setattr(cls, "range", counting_range)
        owner = anyio.Event()
        release = anyio.Event()

        async def waiter() -> None:
            async with Lock(b, "m").acquire():
                owner.set()
                await release.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                async with Lock(a, "m").acquire():
                    tg.start_soon(waiter)
                    await anyio.sleep(0.3)  # b is queued behind a
                    key = etcd_config.keyspace.key("moves")
                    for i in range(3):
                        rev = (await other.put(key, str(i))).revision
                    await other.compact(rev)
                await owner.wait()
                await anyio.sleep(0.5)  # the monitor starts 50 ms after the ownership
                before = reads
                await anyio.sleep(1.0)
                assert reads - before < 3, reads - before
                release.set()


class ReleaseHeld(Unanswered):
    """As :class:`Unanswered`, but the unanswered release is kept, to be applied later.

    That is what a paused raft follower does with a request it took: the client gets no
    answer, and the request is applied when the member comes back, possibly after the same
    process (same lease, so the same key name) holds the name again.
    """

    held: Any = None

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        if self.armed and success and all(type(op).__name__ == "DeleteOp" for op in success):
            self.held = ("txn", compare, success)
        return await super().txn(compare, success, failure)

    async def delete(self, key, **options):  # type: ignore[no-untyped-def]
        if self.armed:
            self.held = ("delete", key, options)
        return await super().delete(key, **options)

    async def apply_held(self) -> None:
        kind, a, b = self.held
        if kind == "txn":
            await self._t.txn(a, b)
        else:
            await self._t.delete(a, **b)


@pytest.mark.parametrize("kind", ["election", "lock"])
async def test_a_release_applied_late_does_not_end_the_next_holding(
    etcd_config: Config, kind: str
) -> None:
    """The old release lands while the same session holds the name again: nothing happens.

    A plain DeleteRange of the own name (tried as a release: the name is the lease id)
    would delete the new holding's key here and let another process in while the body
    runs; the release compares the token, which every new holding gets afresh.
    """
    async with open_transport(etcd_config) as t, open_session(t) as other:
        lossy = ReleaseHeld(t)
        async with open_session(lossy) as session:  # type: ignore[arg-type]

            def enter(s: Any, value: bytes) -> Any:
                if kind == "election":
                    return Election(s, "late").campaign(value)
                return Lock(s, "late").acquire(value)

            async with enter(session, b"v1") as first:
                lossy.armed = 1  # its release gets no answer, and is held back
            assert lossy.held is not None
            with anyio.fail_after(10):
                async with enter(session, b"v2") as second:
                    assert second.fencing_token > first.fencing_token
                    await lossy.apply_held()  # the first release lands now
                    kv = await t.get(second.key)
                    assert kv is not None and kv.create_revision == second.fencing_token
                    entered = False
                    with anyio.move_on_after(0.5):  # the other session stays out
                        async with enter(other, b"other"):
                            entered = True
                    assert not entered
                    assert not second.lost
