import random

import anyio
import pytest

from foundation_etcd import ChangeKind, Config, EtcdUnavailableError
from foundation_etcd.lowlevel import (
    KeyValue,
    Transport,
    ViewChange,
    WatchedView,
    open_transport,
    open_view,
)
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


async def assert_equals_fresh_list(view: WatchedView, t: Transport, revision: int) -> None:
    with anyio.fail_after(15):
        await view.wait_for(revision)
    fresh = await t.get_prefix(view.prefix)
    assert {kv.key: kv for kv in fresh.kvs} == dict(view.items())


def replay(snapshot: dict[bytes, KeyValue], batches: list[list[ViewChange]]) -> dict:
    """Apply a change history to a snapshot; fail on a change applied twice or out of order."""
    state = dict(snapshot)
    last = 0
    for batch in batches:
        for c in batch:
            assert c.revision >= last, "changes out of revision order"
            last = c.revision
            if c.kind is ChangeKind.REMOVED:
                assert c.key in state, f"removal of absent key {c.key!r}"
                del state[c.key]
            elif c.kind is ChangeKind.ADDED:
                assert c.key not in state, f"key {c.key!r} added twice"
                state[c.key] = c.kv
            else:
                assert c.key in state and state[c.key].mod_revision < c.kv.mod_revision
                state[c.key] = c.kv
    return state


async def churn(t: Transport, prefix: bytes, n: int, seed: int) -> int:
    rnd = random.Random(seed)
    rev = 0
    for i in range(n):
        key = prefix + f"k{rnd.randrange(20)}".encode()
        if rnd.random() < 0.3:
            rev = max(rev, (await t.delete(key)).revision)
        else:
            rev = (await t.put(key, f"{i}".encode())).revision
    return rev


async def test_view_follows_concurrent_writers(etcd_config: Config) -> None:
    prefix = etcd_config.keyspace.key("w/")
    async with open_transport(etcd_config) as t:
        await churn(t, prefix, 20, seed=1)
        async with open_view(t, prefix) as view:
            snapshot = dict(view.items())
            batches: list[list[ViewChange]] = []
            view.on_change(batches.append)
            async with anyio.create_task_group() as tg:
                for s in range(4):
                    tg.start_soon(churn, t, prefix, 100, s + 10)
            rev = (await t.put(prefix + b"last", b"1")).revision
            await assert_equals_fresh_list(view, t, rev)
            assert replay(snapshot, batches) == dict(view.items())


async def test_wait_for_revision_outside_prefix(etcd_config: Config) -> None:
    async with open_transport(etcd_config) as t, open_view(t, etcd_config.keyspace.key("a/")) as v:
        rev = (await t.put(etcd_config.keyspace.key("b"), b"1")).revision
        with anyio.fail_after(5):
            await v.wait_for(rev)
        assert v.revision >= rev and len(v) == 0


async def test_view_across_etcd_restart(etcd_factory, etcd_namespace: str) -> None:
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    prefix = cfg.keyspace.key("r/")
    async with open_transport(cfg) as t:
        await churn(t, prefix, 30, seed=2)
        async with open_view(t, prefix) as view:
            snapshot = dict(view.items())
            batches: list[list[ViewChange]] = []
            view.on_change(batches.append)
            await churn(t, prefix, 30, seed=3)
            await anyio.to_thread.run_sync(server.restart)
            with anyio.fail_after(20):
                while True:  # the client reconnects by itself
                    try:
                        rev = await churn(t, prefix, 30, seed=4)
                        break
                    except Exception:
                        await anyio.sleep(0.1)
            await assert_equals_fresh_list(view, t, rev)
            assert view.restarts >= 1
            assert replay(snapshot, batches) == dict(view.items())


async def test_view_across_compaction(
    etcd_factory, etcd_namespace: str, fault_proxy_factory
) -> None:
    # compaction is global: a private server, so other tests keep their history
    server = etcd_factory()
    etcd_config = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    proxy = fault_proxy_factory(server.endpoint)
    cut_cfg = etcd_config.with_options(endpoints=(proxy.endpoint,))
    prefix = etcd_config.keyspace.key("c/")
    async with open_transport(etcd_config) as t, open_transport(cut_cfg) as tv:
        await churn(t, prefix, 40, seed=5)
        async with open_view(tv, prefix) as view:
            snapshot = dict(view.items())
            batches: list[list[ViewChange]] = []
            view.on_change(batches.append)
            proxy.drop()
            with anyio.fail_after(10):
                await wait_until(lambda: not (view.connected))
            rev = await churn(t, prefix, 60, seed=6)
            await t.compact(rev)
            proxy.pass_()
            await assert_equals_fresh_list(view, t, rev)
            assert view.relists == 1
            assert replay(snapshot, batches) == dict(view.items())


async def test_subscribe_receives_batches(etcd_config: Config) -> None:
    prefix = etcd_config.keyspace.key("s/")
    async with open_transport(etcd_config) as t, open_view(t, prefix) as view:
        async with view.subscribe() as changes:
            await t.put(prefix + b"a", b"1")
            await t.put(prefix + b"a", b"2")
            await t.delete(prefix + b"a")
            got = []
            with anyio.fail_after(5):
                while len(got) < 3:
                    got.extend(await changes.receive())
        assert [c.kind for c in got] == [ChangeKind.ADDED, ChangeKind.UPDATED, ChangeKind.REMOVED]


async def test_wait_for_outside_prefix_with_keys_is_prompt(etcd_config: Config) -> None:
    """Progress verification must work on a non-empty prefix (etcd's count ignores filters)."""
    prefix = etcd_config.keyspace.key("full/")
    async with open_transport(etcd_config) as t:
        for i in range(5):
            await t.put(prefix + str(i).encode(), b"v")
        async with open_view(t, prefix) as v:
            for _ in range(5):
                rev = (await t.put(etcd_config.keyspace.key("elsewhere"), b"1")).revision
                t0 = anyio.current_time()
                with anyio.fail_after(5):
                    await v.wait_for(rev)
                # well under the server's progress interval and our own pinger's
                assert anyio.current_time() - t0 < 0.5
            assert len(v) == 5


async def test_on_stop_runs_once_when_the_view_closes(etcd_config: Config) -> None:
    stops: list[str] = []
    async with open_transport(etcd_config) as t:
        async with open_view(t, etcd_config.keyspace.prefix + b"stop/") as view:
            view.on_stop(lambda: stops.append("stopped"))
            assert stops == []
        assert stops == ["stopped"]
        with pytest.raises(anyio.ClosedResourceError):
            await view.wait_for_key(etcd_config.keyspace.prefix + b"stop/k", 1)


@pytest.mark.parametrize("own", [False, True], ids=["shared", "own"])
async def test_a_view_opened_while_etcd_is_paused_opens_once_it_answers(
    etcd_factory, etcd_namespace: str, own: bool
) -> None:
    """A first list that meets the request deadline (a paused member) is tried again.

    A caller of a shared view waits at most twice the request timeout, then is told etcd
    does not answer; the opening goes on, and a call after etcd answers gets the view. A
    view of its own (``open_own``) is waited for, is never shared, and closes when its
    ``keep`` returns.
    """
    from foundation_etcd._coord.views import SharedViews

    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, request_timeout=0.5)
    prefix = cfg.keyspace.key("paused-view", "")
    with anyio.fail_after(30):
        async with open_transport(cfg) as t, anyio.create_task_group() as tg:
            await t.put(prefix + b"k", b"v")
            views = SharedViews(t, tg)
            release = anyio.Event()

            async def keep(view: WatchedView) -> None:
                await release.wait()

            server.pause()  # holds the connection open, answers nothing
            opened = anyio.Event()
            got: list[WatchedView] = []

            async def open_it() -> None:
                got.append(await (views.open_own(prefix, keep) if own else views(prefix)))
                opened.set()

            if not own:  # bounded: twice the request timeout, then a clear error
                for _ in range(2):  # a second caller waits for the same opening
                    t0 = anyio.current_time()
                    with pytest.raises(EtcdUnavailableError, match="etcd does not answer"):
                        await views(prefix)
                    assert 0.9 < anyio.current_time() - t0 < 1.5
                assert prefix not in views.opened()
                server.resume()
                while True:  # the opening went on: once etcd answers, a call gets the view
                    try:
                        got.append(await views(prefix))
                        break
                    except EtcdUnavailableError:
                        continue
                assert got[0].get(prefix + b"k") is not None
                assert views.opened() == {prefix: got[0]} and await views(prefix) is got[0]
                tg.cancel_scope.cancel()
                return
            tg.start_soon(open_it)
            with anyio.move_on_after(1.5):  # three request deadlines: still not opened
                await opened.wait()
            assert not opened.is_set()
            server.resume()
            await opened.wait()
            assert got[0].get(prefix + b"k") is not None
            if own:
                assert prefix not in views.opened()  # not shared
                assert (await views(prefix)) is not got[0]
                release.set()  # keep returns: the view closes
                with pytest.raises(anyio.ClosedResourceError):
                    await got[0].wait_for_key(prefix + b"k", 10**9)
            tg.cancel_scope.cancel()
