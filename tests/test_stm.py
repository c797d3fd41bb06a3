"""Shared state and transactions over it (issue 18), against a real etcd."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import pytest

from foundation_etcd import (
    Config,
    InvalidIdError,
    Isolation,
    LockLostError,
    RequestTooLargeError,
    SerializationError,
    TooManyOperationsError,
    TransactionConflictError,
    Tx,
    connect,
)
from foundation_etcd._coord.shared_state import SharedState
from foundation_etcd._coord.views import SharedViews
from foundation_etcd.lowlevel import Op, open_transport

pytestmark = pytest.mark.etcd


@dataclass
class Rollout:
    percent: int
    owner: str


async def test_state_get_set_cas_update_delete(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="s1") as c:
        st = c.state("rollout")
        assert await st.get() is None
        rev = await st.set({"percent": 10})
        got = await st.get()  # from the view: this handle's own write is visible
        assert got is not None and got.value == {"percent": 10} and got.revision == rev
        assert got.version == 1 and got.created == rev
        # compare-and-set: only at the revision given
        assert await st.compare_and_set({"percent": 20}, revision=rev - 1) is None
        rev2 = await st.compare_and_set({"percent": 20}, revision=rev)
        assert rev2 is not None and rev2 > rev
        assert await st.compare_and_set({"x": 1}, revision=0) is None  # not absent
        done = await st.update(lambda v: {"percent": (v or {})["percent"] + 5})
        assert done.value == {"percent": 25} and done.version == 3
        lin = await st.get(linearizable=True)
        assert lin is not None and lin.value == {"percent": 25} and lin.revision == done.revision
        assert await st.delete(revision=rev) is False
        assert await st.delete() is True
        assert await st.get() is None and await st.get(linearizable=True) is None
        assert await st.delete() is False
        # absent: compare at 0 creates it
        assert await st.compare_and_set({"percent": 1}, revision=0) is not None


async def test_state_typed_and_readable_by_other_clients(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="s1") as c:
        st = c.state("typed", load=lambda v: Rollout(**v), dump=asdict)
        await st.set(Rollout(5, "ops"))
        got = await st.get()
        assert got is not None and got.value == Rollout(5, "ops")
        kv = await c.transport.get(etcd_config.keyspace.key("state", "typed"))
        assert kv is not None and kv.value == b'{"owner":"ops","percent":5}'
        # a write by a raw client shows in the view
        await c.transport.put(
            etcd_config.keyspace.key("state", "typed"), b'{"owner":"x","percent":7}'
        )
        with anyio.fail_after(10):
            async with st.watch() as values:
                async for v in values:
                    if v is not None and v.value == Rollout(7, "x"):
                        break


async def test_state_bad_input_sends_nothing(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="s1") as c:
        with pytest.raises(InvalidIdError):
            c.state("a/b")
        with pytest.raises(InvalidIdError):
            c.state("_reserved")
        st = c.state("bad")
        with pytest.raises(SerializationError):
            await st.set({1, 2})
        with pytest.raises(RequestTooLargeError):
            await st.set("x" * (1024 * 1024 + 1))
        with pytest.raises(ValueError, match="revision"):
            await st.compare_and_set(1, revision=-1)
        with pytest.raises(ValueError, match="max_attempts"):
            await st.update(lambda v: 1, max_attempts=0)
        assert await st.get(linearizable=True) is None


async def test_state_watch_sees_every_value_in_order(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="s1") as a, connect(etcd_config, node_id="s2") as b:
        seen: list[int | None] = []
        with anyio.fail_after(20):
            async with a.state("w").watch() as values:
                assert await values.receive() is None  # the current value first
                revs = [await b.state("w").set(i) for i in range(20)]
                await b.state("w").delete()
                while len(seen) < 21:
                    v = await values.receive()
                    seen.append(None if v is None else v.value)
                    if v is not None:
                        assert v.revision == revs[v.value]
        assert seen == [*range(20), None]


async def test_update_under_contention_counts_exactly(etcd_config: Config) -> None:
    """12 tasks on 3 connections increment one state: none lost, retries bounded."""
    async with (
        connect(etcd_config, node_id="u1") as a,
        connect(etcd_config, node_id="u2") as b,
        connect(etcd_config, node_id="u3") as c,
    ):
        history: list[int] = []

        async def worker(cl: object) -> None:
            st = cl.state("hits")  # type: ignore[attr-defined]
            for _ in range(10):
                done = await st.update(lambda v: (v or 0) + 1, max_attempts=200)
                history.append(done.value)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for cl in (a, b, c):
                    for _ in range(4):
                        tg.start_soon(worker, cl)
        # every increment saw a distinct predecessor: the committed values are 1..120
        assert sorted(history) == list(range(1, 121))
        got = await a.state("hits").get(linearizable=True)
        assert got is not None and got.value == 120 and got.version == 120


async def test_update_gives_up_within_budget(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="u1") as c:
        st = c.state("busy")
        await st.set(0)
        calls = 0

        def meddle(v: int | None) -> int:
            nonlocal calls
            calls += 1
            return (v or 0) + 1

        orig = st._txn

        async def racing_txn(*args, **kwargs):  # type: ignore[no-untyped-def]
            # another writer changes the key between every read and write
            await c.transport.put(st.key, b"-1")
            return await orig(*args, **kwargs)

        st._txn = racing_txn  # type: ignore[method-assign]
        with pytest.raises(TransactionConflictError) as info:
            await st.update(meddle, max_attempts=3)
        assert info.value.attempts == 3 and calls == 3
        assert (await c.transport.get(st.key)).value == b"-1"  # type: ignore[union-attr]


async def test_transfer_conserves_the_total(etcd_config: Config) -> None:
    """Random transfers among 10 accounts by 16 tasks; the total holds at every revision."""
    accounts = [f"acct:{i}" for i in range(10)]
    async with connect(etcd_config, node_id="t1") as a, connect(etcd_config, node_id="t2") as b:

        async def init(tx: Tx) -> None:
            for name in accounts:
                tx.put(name, 100)

        await a.transact(init)
        start = await a.transport.revision()

        async def transfer(tx: Tx) -> tuple[str, str, int]:
            src, dst = random.sample(accounts, 2)
            x = await tx.get(src)
            y = await tx.get(dst)
            amount = random.randint(1, 10)
            tx.put(src, x - amount)
            tx.put(dst, y + amount)
            return src, dst, amount

        async def worker(cl: object) -> None:
            for _ in range(15):
                await cl.transact(transfer, max_attempts=500)  # type: ignore[attr-defined]

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(worker, a if i % 2 else b)
        end = await a.transport.revision()

        async def total(tx: Tx) -> int:
            return sum((await tx.get_prefix("acct:")).values())

        assert await a.transact(total) == 1000
        # history: read the accounts at every revision of the run
        prefix = etcd_config.keyspace.key("state", "acct:")
        for rev in range(start, end + 1):
            res = await a.transport.range(Op.get(prefix, prefix=True, revision=rev))
            assert sum(int(kv.value) for kv in res.kvs) == 1000, f"total broken at {rev}"
        stats = a.transact_statistics
        assert stats.commits >= stats.calls - 0 and stats.attempts >= stats.calls


async def test_snapshot_isolation_prevents_write_skew(etcd_config: Config) -> None:
    """Two doctors on call; each goes off call if the other is on. One must stay."""
    async with connect(etcd_config, node_id="d1") as a, connect(etcd_config, node_id="d2") as b:

        async def init(tx: Tx) -> None:
            tx.put("oncall:alice", True)
            tx.put("oncall:bob", True)

        await a.transact(init)
        both_read = anyio.Event()
        readers = 0

        def go_off(me: str, other: str):  # type: ignore[no-untyped-def]
            async def fn(tx: Tx) -> None:
                nonlocal readers
                if await tx.get(f"oncall:{other}"):
                    if tx.attempt == 1:
                        readers += 1
                        if readers == 2:
                            both_read.set()
                        await both_read.wait()
                    tx.put(f"oncall:{me}", False)

            return fn

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.transact, go_off("alice", "bob"))
                tg.start_soon(b.transact, go_off("bob", "alice"))

        async def read(tx: Tx) -> dict[str, bool]:
            return await tx.get_prefix("oncall:")

        state = await a.transact(read)
        assert list(state.values()).count(True) == 1, state


async def test_read_committed_allows_what_snapshot_refuses(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="r1") as c:
        await c.state("rc").set(1)

        async def fn(tx: Tx) -> int:
            v = await tx.get("rc")
            if tx.attempt == 1:
                await c.state("rc").set(50)  # changed behind the transaction's back
            tx.put("rc", v + 1)
            return tx.attempt

        assert await c.transact(fn) == 2  # snapshot: retried, saw 50
        assert (await c.state("rc").get(linearizable=True)).value == 51  # type: ignore[union-attr]
        assert await c.transact(fn, isolation=Isolation.READ_COMMITTED) == 1
        assert (await c.state("rc").get(linearizable=True)).value == 52  # type: ignore[union-attr]
        # the lost update READ_COMMITTED allows: 50 was overwritten by 51 + 1
        for iso in (Isolation.SERIALIZABLE, Isolation.REPEATABLE_READ):
            assert await c.transact(fn, isolation=iso) == 2


async def test_prefix_read_conflicts_on_any_write_under_it(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="p1") as c:

        async def init(tx: Tx) -> None:
            tx.put("item:a", 1)
            tx.put("item:b", 2)

        await c.transact(init)
        attempts: list[int] = []
        change = iter(
            [
                lambda: c.state("item:c").set(3),  # a new key under the prefix
                lambda: c.state("item:a").delete(),  # a deletion under the prefix
            ]
        )

        async def fn(tx: Tx) -> dict[str, int]:
            attempts.append(tx.attempt)
            items = await tx.get_prefix("item:")
            nxt = next(change, None)
            if nxt is not None:
                await nxt()
            tx.put("summary", sum(items.values()))
            return items

        assert await c.transact(fn) == {"item:b": 2, "item:c": 3}
        assert attempts == [1, 2, 3]
        assert (await c.state("summary").get(linearizable=True)).value == 5  # type: ignore[union-attr]


async def test_transact_budget_and_read_only_and_errors(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="b1") as c:
        await c.state("hot").set(0)

        async def always_conflicts(tx: Tx) -> None:
            v = await tx.get("hot")
            await c.transport.put(c.keyspace.state("hot"), b"%d" % (v + 1))
            tx.put("hot", -1)

        with pytest.raises(TransactionConflictError) as info:
            await c.transact(always_conflicts, max_attempts=4)
        assert info.value.attempts == 4 and c.keyspace.state("hot") in info.value.keys
        assert (await c.state("hot").get(linearizable=True)).value == 4  # type: ignore[union-attr]

        async def reads_only(tx: Tx) -> int:
            return await tx.get("hot") + await tx.get("missing", 0)

        before = await c.transport.revision()
        assert await c.transact(reads_only) == 4
        assert await c.transport.revision() == before  # nothing committed

        class Boom(Exception):
            pass

        async def raises(tx: Tx) -> None:
            tx.put("hot", 99)
            raise Boom

        with pytest.raises(Boom):
            await c.transact(raises)
        assert (await c.state("hot").get(linearizable=True)).value == 4  # type: ignore[union-attr]

        async def too_many(tx: Tx) -> None:
            for i in range(200):
                tx.put(f"k{i}", i)

        with pytest.raises(TooManyOperationsError):
            await c.transact(too_many)
        with pytest.raises(ValueError, match="max_attempts"):
            await c.transact(reads_only, max_attempts=0)

        async def bad_name(tx: Tx) -> None:
            tx.put("no/slash", 1)

        with pytest.raises(InvalidIdError):
            await c.transact(bad_name)


async def test_fenced_writes_refused_after_the_lock_is_lost(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="f1") as c:
        st = c.state("fenced")
        async with open_transport(etcd_config) as raw:
            with pytest.raises(LockLostError):
                async with c.lock("guard").acquire() as held:
                    await st.fenced(held).set("by holder")

                    async def fn(tx: Tx) -> None:
                        tx.put("fenced", "in txn")

                    await c.transact(fn, fence=held)
                    assert (await st.get(linearizable=True)).value == "in txn"  # type: ignore[union-attr]
                    # someone deletes the holder's key: the lock is gone
                    await raw.delete(held.key)
                    with pytest.raises(LockLostError):
                        await st.fenced(held).set("stale")
                    with pytest.raises(LockLostError):
                        await c.transact(fn, fence=held)
                    await anyio.sleep_forever()  # the lock's monitor cancels the body
        assert (await st.get(linearizable=True)).value == "in txn"  # type: ignore[union-attr]


async def test_get_many_reads_one_snapshot_in_one_round_trip(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="m1") as c:

        async def init(tx: Tx) -> None:
            tx.put("m:a", 1)
            tx.put("m:b", 2)

        await c.transact(init)
        seen: list[list[int | None]] = []

        async def fn(tx: Tx) -> None:
            first = await tx.get("m:a")  # pins the snapshot
            if tx.attempt == 1:
                await c.state("m:b").set(20)  # after the snapshot: not seen, then a conflict
            seen.append([first, *await tx.get_many("m:b", "m:c", "m:a", default=0)])
            tx.put("m:c", sum(seen[-1][1:3]))

        await c.transact(fn)
        assert seen == [[1, 2, 0, 1], [1, 20, 0, 1]]
        assert (await c.state("m:c").get(linearizable=True)).value == 20  # type: ignore[union-attr]


class LaggingWatches:
    """A transport whose watch streams deliver each response 0.2 s late: a slow view."""

    def __init__(self, transport: Any) -> None:
        self._t = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def open_watch(self) -> Any:
        stream = self._t.open_watch()
        read = stream.read

        async def late_read() -> Any:
            resp = await read()
            await anyio.sleep(0.2)
            return resp

        stream.read = late_read
        return stream


async def test_a_handle_never_reads_older_than_it_read_before(etcd_config: Config) -> None:
    """A value read linearizably is never followed by an older one from a lagging view."""
    async with open_transport(etcd_config) as t, anyio.create_task_group() as tg:
        views = SharedViews(LaggingWatches(t), tg)  # type: ignore[arg-type]
        st: SharedState[int] = SharedState(t, etcd_config.keyspace, "mono", views=views)
        await st.set(0)
        assert (await st.get()) is not None  # the view is open
        for n in range(1, 6):
            await t.put(st.key, str(n).encode())  # another client writes
            seen = await st.get(linearizable=True)
            assert seen is not None and seen.value == n
            got = await st.get()  # from the view: not behind what was just read
            assert got is not None and got.value == n, (n, got)
            async with st.watch() as values:  # it starts from there too
                first = values.receive_nowait()
                assert first is not None and first.value == n, (n, first)
        await t.delete(st.key)  # another client deletes it: read absent, never back to 5
        assert await st.get(linearizable=True) is None
        assert await st.get() is None
        tg.cancel_scope.cancel()


async def test_a_delete_that_deleted_nothing_does_not_stall_reads(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="st") as c:
        s = c.state("absent")
        assert await s.get() is None  # the view is open
        await c.state("elsewhere").set(1)  # etcd's revision moves, not this key's
        assert await s.delete() is False  # no event will ever mark it
        with anyio.fail_after(5):
            assert await s.get() is None
            async with s.watch() as values:
                assert values.receive_nowait() is None


async def test_a_read_only_repeatable_read_sees_reads_that_were_true_together(
    etcd_config: Config,
) -> None:
    """Reads taken one by one are checked at the end, as a commit checks them (etcd's STM)."""
    async with connect(etcd_config, node_id="x") as c, connect(etcd_config, node_id="y") as d:
        await c.state("a").set(100)
        await c.state("b").set(0)
        attempts = []

        async def total(tx: Tx) -> int:
            attempts.append(tx.attempt)
            a = await tx.get("a")
            if tx.attempt == 1:  # another process moves 10 from a to b between the reads

                async def move(t: Tx) -> None:
                    t.put("a", (await t.get("a")) - 10)
                    t.put("b", (await t.get("b")) + 10)

                await d.transact(move)
            return int(a + (await tx.get("b")))

        assert await c.transact(total, isolation=Isolation.REPEATABLE_READ) == 100
        assert attempts == [1, 2]  # the first attempt's pair never existed: tried again
        # read committed promises nothing of the kind: one attempt, a pair never true
        attempts.clear()
        assert await c.transact(total, isolation=Isolation.READ_COMMITTED) == 110
        assert attempts == [1]
