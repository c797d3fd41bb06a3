"""Coalesced transactions (``_coord/coalesce.py``) against a real etcd.

Each test checks what a caller sees (its own result, its own error) and what etcd holds
afterwards, and counts the transactions that really reached etcd.
"""

from __future__ import annotations

import anyio
import pytest

from foundation_etcd import Config, EtcdServerError, LeaseNotFoundError
from foundation_etcd._coord.coalesce import Coalescer
from foundation_etcd.lowlevel import Compare, Op, Transport, TxnResult, open_transport


class Counting:
    """A transport whose ``txn`` counts the requests sent (and can hold them back)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.sent: list[int] = []  # the number of top-level ops of each request sent
        self.gate: anyio.Event | None = None

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        self.sent.append(len(success))
        if self.gate is not None:
            await self.gate.wait()
        return await self._t.txn(compare, success, failure)


@pytest.fixture
async def t(etcd_config: Config):  # type: ignore[no-untyped-def]
    async with open_transport(etcd_config) as transport:
        yield transport


def gated(t: Transport) -> tuple[Counting, Coalescer]:
    """One request on its way at a time, and the first held until ``gate`` is set."""
    counting = Counting(t)
    counting.gate = anyio.Event()
    return counting, Coalescer(counting, in_flight=1)  # type: ignore[arg-type]


def create(key: bytes, value: bytes = b"v") -> tuple[list[Compare], list[Op], list[Op]]:
    return [Compare.create_revision(key) == 0], [Op.put(key, value)], [Op.get(key)]


async def test_many_at_once_go_together_each_with_its_own_result(
    t: Transport, etcd_config: Config
) -> None:
    p = etcd_config.keyspace.prefix + b"co/"
    await t.put(p + b"k007", b"taken")  # this one's compare fails: it alone fails
    counting, co = gated(t)  # the first request waits: the rest queue behind it
    results: dict[int, TxnResult] = {}

    async def one(i: int) -> None:
        results[i] = await co.txn(*create(p + b"k%03d" % i, b"%d" % i))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
        await anyio.wait_all_tasks_blocked()
        counting.gate.set()
    assert len(results) == 200
    assert [i for i, r in results.items() if not r.succeeded] == [7]
    assert results[7].range(0).first is not None and results[7].range(0).first.value == b"taken"
    # the first alone, then the 199 waiting in batches within etcd's 128 operations
    assert counting.sent[0] == 1 and len(counting.sent) <= 4, counting.sent
    assert max(counting.sent) <= 127 and sum(counting.sent) == 200
    assert co.batched == 199
    got = await t.get_prefix(p)
    assert {kv.key: kv.value for kv in got.kvs} == {
        p + b"k%03d" % i: (b"taken" if i == 7 else b"%d" % i) for i in range(200)
    }
    # members of a batch commit together, at its revision
    revs = {r.revision for i, r in results.items() if i != 0 and r.succeeded}
    assert len(revs) == len(counting.sent) - 1


async def test_two_writes_of_one_key_never_share_a_batch(t: Transport, etcd_config: Config) -> None:
    p = etcd_config.keyspace.prefix + b"dup/"
    counting, co = gated(t)
    out: list[tuple[str, bool]] = []

    async def one(name: str, key: bytes) -> None:
        res = await co.txn(*create(key, name.encode()))
        out.append((name, res.succeeded))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "first", p + b"other")
        await anyio.wait_all_tasks_blocked()
        for name, key in [("a", p + b"same"), ("b", p + b"x"), ("c", p + b"same")]:
            tg.start_soon(one, name, key)
            await anyio.wait_all_tasks_blocked()
        counting.gate.set()
    # etcd would refuse a, b and c in one request ("duplicate key"): c went in the next
    assert sorted(out) == [("a", True), ("b", True), ("c", False), ("first", True)]
    assert counting.sent == [1, 2, 1]
    assert (await t.get(p + b"same")).value == b"a"  # type: ignore[union-attr]


async def test_a_member_etcd_refuses_fails_alone(t: Transport, etcd_config: Config) -> None:
    p = etcd_config.keyspace.prefix + b"bad/"
    counting, co = gated(t)
    # one member etcd refuses whoever sends it: it puts one key in two nested transactions
    bad = ([], [Op.txn([], [Op.put(p + b"z", b"1")]), Op.txn([], [Op.put(p + b"z", b"2")])], [])
    errors: dict[str, BaseException] = {}
    done: list[str] = []

    async def one(name: str, txn: tuple) -> None:  # type: ignore[type-arg]
        try:
            await co.txn(*txn)
            done.append(name)
        except EtcdServerError as exc:
            errors[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "first", create(p + b"first"))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(one, "ok-1", create(p + b"ok-1"))
        tg.start_soon(one, "bad", bad)
        tg.start_soon(one, "ok-2", create(p + b"ok-2"))
        await anyio.wait_all_tasks_blocked()
        counting.gate.set()
    assert sorted(done) == ["first", "ok-1", "ok-2"]
    assert list(errors) == ["bad"] and "duplicate key" in str(errors["bad"])
    # the batch of three was refused, then each was sent alone
    assert counting.sent == [1, 3, 1, 2, 1]
    keys = sorted(kv.key for kv in (await t.get_prefix(p)).kvs)
    assert keys == [p + b"first", p + b"ok-1", p + b"ok-2"]


async def test_a_member_whose_lease_is_gone_fails_alone(t: Transport, etcd_config: Config) -> None:
    p = etcd_config.keyspace.prefix + b"lease/"
    gone = (await t.lease_grant(60)).id
    await t.lease_revoke(gone)
    counting, co = gated(t)
    errors: dict[str, BaseException] = {}
    done: list[str] = []

    async def one(name: str, lease: int = 0) -> None:
        key = p + name.encode()
        try:
            await co.txn([Compare.create_revision(key) == 0], [Op.put(key, b"v", lease=lease)])
            done.append(name)
        except LeaseNotFoundError as exc:
            errors[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "first")
        await anyio.wait_all_tasks_blocked()
        for name in ("a", "b"):
            tg.start_soon(one, name)
        tg.start_soon(one, "expired", gone)
        tg.start_soon(one, "c")
        await anyio.wait_all_tasks_blocked()
        counting.gate.set()
    assert sorted(done) == ["a", "b", "c", "first"] and list(errors) == ["expired"]
    assert counting.sent == [1, 4, 1, 1, 1, 1]  # the batch refused, then each alone
    assert await t.get(p + b"expired") is None


async def test_a_caller_cancelled_while_queued_is_never_sent(
    t: Transport, etcd_config: Config
) -> None:
    p = etcd_config.keyspace.prefix + b"cancel/"
    counting, co = gated(t)
    done: list[str] = []

    async def one(name: str) -> None:
        await co.txn(*create(p + name.encode()))
        done.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "first")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(one, "kept")
        scope = anyio.CancelScope()

        async def gone() -> None:
            with scope:
                await one("gone")

        tg.start_soon(gone)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        counting.gate.set()
    assert sorted(done) == ["first", "kept"]
    assert await t.get(p + b"gone") is None
    assert counting.sent == [1, 1]


async def test_alone_when_few_are_on_their_way(t: Transport, etcd_config: Config) -> None:
    p = etcd_config.keyspace.prefix + b"few/"
    counting = Counting(t)
    co = Coalescer(counting, in_flight=2)  # type: ignore[arg-type]
    for i in range(5):  # one after the other: each alone, at once
        assert (await co.txn(*create(p + b"%d" % i))).succeeded
    async with anyio.create_task_group() as tg:  # two at once: both alone (in_flight=2)
        for i in range(5, 7):
            tg.start_soon(co.txn, *create(p + b"%d" % i))
    assert counting.sent == [1] * 7 and co.batches == 0
    # a range delete goes alone even when it would have waited
    counting.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        for i in range(7, 9):
            tg.start_soon(co.txn, *create(p + b"%d" % i))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(co.txn, [], [Op.delete(p + b"none/", prefix=True)])
        await anyio.wait_all_tasks_blocked()
        assert counting.sent[-1] == 1 and len(counting.sent) == 10
        counting.gate.set()
    assert len((await t.get_prefix(p)).kvs) == 9


def test_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(object(), in_flight=0)  # type: ignore[arg-type]


async def test_txn_many_answers_each_in_order_in_few_requests(
    t: Transport, etcd_config: Config
) -> None:
    p = etcd_config.keyspace.prefix + b"many/"
    await t.put(p + b"k0100", b"taken")  # its compare fails: it alone fails
    counting = Counting(t)
    co = Coalescer(counting, in_flight=2)  # type: ignore[arg-type]
    txns = [create(p + b"k%04d" % i, b"%d" % i) for i in range(300)]
    txns.insert(7, ([], [Op.delete(p + b"none/", prefix=True)], []))  # a range delete: alone
    results = await co.txn_many(txns)
    assert len(results) == 301
    alone = results.pop(7)
    assert isinstance(alone, TxnResult) and alone.succeeded
    assert all(isinstance(r, TxnResult) for r in results)
    assert [r.succeeded for r in results] == [i != 100 for i in range(300)]  # type: ignore[union-attr]
    taken = results[100]
    assert isinstance(taken, TxnResult) and taken.range(0).first.value == b"taken"  # type: ignore[union-attr]
    # 300 members, at most 127 to a request (etcd's 128 operations, a member's own one),
    # and the range delete alone
    assert sorted(counting.sent) == [1, 46, 127, 127] and co.batches == 3
    kvs = {kv.key: kv.value for kv in (await t.get_prefix(p)).kvs}
    assert kvs == {p + b"k%04d" % i: b"taken" if i == 100 else b"%d" % i for i in range(300)}
    assert await co.txn_many([]) == []


async def test_txn_many_gives_each_its_own_error(t: Transport, etcd_config: Config) -> None:
    p = etcd_config.keyspace.prefix + b"many-err/"
    counting = Counting(t)
    co = Coalescer(counting)  # type: ignore[arg-type]
    gone = await t.lease_grant(60)
    await t.lease_revoke(gone.id)
    txns = [create(p + b"a"), ([], [Op.put(p + b"b", b"v", lease=gone.id)], []), create(p + b"c")]
    results = await co.txn_many(txns)
    assert isinstance(results[1], LeaseNotFoundError)
    assert all(isinstance(r, TxnResult) and r.succeeded for r in (results[0], results[2]))
    assert counting.sent == [3, 1, 1, 1]  # the batch refused, then each alone
    assert {kv.key for kv in (await t.get_prefix(p)).kvs} == {p + b"a", p + b"c"}


async def test_txn_many_cancelled_sends_no_more(t: Transport, etcd_config: Config) -> None:
    p = etcd_config.keyspace.prefix + b"many-cancel/"
    counting, co = gated(t)  # one request at a time, the first held
    with anyio.move_on_after(0.2) as scope:
        await co.txn_many([create(p + b"k%04d" % i) for i in range(1000)])
    assert scope.cancelled_caught
    assert counting.sent == [127]  # the one request sent before the cancellation
    counting.gate.set()
    with anyio.fail_after(10):
        while co._busy:  # noqa: ASYNC110 (the held request finishes in its own task)
            await anyio.sleep(0.01)
    assert counting.sent == [127] and not co._queue
    assert len((await t.get_prefix(p)).kvs) == 127
    assert (await co.txn(*create(p + b"after"))).succeeded  # the coalescer still works
