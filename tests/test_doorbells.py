import anyio
import pytest

from foundation_etcd import Config
from foundation_etcd._coord.doorbells import Bell, Doorbells
from foundation_etcd._core.errors import AuthError, EtcdUnavailableError
from foundation_etcd.lowlevel import (
    EventType,
    KeyValue,
    Transport,
    WatchEvent,
    WatchResponse,
    open_transport,
    prefix_end,
)
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


async def collect(bell: Bell, n: int) -> list[WatchEvent]:
    """Wait for ``n`` events; fail on a missed wake-up."""
    got: list[WatchEvent] = []
    while len(got) < n:
        events = await bell.wait()
        assert not bell.missed, "unexpected missed wake-up"
        got.extend(events)
    return got


async def collect_until(bell: Bell, revision: int) -> list[WatchEvent]:
    """Gather events until one at ``revision`` or later; fail on a missed wake-up."""
    got: list[WatchEvent] = []
    while not got or got[-1].revision < revision:
        events = await bell.wait()
        assert not bell.missed, "unexpected missed wake-up"
        got.extend(events)
    return got


@pytest.mark.once
async def test_thousand_bells_on_one_stream(etcd_config: Config) -> None:
    n = 1000
    inbox = etcd_config.keyspace.key("inbox/")
    async with open_transport(etcd_config) as t, Doorbells.open(t) as bells:
        rev = await t.revision()
        # inbox/1/ and inbox/10/ share a prefix but not a range
        mine = [inbox + f"{i}/".encode() for i in range(n)]
        ring = [bells.watch(p, prefix_end(p), rev) for p in mine]
        assert len(bells) == n

        async def send(lo: int) -> None:
            for i in range(lo, n, 50):
                await t.put(mine[i] + b"m1", b"x")
                await t.put(mine[i] + b"m2", b"y")

        got: dict[int, list[WatchEvent]] = {}

        async def receive(i: int) -> None:
            got[i] = await collect(ring[i], 2)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(receive, i)
                for lo in range(50):
                    tg.start_soon(send, lo)
        for i in range(n):
            assert [e.kv.key for e in got[i]] == [mine[i] + b"m1", mine[i] + b"m2"]
            assert got[i][0].revision < got[i][1].revision
            # at least its last event: a progress notification (every 1 s here) moves it on
            assert ring[i].revision >= got[i][1].revision
        assert bells.reconnects == 0 and bells.connected
        # nothing else arrived: one more put to each of two inboxes reaches only those
        r = (await t.put(mine[7] + b"m3", b"z")).revision
        with anyio.fail_after(10):
            assert [e.revision for e in await ring[7].wait()] == [r]
        assert ring[70]._events == [] and ring[700]._events == []


async def test_order_no_duplicates_across_cuts(etcd_config: Config, fault_proxy_factory) -> None:
    proxy = fault_proxy_factory(etcd_config.endpoints[0])
    prefix = etcd_config.keyspace.key("ord/")
    async with (
        open_transport(etcd_config) as t,
        open_transport(etcd_config.with_options(endpoints=(proxy.endpoint,))) as tp,
        Doorbells.open(tp, silence=1.0) as bells,
    ):
        bell = bells.watch(prefix, prefix_end(prefix), await t.revision())
        written: list[int] = []
        got: list[WatchEvent] = []
        with anyio.fail_after(60):
            for round_ in range(3):
                for i in range(30):
                    key = prefix + f"k{i % 7}".encode()
                    if i % 5 == 4:
                        deleted = await t.delete(key)
                        if deleted.deleted:  # deleting an absent key writes nothing
                            written.append(deleted.revision)
                    else:
                        written.append((await t.put(key, f"{round_}.{i}".encode())).revision)
                    if i == 10:
                        got.extend(await bell.wait())  # some arrive before the cut
                        proxy.drop()  # the stream breaks mid-way
                    if i == 20:
                        proxy.pass_()
                got.extend(await collect_until(bell, written[-1]))
        revs = [e.revision for e in got]
        assert revs == sorted(set(revs)), "out of order or duplicated"
        assert revs == written
        assert bells.reconnects >= 3
        assert bell.revision == written[-1]


async def test_no_delete_filter(etcd_config: Config) -> None:
    key = etcd_config.keyspace.key("nd")
    async with open_transport(etcd_config) as t, Doorbells.open(t) as bells:
        rev = await t.revision()
        quiet = bells.watch(key, None, rev, no_delete=True)
        every = bells.watch(key, None, rev)
        await t.put(key, b"1")
        await t.delete(key)
        last = (await t.put(key, b"2")).revision
        with anyio.fail_after(10):
            all_events = await collect_until(every, last)
            puts = await collect_until(quiet, last)
        assert [e.type for e in all_events] == [EventType.PUT, EventType.DELETE, EventType.PUT]
        assert [e.type for e in puts] == [EventType.PUT, EventType.PUT]
        assert [e.revision for e in puts] == [all_events[0].revision, last]


async def test_close_stops_delivery(etcd_config: Config) -> None:
    key = etcd_config.keyspace.key("cl")
    async with open_transport(etcd_config) as t, Doorbells.open(t) as bells:
        rev = await t.revision()
        early = bells.watch(key, None, rev)
        early.close()  # before its create was even sent
        closing = bells.watch(key, None, rev)
        staying = bells.watch(key, None, rev)
        first = (await t.put(key, b"1")).revision
        with anyio.fail_after(10):
            assert [e.revision for e in await closing.wait()] == [first]
            assert [e.revision for e in await staying.wait()] == [first]
        closing.close()
        closing.close()  # idempotent
        assert len(bells) == 1
        second = (await t.put(key, b"2")).revision
        with anyio.fail_after(10):
            assert [e.revision for e in await staying.wait()] == [second]
        for bell in (early, closing):
            assert bell.closed and bell._events == []
            with pytest.raises(anyio.ClosedResourceError):
                await bell.wait()
    # the doorbells' end closes the rest
    with pytest.raises(anyio.ClosedResourceError):
        await staying.wait()
    with pytest.raises(anyio.ClosedResourceError):
        bells.watch(key, None, 0)


async def test_waiter_woken_when_doorbells_end(etcd_config: Config) -> None:
    async with open_transport(etcd_config) as t:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, Doorbells.open(t) as bells:
                bell = bells.watch(etcd_config.keyspace.key("end"), None, await t.revision())
                outcome: list[str] = []

                async def waiter() -> None:
                    try:
                        await bell.wait()
                    except anyio.ClosedResourceError:
                        outcome.append("closed")

                tg.start_soon(waiter)
                await wait_until(lambda: bells.connected)
        assert outcome == ["closed"]


async def test_own_progress_advances_revision(etcd_config: Config) -> None:
    # the plugin's etcd sends progress notifications to idle watches every second
    async with open_transport(etcd_config) as t, Doorbells.open(t) as bells:
        bell = bells.watch(etcd_config.keyspace.key("idle"), None, await t.revision())
        elsewhere = (await t.put(etcd_config.keyspace.key("other"), b"1")).revision
        with anyio.fail_after(10):
            await wait_until(lambda: bell.revision >= elsewhere)
        assert bell._events == [] and not bell._rung


async def test_compacted_start_rings_missed(etcd_factory, etcd_namespace: str) -> None:
    server = etcd_factory()  # compaction is global: a private server
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    key = cfg.keyspace.key("k")
    async with open_transport(cfg) as t, Doorbells.open(t) as bells:
        before = await t.revision()
        await t.put(key, b"1")
        compacted = (await t.put(key, b"2")).revision
        await t.compact(compacted)
        ok = bells.watch(key, None, compacted - 1)  # its start is still there
        gone = bells.watch(key, None, before)  # its start was compacted away
        with anyio.fail_after(10):
            assert await gone.wait() == [] and gone.missed
            assert gone.revision >= compacted
            assert [e.revision for e in await collect(ok, 1)] == [compacted]
            after = (await t.put(key, b"3")).revision
            assert [e.revision for e in await gone.wait()] == [after]
            assert not gone.missed
            assert [e.revision for e in await ok.wait()] == [after]


async def test_compaction_during_cut_rings_missed(
    etcd_factory, etcd_namespace: str, fault_proxy_factory
) -> None:
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    proxy = fault_proxy_factory(server.endpoint)
    key = cfg.keyspace.key("k")
    async with (
        open_transport(cfg) as t,
        open_transport(cfg.with_options(endpoints=(proxy.endpoint,))) as tp,
        Doorbells.open(tp, silence=1.0) as bells,
    ):
        bell = bells.watch(key, None, await t.revision())
        kept = bells.watch(cfg.keyspace.key("untouched"), None, await t.revision())
        first = (await t.put(key, b"1")).revision
        with anyio.fail_after(20):
            assert [e.revision for e in await bell.wait()] == [first]
            proxy.drop()
            await wait_until(lambda: not bells.connected)
            await t.put(key, b"2")
            rev = (await t.put(key, b"3")).revision
            await t.compact(rev)
            proxy.pass_()
            assert await bell.wait() == [] and bell.missed
            assert bell.revision >= rev
            # an idle bell behind the compaction cannot prove it missed nothing: rung too
            assert await kept.wait() == [] and kept.missed
            later = (await t.put(key, b"4")).revision
            assert [e.revision for e in await bell.wait()] == [later]
            other = (await t.put(kept.key, b"x")).revision
            assert [e.revision for e in await kept.wait()] == [other]
            assert not bell.missed and not kept.missed


async def test_restart_delivers_changes_made_meanwhile(
    etcd_factory, etcd_namespace: str, fault_proxy_factory
) -> None:
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    proxy = fault_proxy_factory(server.endpoint)
    prefix = cfg.keyspace.key("r/")
    async with (
        open_transport(cfg) as t,
        open_transport(cfg.with_options(endpoints=(proxy.endpoint,))) as tp,
        Doorbells.open(tp, silence=1.0) as bells,
    ):
        rev = await t.revision()
        ring = [bells.watch(prefix + bytes([65 + i]), None, rev) for i in range(20)]
        with anyio.fail_after(30):
            before = [(await t.put(b.key, b"1")).revision for b in ring]
            for b, r in zip(ring, before, strict=True):
                assert [e.revision for e in await b.wait()] == [r]
            # the member dies and comes back
            await anyio.to_thread.run_sync(server.restart)
            await wait_until(lambda: bells.reconnects >= 1)
            # the stream's connection is cut while changes are made
            proxy.drop()
            meanwhile = [(await t.put(b.key, b"2")).revision for b in ring]
            proxy.pass_()
            for b, r in zip(ring, meanwhile, strict=True):
                assert [e.revision for e in await collect(b, 1)] == [r]
        assert bells.reconnects >= 2
        assert all(b._events == [] for b in ring)


async def test_blackholed_stream_is_replaced(etcd_config: Config, fault_proxy_factory) -> None:
    proxy = fault_proxy_factory(etcd_config.endpoints[0])
    key = etcd_config.keyspace.key("bh")
    async with (
        open_transport(etcd_config) as t,
        open_transport(etcd_config.with_options(endpoints=(proxy.endpoint,))) as tp,
        Doorbells.open(tp, silence=0.3) as bells,
    ):
        bell = bells.watch(key, None, await t.revision())
        with anyio.fail_after(30):
            await wait_until(lambda: bells.connected)
            proxy.blackhole()
            # well before gRPC's own keepalive (5 s + 3 s) notices
            with anyio.fail_after(2.5):
                await wait_until(lambda: bells.silences >= 1)
            meanwhile = (await t.put(key, b"1")).revision
            proxy.pass_()
            assert [e.revision for e in await collect(bell, 1)] == [meanwhile]
        assert not bell.missed


@pytest.mark.fault
async def test_paused_member_triggers_the_silence_path(etcd_factory, etcd_namespace: str) -> None:
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    key = cfg.keyspace.key("p")
    async with open_transport(cfg) as t, Doorbells.open(t, silence=0.3) as bells:
        bell = bells.watch(key, None, await t.revision())
        first = (await t.put(key, b"1")).revision
        with anyio.fail_after(30):
            assert [e.revision for e in await bell.wait()] == [first]
            server.pause()
            try:
                with anyio.fail_after(2.5):
                    await wait_until(lambda: bells.silences >= 1)
            finally:
                server.resume()
            later = (await t_put_retrying(t, key)).revision
            assert [e.revision for e in await collect(bell, 1)] == [later]


async def t_put_retrying(t: Transport, key: bytes):
    """Put once etcd answers again (the resumed member may take a moment)."""
    while True:
        try:
            return await t.put(key, b"2")
        except EtcdUnavailableError:
            await anyio.sleep(0.1)


# --- branches real etcd 3.5.1 does not produce on demand, with a scripted stream ------------


class ScriptedStream:
    """A stand-in for :class:`WatchStream`: records writes, reads scripted responses."""

    def __init__(self) -> None:
        self.writes: list[tuple] = []
        self.feed, self._responses = anyio.create_memory_object_stream[WatchResponse](100)
        self.wrote = anyio.Event()

    async def create(self, key, range_end, start_revision, *, watch_id=0, no_delete=False):
        self.writes.append(("create", watch_id, start_revision))
        self.wrote.set()

    async def cancel(self, watch_id):
        self.writes.append(("cancel", watch_id))
        self.wrote.set()

    async def request_progress(self):
        self.writes.append(("progress",))
        self.wrote.set()

    async def read(self) -> WatchResponse:
        try:
            return await self._responses.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise EtcdUnavailableError("scripted stream closed") from None

    def close(self) -> None:
        self.feed.close()
        self._responses.close()

    async def next_write(self) -> tuple:
        while not self.writes:
            self.wrote = anyio.Event()
            await self.wrote.wait()
        return self.writes.pop(0)


class ScriptedTransport:
    def __init__(self, version: str) -> None:
        self.server_version = version
        self.config = Config()
        self.streams: list[ScriptedStream] = []

    def open_watch(self) -> ScriptedStream:
        self.streams.append(ScriptedStream())
        return self.streams[-1]


def created(watch_id: int, revision: int) -> WatchResponse:
    return WatchResponse(watch_id, revision, [], created=True)


@pytest.mark.parametrize(("version", "trusted"), [("3.5.1", False), ("3.5.13", True)])
async def test_stream_progress_trusted_only_on_fixed_etcd(version: str, trusted: bool) -> None:
    t = ScriptedTransport(version)
    with anyio.fail_after(5):
        async with Doorbells.open(t, silence=0.3) as bells:  # type: ignore[arg-type]
            a = bells.watch(b"a", None, 5)
            await wait_until(lambda: bool(t.streams))
            s = t.streams[0]
            assert await s.next_write() == ("create", 1, 6)
            await s.feed.send(created(1, 9))
            assert await s.next_write() == ("progress",)  # the stream went quiet
            b = bells.watch(b"b", None, 5)  # created after the request: not covered
            assert await s.next_write() == ("create", 2, 6)
            await s.feed.send(created(2, 9))
            await s.feed.send(WatchResponse(-1, 20, []))
            # the reader goes in order: once this event is out, the answer was handled
            kv = KeyValue(b"b", b"v", 8, 8, 1, 0)
            assert b.revision == 5
            await s.feed.send(WatchResponse(2, 8, [WatchEvent(EventType.PUT, kv)]))
            assert [e.revision for e in await b.wait()] == [8]
            assert a.revision == (20 if trusted else 5)
            assert b.revision == 8


async def test_unexpected_cancel_recreates_without_ringing() -> None:
    t = ScriptedTransport("3.5.1")
    with anyio.fail_after(5):
        async with Doorbells.open(t) as bells:  # type: ignore[arg-type]
            bell = bells.watch(b"k", None, 5)
            await wait_until(lambda: bool(t.streams))
            s = t.streams[0]
            assert await s.next_write() == ("create", 1, 6)
            await s.feed.send(created(1, 9))
            kv = KeyValue(b"k", b"v", 7, 7, 1, 0)
            await s.feed.send(WatchResponse(1, 7, [WatchEvent(EventType.PUT, kv)]))
            assert [e.revision for e in await bell.wait()] == [7]
            await s.feed.send(WatchResponse(1, 9, [], canceled=True, cancel_reason="odd"))
            assert await s.next_write() == ("create", 2, 8)  # resumes after what it had
            await s.feed.send(created(2, 9))
            # a re-delivered event is dropped, a new one is not
            kv8 = KeyValue(b"k", b"w", 7, 8, 2, 0)
            events = [WatchEvent(EventType.PUT, kv), WatchEvent(EventType.PUT, kv8)]
            await s.feed.send(WatchResponse(2, 8, events))
            assert [e.revision for e in await bell.wait()] == [8]
            assert not bell.missed and len(t.streams) == 1
            bell.close()
            assert await s.next_write() == ("cancel", 2)


async def test_refused_create_fails_that_bell_alone() -> None:
    t = ScriptedTransport("3.5.1")
    with anyio.fail_after(5):
        async with Doorbells.open(t) as bells:  # type: ignore[arg-type]
            refused = bells.watch(b"secret", None, 5)
            fine = bells.watch(b"open", None, 5)
            await wait_until(lambda: bool(t.streams))
            s = t.streams[0]
            assert [await s.next_write(), await s.next_write()] == [
                ("create", 1, 6),
                ("create", 2, 6),
            ]
            reason = "etcdserver: permission denied"
            await s.feed.send(WatchResponse(-1, 9, [], True, True, 0, reason))  # etcd: id -1
            await s.feed.send(created(2, 9))
            with pytest.raises(AuthError):
                await refused.wait()
            await wait_until(lambda: bells.connected)
            assert not fine.closed and len(bells) == 1
