import anyio
import pytest

from foundation_etcd import (
    AmbiguousResultError,
    AuthError,
    Config,
    InvalidReservationError,
    LeaseLostError,
    QuotaExceededError,
    clustered,
    connect,
)
from foundation_etcd.lowlevel import Op
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


async def test_reserve_release_and_usage(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c:
        q = c.quotas
        await q.set_limit("gpu", 4)
        assert await q.get_limit("gpu") == 4
        async with q.reserve({"gpu": 3}) as r:
            assert r.amounts == {"gpu": 3}
            u = await q.open_usage("gpu")
            assert (u.limit, u.used, u.queued) == (4, 3, 0)
            with pytest.raises(QuotaExceededError) as info:
                async with q.reserve_nowait({"gpu": 2}):
                    raise AssertionError("admitted over the limit")
            assert (info.value.used, info.value.limit) == (3, 4)
            async with q.reserve_nowait({"gpu": 1}):
                assert (await q.open_usage("gpu")).used == 4
        u = await q.open_usage("gpu")
        assert (u.used, u.reservations) == (0, 0)


async def test_bad_input_writes_nothing(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n1") as c:
        q = c.quotas
        await q.set_limit("cpu", 8)
        rev = (await c.transport.status()).revision
        for bad in ({"cpu": 0}, {"cpu": -1}, {"cpu": 1.5}, {"cpu": True}, {}, {"nope": 1}):
            with pytest.raises(InvalidReservationError):
                async with q.reserve(bad):  # type: ignore[arg-type]
                    raise AssertionError("body ran")
        with pytest.raises(InvalidReservationError, match="can never be admitted"):
            async with q.reserve({"cpu": 9}):
                pass
        with pytest.raises(ValueError):
            await q.set_limit("cpu", -2)
        assert (await c.transport.status()).revision == rev


async def test_waiter_is_admitted_on_release_fifo(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        await a.quotas.set_limit("slots", 2)
        order: list[str] = []
        release = anyio.Event()

        async def holder() -> None:
            async with a.quotas.reserve({"slots": 2}):
                order.append("a-in")
                await release.wait()
            order.append("a-out")

        async def waiter(name: str, amount: int) -> None:
            async with b.quotas.reserve({"slots": amount}):
                order.append(f"{name}-in")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await wait_until(lambda: not ("a-in" not in order))
                tg.start_soon(waiter, "big", 2)
                await anyio.sleep(0.1)
                tg.start_soon(waiter, "small", 1)
                await anyio.sleep(0.2)
                assert order == ["a-in"]  # the small one does not jump the queue
                release.set()
    # the waiter may see the release (a watch event) before the holder sees its own delete
    # answered, so "a-out" and "big-in" come in either order; the small one comes last
    assert order[0] == "a-in" and sorted(order[1:3]) == ["a-out", "big-in"]
    assert order[3:] == ["small-in"]


async def test_multi_resource_admitted_only_if_all_fit(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("cpu", 4)
        await q.set_limit("mem", 10)
        async with q.reserve({"cpu": 1, "mem": 9}):
            with pytest.raises(QuotaExceededError) as info:
                async with q.reserve_nowait({"cpu": 1, "mem": 2}):
                    pass
            assert info.value.pool == "mem"
            assert (await q.open_usage("cpu")).used == 1


async def test_lowering_limit_admits_nothing_new(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("x", 5)
        async with q.reserve({"x": 4}):
            await q.set_limit("x", 2)
            await q.open_usage("x")
            with pytest.raises(QuotaExceededError):
                async with q.reserve_nowait({"x": 1}):
                    pass
        async with q.reserve_nowait({"x": 1}):
            pass


async def test_limit_raise_wakes_waiter(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("y", 1)
        admitted = anyio.Event()

        async def waiter() -> None:
            async with q.reserve({"y": 1}):
                admitted.set()

        async with q.reserve({"y": 1}):
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    await anyio.sleep(0.2)
                    assert not admitted.is_set()
                    await q.set_limit("y", 2)
                    await admitted.wait()


async def test_node_capacity_pool(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="gpu-box", capacity={"gpu": 2}) as c:
        async with c.quotas.reserve({"gpu": 2}, node="gpu-box"):
            with pytest.raises(QuotaExceededError):
                async with c.quotas.reserve_nowait({"gpu": 1}, node="gpu-box"):
                    pass
        with pytest.raises(InvalidReservationError, match="no limit"):
            async with c.quotas.reserve({"gpu": 1}, node="elsewhere"):
                pass


async def test_reservation_goes_with_the_lease(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="h") as c, connect(etcd_config, node_id="w") as w:
        await c.quotas.set_limit("z", 1)
        with anyio.fail_after(10):
            with pytest.raises(LeaseLostError):
                async with c.quotas.reserve({"z": 1}):
                    await w.transport.lease_revoke(c.session.lease.id)
                    await anyio.sleep(10)
            async with w.quotas.reserve({"z": 1}):
                pass


async def test_reservation_ids_are_reused_tokens_are_not(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("r", 10)
        ids, tokens = [], []
        for _ in range(20):
            async with q.reserve({"r": 1}) as r:
                ids.append(r.reservation_id)
                tokens.append(r.token)
        async with q.reserve({"r": 1}) as a, q.reserve({"r": 1}) as b:
            assert a.reservation_id != b.reservation_id  # names are per live reservation
        # one name reused: etcd's index keeps one entry for it, not one per reservation
        assert set(ids) == {f"{c.session.lease.id:x}-1"}
        assert tokens == sorted(set(tokens))
        prefix = c.keyspace.quota_queue_prefix("r")
        assert (await c.transport.get_prefix(prefix)).kvs == []


async def test_limit_written_elsewhere_just_before_reserve(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="a") as a, connect(etcd_config, node_id="b") as b:
        await a.quotas.open_usage("other")  # a's view is open and may lag behind b's write
        for i in range(10):
            await b.quotas.set_limit(f"fresh{i}", 1)
            async with a.quotas.reserve({f"fresh{i}": 1}) as r:  # not refused as "no limit"
                assert r.amounts == {f"fresh{i}": 1}


async def test_lost_answer_withdraws_the_keys(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("s", 1)
        await q.open_usage("s")
        real_txn = c.transport.txn
        calls = []

        async def answer_lost(*args: object, **kwargs: object) -> object:
            # the reserving transaction reaches etcd and is applied; its answer is lost
            result = await real_txn(*args, **kwargs)  # type: ignore[arg-type]
            if not calls:
                calls.append(result.revision)
                raise AmbiguousResultError("txn: answer lost (injected)", operation="txn")
            return result

        monkeypatch.setattr(c.transport, "txn", answer_lost)
        with pytest.raises(AmbiguousResultError):
            async with q.reserve({"s": 1}):
                raise AssertionError("admitted without an answer")
        assert calls, "the fault was not injected"
        prefix = c.keyspace.quota_queue_prefix("s")
        assert (await c.transport.get_prefix(prefix)).kvs == []  # withdrawn, not orphaned
        monkeypatch.undo()
        async with q.reserve_nowait({"s": 1}):  # the whole limit is free again
            pass


async def test_node_pool_waiter_admitted_on_release(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="box", capacity={"cpu": 1}) as c:
        order: list[str] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                async with c.quotas.reserve({"cpu": 1}, node="box"):

                    async def waiter() -> None:
                        async with c.quotas.reserve({"cpu": 1}, node="box"):
                            order.append("waiter-in")

                    tg.start_soon(waiter)
                    await anyio.sleep(0.2)
                    assert order == []
                    order.append("holder-out")
        assert order == ["holder-out", "waiter-in"]


async def test_waiter_sees_the_view_stop(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("w", 1)
        async with q.reserve({"w": 1}):
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:

                    async def waiter() -> None:
                        with pytest.raises(AuthError, match="injected"):
                            async with q.reserve({"w": 1}):
                                raise AssertionError("admitted over the limit")

                    tg.start_soon(waiter)
                    await wait_until(lambda: bool(q._waiters))
                    # white-box: what the view's watch does when etcd refuses it for good
                    view = q._view
                    assert view is not None
                    view._error = AuthError("permission denied (injected)")
                    view._stopped()


# -- crafted queue entries ---------------------------------------------------------------------

CRAFTED = {
    "negative": b'{"amounts": {"cpu": -100}}',
    "zero": b'{"amounts": {"cpu": 0}}',
    "float": b'{"amounts": {"cpu": 0.5}}',
    "bool": b'{"amounts": {"cpu": true}}',
    "string": b'{"amounts": {"cpu": "1"}}',
    "huge": b'{"amounts": {"cpu": 100000000000000000000}}',
    "garbage": b"\xff not json",
    "no-amounts": b'{"holder": "x"}',
    "other-pool": b'{"amounts": {"mem": 1}}',
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
async def test_crafted_entry_blocks_and_never_admits_more(etcd_config: Config, kind: str) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("cpu", 2)
        evil = c.keyspace.quota_queue_prefix("cpu") + b"evil"
        await c.transport.put(evil, CRAFTED[kind])  # no lease: stays until deleted
        u = await q.open_usage("cpu")
        assert (u.used, u.queued, u.reservations, u.malformed) == (2, 0, 1, 1)
        # the transaction's own read sees it ahead: refused at once, not admitted
        with pytest.raises(QuotaExceededError) as info:
            async with q.reserve_nowait({"cpu": 1}):
                raise AssertionError(f"admitted behind a {kind} entry")
        assert (info.value.used, info.value.limit) == (2, 2)

        held = peak = admitted = 0
        four_in = anyio.Event()

        async def user() -> None:
            nonlocal held, peak, admitted
            async with q.reserve({"cpu": 2}):
                held += 2
                peak = max(peak, held)
                admitted += 1
                if admitted == 4:
                    four_in.set()
                await anyio.sleep(0.02)
                held -= 2

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(user)
                await wait_until(lambda: len(q._waiters) == 4)  # all queued behind it
                assert admitted == 0
                await c.transport.delete(evil)  # the crafted entry goes: FIFO resumes
                await four_in.wait()
        assert (admitted, peak) == (4, 2)


async def test_crafted_entry_behind_a_holder_only_blocks_what_follows(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("cpu", 4)
        qp = c.keyspace.quotas_prefix() + b"queue/"
        async with q.reserve({"cpu": 1}) as mine:
            # one transaction: a crafted entry, keys in queues no pool has (not UTF-8, a bad
            # pool name, no pool segment), and a nested key that the cpu range does hold
            await c.transport.txn(
                [],
                [
                    Op.put(qp + b"cpu/evil", CRAFTED["negative"]),
                    Op.put(qp + b"\xff\xfe/x", b'{"amounts": {"cpu": -9}}'),
                    Op.put(qp + b"bad pool/x", b'{"amounts": {"cpu": -9}}'),
                    Op.put(qp + b"cpu", b'{"amounts": {"cpu": -9}}'),
                    Op.put(qp + b"cpu/a/b", b'{"amounts": {"cpu": 1}}'),
                ],
            )
            u = await q.open_usage("cpu")
            # held 1, then the crafted entry (shown as the whole limit), then the nested 1
            assert (u.used, u.queued, u.reservations, u.malformed) == (1, 5, 3, 1)
            with pytest.raises(QuotaExceededError):
                async with q.reserve_nowait({"cpu": 1}):
                    raise AssertionError("admitted behind a crafted entry")
            # rewriting a held reservation's key (to a smaller amount) frees nothing either
            await c.transport.put(mine.keys[0], b'{"amounts": {"cpu": 1}, "holder": "n"}')
            u = await q.open_usage("cpu")
            assert u.malformed == 2 and u.used == 4
        await c.transport.delete(qp + b"cpu/evil")
        await c.transport.delete(qp + b"cpu/a/b")
        async with q.reserve_nowait({"cpu": 4}):  # the whole limit is free again
            pass
        assert (await q.open_usage("cpu")).malformed == 0


async def test_malformed_limits_and_capacities_admit_nothing(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="box", capacity={"cpu": 2}) as c:
        q = c.quotas
        for bad in (b'{"limit": -1}', b'{"limit": 2.5}', b'{"limit": true}', b"nope"):
            await c.transport.put(c.keyspace.quota_limit("cpu"), bad)
            with pytest.raises(InvalidReservationError, match="no limit"):
                async with q.reserve({"cpu": 1}):
                    raise AssertionError("admitted without a valid limit")
        # a node announcement is the tenant's own key: a forged capacity is no capacity
        forged = b'{"node_id": "box", "capacity": {"cpu": 1e400}}'
        await c.transport.put(c.keyspace.node("box"), forged, lease=c.session.lease.id)
        await q.open_usage("cpu", node="box")
        with pytest.raises(InvalidReservationError, match="no limit"):
            async with q.reserve({"cpu": 1}, node="box"):
                raise AssertionError("admitted against a forged capacity")


# -- one amount rule: spawn, @clustered, capacity and reserve agree -----------------------------


@clustered("amount-rule-test")
class _Plain:
    pass


async def test_spawn_refuses_what_clustered_refuses_before_writing(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n", capacity={"cpu": 4}) as c:
        rev = (await c.transport.txn([], [])).revision
        for bad in (0, -1, 1.5, True, "1", 2**60):
            with pytest.raises(ValueError, match="'cpu'"):
                clustered(resources={"cpu": bad})  # type: ignore[dict-item]
            with pytest.raises(ValueError, match="'cpu'"):
                await c.spawn(_Plain, "a1", resources={"cpu": bad})  # type: ignore[dict-item]
            with pytest.raises(InvalidReservationError, match="'cpu'"):
                async with c.quotas.reserve({"cpu": bad}):  # type: ignore[dict-item]
                    raise AssertionError("body ran")
        with pytest.raises(ValueError, match="capacity of 'cpu'"):
            async with connect(etcd_config, node_id="m", capacity={"cpu": -1}):
                raise AssertionError("connected with a negative capacity")
        assert (await c.transport.txn([], [])).revision == rev  # nothing written
        await c.spawn(_Plain, "a1", resources={"cpu": 1})  # a valid one is written
        assert (await c.transport.txn([], [])).revision > rev


async def test_a_squatted_reservation_name_is_left_alone(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("cpu", 4)
        async with q.reserve({"cpu": 1}) as first:
            pass
        # another writer takes the name this process would reuse next
        squat = first.keys[0]
        await c.transport.put(squat, b'{"amounts": {"cpu": 1}, "holder": "squatter"}')
        with anyio.fail_after(10):
            async with q.reserve({"cpu": 3}) as r:  # 1 (the squatter's) + 3 fit the limit
                assert r.reservation_id != first.reservation_id
                assert (await q.open_usage("cpu")).used == 4
        kv = await c.transport.get(squat)  # never overwritten, never deleted
        assert kv is not None and kv.version == 1 and b"squatter" in kv.value
        assert (await q.open_usage("cpu")).reservations == 1


# -- the tenant view only while reservations wait ---------------------------------------------


async def test_the_tenant_view_is_open_only_while_reservations_wait(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation_etcd._coord import quota_view

    monkeypatch.setattr(quota_view, "VIEW_LINGER", 0.1)
    async with connect(etcd_config, node_id="n1") as c1, connect(etcd_config, node_id="n2") as c2:
        q1, q2 = c1.quotas, c2.quotas
        await q1.set_limit("a", 1)
        with anyio.fail_after(20):
            async with q2.reserve({"a": 1}):  # admitted by its own transaction
                pass
            assert q2._view is None  # judged from the limits alone: no view of the queues
            admitted = anyio.Event()
            async with anyio.create_task_group() as tg:
                async with q1.reserve({"a": 1}):

                    async def waiter() -> None:
                        async with q2.reserve({"a": 1}):
                            admitted.set()

                    tg.start_soon(waiter)
                    await wait_until(lambda: len(q2._waiters) == 1)
                    view = q2._view
                    assert view is not None  # a waiting reservation opens it
                    assert not admitted.is_set()
                await admitted.wait()
            # idle: closed after the linger, and a later wait opens a new one
            await wait_until(lambda: q2._view is None)
            with pytest.raises(anyio.ClosedResourceError):
                view._check()
            async with q1.reserve({"a": 1}):
                with pytest.raises(QuotaExceededError):
                    async with q2.reserve_nowait({"a": 1}):
                        raise AssertionError("admitted over the limit")
            # usage asked for: the view stays open for good
            assert (await q2.open_usage("a")).used == 0
            kept = q2._view
            assert kept is not None
            for _ in range(3):  # reservations come and go, linger after linger
                async with q2.reserve({"a": 1}):
                    await anyio.sleep(0.1)
            assert q2._view is kept
            kept._check()


async def test_a_view_stopped_by_an_error_is_replaced_once_idle(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation_etcd._coord import quota_view

    monkeypatch.setattr(quota_view, "VIEW_LINGER", 0.1)
    async with connect(etcd_config, node_id="n") as c:
        q = c.quotas
        await q.set_limit("w", 1)

        async def wait_once(stop_view: bool) -> None:
            async with anyio.create_task_group() as tg:
                async with q.reserve({"w": 1}):

                    async def waiter() -> None:
                        if stop_view:
                            with pytest.raises(AuthError, match="injected"):
                                async with q.reserve({"w": 1}):
                                    raise AssertionError("admitted over the limit")
                        else:
                            async with q.reserve({"w": 1}):
                                pass

                    tg.start_soon(waiter)
                    await wait_until(lambda: bool(q._waiters))
                    if stop_view:  # white-box: etcd refusing the view's watch for good
                        view = q._view
                        assert view is not None
                        view._error = AuthError("permission denied (injected)")
                        view._stopped()
                        await wait_until(lambda: not q._waiters)

        with anyio.fail_after(20):
            await wait_once(stop_view=True)
            stopped = q._view
            await wait_until(lambda: q._view is None)  # idle: the stopped view goes
            await wait_once(stop_view=False)  # the next waiter opens a working one
            assert q._view is not stopped


async def test_limits_changed_while_the_tenant_view_is_closed_are_respected(
    etcd_config: Config,
) -> None:
    async with connect(etcd_config, node_id="n1") as c1, connect(etcd_config, node_id="n2") as c2:
        q1, q2 = c1.quotas, c2.quotas
        await q1.set_limit("l", 4)
        with anyio.fail_after(20):
            async with q2.reserve({"l": 2}):  # admitted by its transaction: no tenant view
                pass
            assert q2._view is None
            async with q1.reserve({"l": 1}):
                await q1.set_limit("l", 2)  # lowered by another process
                # judged against the lowered limit (from the limits view, or caught up when
                # the transaction's compare finds the limit changed): 1 + 2 > 2
                with pytest.raises(QuotaExceededError):
                    async with q2.reserve_nowait({"l": 2}):
                        raise AssertionError("admitted over a lowered limit")
                with pytest.raises(InvalidReservationError, match="never be admitted"):
                    async with q2.reserve_nowait({"l": 3}):
                        raise AssertionError("admitted above the limit")
                await q1.set_limit("l", 3)  # raised: 1 + 2 fits now
                async with q2.reserve_nowait({"l": 2}) as r:
                    assert r.amounts == {"l": 2}
            assert q2._view is None  # every one was judged by its own transaction


@pytest.mark.parametrize("fault", ["pause", "kill"])
async def test_a_waiter_rides_out_a_paused_or_killed_member(
    etcd_factory, etcd_namespace: str, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """The tenant view a waiter opened survives the fault; idle afterwards, it closes."""
    from foundation_etcd._coord import quota_view

    monkeypatch.setattr(quota_view, "VIEW_LINGER", 0.2)
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, ttl=10.0)
    async with connect(cfg, node_id="n1") as c1, connect(cfg, node_id="n2") as c2:
        await c1.quotas.set_limit("f", 1)
        admitted = anyio.Event()
        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                async with c1.quotas.reserve({"f": 1}):

                    async def waiter() -> None:
                        async with c2.quotas.reserve({"f": 1}):
                            admitted.set()

                    tg.start_soon(waiter)
                    await wait_until(lambda: len(c2.quotas._waiters) == 1)
                    if fault == "pause":  # holds every connection open, answers nothing
                        server.pause()
                        await anyio.sleep(2.0)  # the fault's length, not a wait for an event
                        server.resume()
                    else:
                        server.kill()
                        await anyio.to_thread.run_sync(server.start)
                    assert not admitted.is_set()
                await admitted.wait()  # the release after the fault admits it
            await wait_until(lambda: c2.quotas._view is None)  # idle: closed
            async with c2.quotas.reserve({"f": 1}):  # and reserving still works
                pass
