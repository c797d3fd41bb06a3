import warnings

import anyio
import grpc
import pytest

from foundation_etcd import (
    AmbiguousResultError,
    CompactedError,
    Config,
    EtcdUnavailableError,
    LeaseNotFoundError,
    RequestTooLargeError,
    TooManyOperationsError,
    UnsafeEtcdVersionWarning,
)
from foundation_etcd._core.known_servers import is_known, mark_known, unmark_known
from foundation_etcd.lowlevel import MAX_REQUEST_BYTES, Compare, Op, Transport, open_transport

pytestmark = pytest.mark.etcd


@pytest.fixture
async def t(etcd_config: Config):
    async with open_transport(etcd_config) as transport:
        yield transport


@pytest.fixture
def p(etcd_config: Config) -> bytes:
    return etcd_config.keyspace.prefix


async def test_put_get_delete(t: Transport, p: bytes) -> None:
    r = await t.put(p + b"a", b"1")
    kv = await t.get(p + b"a")
    assert kv is not None and kv.value == b"1" and kv.create_revision == r.revision
    r2 = await t.put(p + b"a", "2", prev_kv=True)
    assert r2.prev_kv is not None and r2.prev_kv.value == b"1"
    d = await t.delete(p + b"a", prev_kv=True)
    assert d.deleted == 1 and d.prev_kvs[0].value == b"2"
    assert await t.get(p + b"a") is None


async def test_txn_create_if_absent_and_range_compare(t: Transport, p: bytes) -> None:
    key = p + b"k"
    absent = [Compare.create_revision(key) == 0]
    first = await t.txn(absent, [Op.put(key, b"x")], [Op.get(key)])
    second = await t.txn(absent, [Op.put(key, b"y")], [Op.get(key)])
    assert first.succeeded and not second.succeeded
    assert second.range(0).kvs[0].value == b"x"
    # a range compare: every key under the prefix was created before `first`
    cmp = Compare.create_revision(p, range_end=Op.get(p, prefix=True).range_end) < (
        first.revision + 1
    )
    assert (await t.txn([cmp], [Op.get(p, prefix=True, count_only=True)])).succeeded
    await t.put(p + b"later", b"1")
    assert not (await t.txn([cmp], [])).succeeded
    nested = await t.txn([], [Op.txn([Compare.value(key) == b"x"], [Op.delete(key)])])
    assert nested.succeeded and await t.get(key) is None


async def test_get_prefix_pages_one_snapshot(t: Transport, p: bytes) -> None:
    for i in range(35):
        await t.put(p + f"pg/{i:03}".encode(), str(i))
    res = await t.get_prefix(p + b"pg/", page=10)
    assert [kv.value for kv in res.kvs] == [str(i).encode() for i in range(35)]
    assert res.count == 35


async def test_oversized_value_refused_before_sending(t: Transport, p: bytes) -> None:
    big = b"x" * (10 * 1024 * 1024)
    with pytest.raises(RequestTooLargeError) as info:
        await t.put(p + b"big", big)
    assert info.value.size > MAX_REQUEST_BYTES and isinstance(info.value, ValueError)
    with pytest.raises(RequestTooLargeError):
        await t.txn([], [Op.put(p + b"small", b"1"), Op.put(p + b"big", big)])
    assert await t.get(p + b"big") is None
    assert await t.get(p + b"small") is None


async def test_too_many_operations_refused_before_sending(t: Transport, p: bytes) -> None:
    ops = [Op.put(p + f"op/{i}".encode(), b"v") for i in range(200)]
    with pytest.raises(TooManyOperationsError, match="200 operations"):
        await t.txn([], ops)
    assert (await t.get_prefix(p + b"op/")).kvs == []
    ok = await t.txn([], ops[:128])
    assert ok.succeeded and len(ok.responses) == 128


async def test_unreachable_endpoint_clear_error() -> None:
    cfg = Config(endpoints=("127.0.0.1:1",), connect_timeout=1.0)
    with anyio.fail_after(10), pytest.raises(EtcdUnavailableError, match="cannot reach etcd"):
        await Transport.connect(cfg)


async def test_version_warning(etcd_config: Config) -> None:
    # A server the harness started is a known throwaway one: no warning for its pinned 3.5.1
    # (a user's suite with filterwarnings = ["error"] passes). Unmarked, the same server is
    # any other etcd 3.5.1, and warns.
    endpoints = etcd_config.endpoints
    harness = is_known(endpoints)
    if harness:
        with warnings.catch_warnings(record=True) as quiet:
            warnings.simplefilter("always")
            async with open_transport(etcd_config):
                pass
        assert not [w for w in quiet if issubclass(w.category, UnsafeEtcdVersionWarning)]
        for endpoint in endpoints:
            unmark_known(endpoint)
    try:
        with pytest.warns(UnsafeEtcdVersionWarning, match="3.5.13") as record:
            t = await Transport.connect(etcd_config)
        version = t.server_version
        await t.close()
        if version not in ("3.5.0", "3.5.1", "3.5.2"):
            assert not record.list
    finally:
        for endpoint in endpoints if harness else ():
            mark_known(endpoint)


async def test_leases(t: Transport, p: bytes) -> None:
    g = await t.lease_grant(5)
    assert g.ttl >= 5
    await t.put(p + b"l", b"1", lease=g.id)
    info = await t.lease_time_to_live(g.id, keys=True)
    assert 0 < info.ttl <= 5 and info.keys == [p + b"l"]
    assert g.id in await t.lease_ids()
    await t.lease_revoke(g.id)
    assert await t.get(p + b"l") is None
    assert (await t.lease_time_to_live(g.id)).ttl == -1
    with pytest.raises(LeaseNotFoundError) as info2:
        await t.lease_revoke(g.id)
    assert info2.value.lease_id == g.id
    ka = t.open_keepalive()
    try:
        assert await ka.keepalive(g.id) <= 0
    finally:
        ka.close()


async def test_compacted_revision(etcd_factory, etcd_namespace: str) -> None:
    # compaction is global: a private server, so other tests keep their history
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace)
    p = cfg.keyspace.prefix
    async with open_transport(cfg) as t:
        r1 = await t.put(p + b"c", b"1")
        r2 = await t.put(p + b"c", b"2")
        await t.compact(r2.revision)
        with pytest.raises(CompactedError):
            await t.range(Op.get(p + b"c", revision=r1.revision))


async def test_blackholed_write_is_ambiguous_read_is_unavailable(
    etcd_endpoints: list[str], fault_proxy_factory, etcd_namespace: str
) -> None:
    proxy = fault_proxy_factory(etcd_endpoints[0])
    cfg = Config(endpoints=(proxy.endpoint,), namespace=etcd_namespace, request_timeout=1.0)
    async with open_transport(cfg) as t:
        key = cfg.keyspace.key("amb")
        await t.put(key, b"before")
        proxy.blackhole()
        with anyio.fail_after(10):
            with pytest.raises(AmbiguousResultError) as info:
                await t.put(key, b"during")
            assert info.value.operation == "put"
            with pytest.raises(EtcdUnavailableError):
                await t.get(key)
        proxy.pass_()


async def test_watch_write_not_taken_gives_the_stream_up(
    etcd_endpoints: list[str], fault_proxy_factory, etcd_namespace: str
) -> None:
    """A write HTTP/2 flow control holds back must not hang the stream's tasks forever.

    Through a blackhole, the connection's send window (64 KiB) fills and is never opened
    again: from then on every write on every stream of the connection waits, the small
    progress request of a view's liveness check too.
    """
    proxy = fault_proxy_factory(etcd_endpoints[0])
    cfg = Config(endpoints=(proxy.endpoint,), namespace=etcd_namespace, request_timeout=1.0)
    async with open_transport(cfg) as t:
        quiet, filler = t.open_watch(), t.open_watch()
        try:
            for stream in (quiet, filler):
                await stream.create(b"/a", b"/b", 0)
                assert (await stream.read()).created
            proxy.blackhole()
            with anyio.fail_after(10):
                with pytest.raises(EtcdUnavailableError, match="not taken in 1s") as info:
                    for _ in range(100):  # 3 MB: far more than any window
                        await filler.create(b"/k" + b"x" * 30_000, None, 0)
                assert not isinstance(info.value, AmbiguousResultError)
                with pytest.raises(EtcdUnavailableError):
                    await filler.read()  # given up: closed
                # the other stream's small writes fill what is left of the window; the
                # caller's own, shorter deadline is then still a TimeoutError
                with pytest.raises(TimeoutError):
                    for _ in range(10_000):  # 180 kB
                        with anyio.fail_after(0.3):
                            await quiet.request_progress()
        finally:
            quiet.close()
            filler.close()
        proxy.pass_()


async def test_write_to_dead_server_is_not_applied(etcd_factory, etcd_namespace: str) -> None:
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, request_timeout=2.0)
    async with open_transport(cfg) as t:
        await t.put(cfg.keyspace.key("x"), b"1")
        server.kill()
        with anyio.fail_after(10):
            # the connection is gone: eventually refused before sending, never silently ok
            with pytest.raises((EtcdUnavailableError, AmbiguousResultError)):
                await t.put(cfg.keyspace.key("x"), b"2")
            with pytest.raises(EtcdUnavailableError) as info:
                await t.put(cfg.keyspace.key("x"), b"3")
            assert not isinstance(info.value, AmbiguousResultError)


async def test_write_refused_before_sending_is_retried_until_the_deadline(
    etcd_factory, etcd_namespace: str
) -> None:
    """A member back from a restart: the channel's backoff must not fail the next write."""
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, request_timeout=15.0)
    key = cfg.keyspace.key("back")
    async with open_transport(cfg) as t:
        first = await t.put(key, b"1")
        server.kill()
        with anyio.fail_after(30):
            # a put written before the channel has read the socket's close is ambiguous
            # ("Stream removed"), rightly: wait until the channel knows the member is gone
            ready = grpc.ChannelConnectivity.READY
            while t._channel.get_state() is ready:
                await t._channel.wait_for_state_change(ready)
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, server.start)
                # sent while the member is down or still starting: refused, then retried
                second = await t.put(key, b"2")
        got = await t.get(key)
        assert got is not None and got.value == b"2"
        # applied once: exactly one revision after the first put's
        assert got.version == 2 and second.revision == got.mod_revision > first.revision


async def test_caller_timeout_is_a_timeout_not_a_bare_cancel(
    etcd_endpoints: list[str], fault_proxy_factory, etcd_namespace: str
) -> None:
    """grpc raises its own CancelledError; a caller's fail_after must still see TimeoutError."""
    proxy = fault_proxy_factory(etcd_endpoints[0])
    cfg = Config(endpoints=(proxy.endpoint,), namespace=etcd_namespace, request_timeout=10.0)
    async with open_transport(cfg) as t:
        await t.get(b"x")
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                await t.get(b"x")
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                await t.put(b"x", b"1")
        stream = t.open_watch()
        try:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    await stream.read()
        finally:
            stream.close()
        proxy.pass_()
