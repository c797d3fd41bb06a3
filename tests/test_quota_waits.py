"""Waiting reservations: deletions-only watches per pool, counts, confirming reads, handover.

The rule itself is covered by ``test_quotas.py``; these tests aim at what the waiting
mechanism could get wrong: a wake-up lost across a gap or a late join, a rewrite that a
deletions-only watch cannot show, a waiter's key deleted behind its back, watches that
outlive their waiters, and the release that admits a waiter of its own process.
"""

import anyio
import pytest

import foundation_etcd._coord.quota_waits as quota_waits
from foundation_etcd import Config, QuotaError, connect
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


async def test_a_process_without_waiters_watches_no_queue(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a:
        q = a.quotas
        await q.set_limit("nw", 2)
        for _ in range(5):
            async with q.reserve({"nw": 1}):
                pass
        assert q._waits.watches == {}  # admitted at once every time: nothing watched
        assert q._view is None  # and no view of the queues (usage was never asked)


async def test_waiters_in_other_processes_wake_on_deletions_and_confirm(
    etcd_config: Config,
) -> None:
    async with (
        connect(etcd_config, node_id="h") as h,
        connect(etcd_config, node_id="w1") as w1,
        connect(etcd_config, node_id="w2") as w2,
    ):
        await h.quotas.set_limit("xp", 2)
        found: dict[str, tuple[int, int]] = {}
        out = anyio.Event()
        entered = anyio.Event()

        async def holder() -> None:
            async with h.quotas.reserve({"xp": 2}):
                entered.set()
                await out.wait()

        async def waiter(c, name: str) -> None:
            async with c.quotas.reserve({"xp": 1}) as r:
                found[name] = (r.token, r.admitted_revision)

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await entered.wait()
                tg.start_soon(waiter, w1, "w1")
                tg.start_soon(waiter, w2, "w2")
                await wait_until(lambda: len(w1.quotas._waiters) == len(w2.quotas._waiters) == 1)
                # one watch per waiting process and pool, none in the holder's
                assert set(w1.quotas._waits.watches) == set(w2.quotas._waits.watches) == {"xp"}
                assert h.quotas._waits.watches == {}
                assert found == {}
                out.set()
        # both fit once the holder left (limit 2, one each); each was found admitted by a
        # read after its token, no earlier than the holder's release
        assert set(found) == {"w1", "w2"}
        assert all(at > token for token, at in found.values())


async def test_a_rewrite_ahead_blocks_a_waiter_that_the_watch_cannot_see(
    etcd_config: Config,
) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        q = a.quotas
        await q.set_limit("rw", 3)
        admitted = anyio.Event()
        outs = [anyio.Event(), anyio.Event()]
        ins = [anyio.Event(), anyio.Event()]
        keys: list[bytes] = []

        async def hold(i: int, amount: int) -> None:
            async with q.reserve({"rw": amount}) as r:
                keys.append(r.keys[0])
                ins[i].set()
                await outs[i].wait()

        async def waiter() -> None:
            async with b.quotas.reserve({"rw": 1}):
                admitted.set()

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold, 0, 1)
                await ins[0].wait()
                tg.start_soon(hold, 1, 2)
                await ins[1].wait()
                tg.start_soon(waiter)  # 1 + 2 held ahead of it, limit 3: it waits
                await wait_until(lambda: len(b.quotas._waiters) == 1)
                w = next(iter(b.quotas._waiters.values()))
                await wait_until(lambda: not w.stale)  # counted against its pool's watch
                # a crafted rewrite of the first holder's key: from now on it blocks the
                # queue behind it (version 2); puts never reach the waiter's watch
                put = await a.transport.put(keys[0], b'{"amounts": {"rw": 1}, "holder": "a"}')
                outs[1].set()  # the deletion ahead wakes the waiter: what is left could fit
                # its confirming read (after the rewrite) sees the rewritten key: it waits on
                await wait_until(lambda: w.counted_at["rw"] > put.revision and w.ahead["rw"] == 1)
                assert not admitted.is_set(), "admitted behind a rewritten key"
                outs[0].set()  # the rewritten key goes: now it is admitted
                await admitted.wait()


async def test_a_gap_in_the_watch_makes_waiters_count_again(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        await a.quotas.set_limit("gap", 1)
        admitted = anyio.Event()
        out = anyio.Event()

        async def waiter() -> None:
            async with b.quotas.reserve({"gap": 1}):
                admitted.set()

        async def holder(entered: anyio.Event) -> None:
            async with a.quotas.reserve({"gap": 1}):
                entered.set()
                await out.wait()

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                entered = anyio.Event()
                tg.start_soon(holder, entered)
                await entered.wait()
                tg.start_soon(waiter)
                await wait_until(lambda: len(b.quotas._waiters) == 1)
                pw = b.quotas._waits.watches["gap"]
                await wait_until(lambda: not next(iter(pw.waiters)).stale)
                # white-box: what a compacted watch does (the doorbells ring it missed)
                pw.bell._ring(pw.bell.revision)
                w = next(iter(b.quotas._waiters.values()))
                await wait_until(lambda: "gap" not in w.stale)  # counted again
                assert not admitted.is_set()
                out.set()
                await admitted.wait()


async def test_a_waiters_key_deleted_by_another_writer_fails_it(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        await a.quotas.set_limit("gone", 1)
        out = anyio.Event()
        failed: list[BaseException] = []

        async def waiter() -> None:
            try:
                async with b.quotas.reserve({"gone": 1}):
                    raise AssertionError("admitted without a key")
            except QuotaError as exc:
                failed.append(exc)

        async def holder(entered: anyio.Event) -> None:
            async with a.quotas.reserve({"gone": 1}):
                entered.set()
                await out.wait()

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                entered = anyio.Event()
                tg.start_soon(holder, entered)
                await entered.wait()
                tg.start_soon(waiter)
                await wait_until(lambda: len(b.quotas._waiters) == 1)
                w = next(iter(b.quotas._waiters.values()))
                await a.transport.delete(w.keys["gone"])  # behind the waiter's back
                out.set()  # the holder's deletion wakes it: its read finds no own key
                await wait_until(lambda: bool(failed))
        assert "deleted while it waited" in str(failed[0])


async def test_pool_watches_linger_then_close(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quota_waits, "LINGER", 0.3)
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        await a.quotas.set_limit("ling", 1)

        async def one_wait() -> None:
            out = anyio.Event()
            entered = anyio.Event()

            async def holder() -> None:
                async with a.quotas.reserve({"ling": 1}):
                    entered.set()
                    await out.wait()

            async def waiter() -> None:
                async with b.quotas.reserve({"ling": 1}):
                    pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await entered.wait()
                tg.start_soon(waiter)
                await wait_until(lambda: len(b.quotas._waiters) == 1)
                out.set()

        with anyio.fail_after(15):
            await one_wait()
            pw = b.quotas._waits.watches["ling"]
            await one_wait()  # soon after: the same watch serves again
            assert b.quotas._waits.watches["ling"] is pw
            await wait_until(lambda: "ling" not in b.quotas._waits.watches)
            assert pw.bell.closed
            await one_wait()  # a new watch once it is needed again
            assert b.quotas._waits.watches["ling"] is not pw


async def test_a_release_admits_the_waiters_of_its_own_process(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a:
        q = a.quotas
        await q.set_limit("ho", 1)
        got: list[int] = []
        out = anyio.Event()
        entered = anyio.Event()

        async def holder() -> None:
            async with q.reserve({"ho": 1}):
                entered.set()
                await out.wait()

        async def waiter() -> None:
            async with q.reserve({"ho": 1}) as r:
                got.append(r.admitted_revision)

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await entered.wait()
                tg.start_soon(waiter)
                await wait_until(lambda: len(q._waiters) == 1)
                before = (await a.transport.status()).revision
                out.set()
            # admitted at the release's own revision: the release read it, the waiter
            # did not read again
            assert got and got[0] == before + 1


async def test_a_deletion_before_the_pools_watch_exists_is_not_lost(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        await a.quotas.set_limit("early", 1)
        out = anyio.Event()
        entered = anyio.Event()
        released = anyio.Event()
        admitted = anyio.Event()
        original = quota_waits.QuotaWaits.wait

        async def late_wait(self: quota_waits.QuotaWaits, *args, **kwargs) -> int:
            out.set()  # the holder leaves before the pool's watch exists
            await released.wait()
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(quota_waits.QuotaWaits, "wait", late_wait)

        async def holder() -> None:
            async with a.quotas.reserve({"early": 1}):
                entered.set()
                await out.wait()
            released.set()

        async def waiter() -> None:
            async with b.quotas.reserve({"early": 1}):
                admitted.set()

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await entered.wait()
                tg.start_soon(waiter)
                # its count (one key ahead) predates the deletion; the watch starts after
                # it, so only counting again when it joins finds the queue empty
                await admitted.wait()
