"""Unary calls on grpc's channel core (``_transport/_direct.py``) against grpc's own stubs.

Every case runs both ways: the default (direct calls) and ``FOUNDATION_ETCD_GRPC_STUBS=1``
(grpc.aio's multicallables); the caller sees the same results and exception types. The
last cases check what a cancelled caller leaves: no request sent from a cancelled scope,
no lock or reservation body started in a scope cancelled while it was acquired.
"""

import time

import anyio
import grpc
import grpc.aio
import pytest

from foundation_etcd import (
    AmbiguousResultError,
    Config,
    EtcdUnavailableError,
    LeaseNotFoundError,
    Lock,
    Quotas,
    connect,
    open_session,
)
from foundation_etcd._coord.views import SharedViews
from foundation_etcd._coord.waits import wait_deleted
from foundation_etcd._transport._direct import Calls, DirectUnary
from foundation_etcd._transport._protos import make_stub, rpc
from foundation_etcd.lowlevel import Compare, Op, Transport, open_transport

pytestmark = pytest.mark.etcd


@pytest.fixture(params=["direct", "stubs"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "stubs":
        monkeypatch.setenv("FOUNDATION_ETCD_GRPC_STUBS", "1")
    else:
        monkeypatch.delenv("FOUNDATION_ETCD_GRPC_STUBS", raising=False)
    return str(request.param)


def _is_direct(t: Transport) -> bool:
    return isinstance(t._kv.Range, DirectUnary)


async def test_requests_and_errors_either_way(mode: str, etcd_config: Config) -> None:
    async with open_transport(etcd_config) as t:
        assert _is_direct(t) is (mode == "direct")
        key = etcd_config.keyspace.key("direct")
        put = await t.put(key, b"1")
        got = await t.get(key)
        assert got is not None and got.value == b"1" and got.mod_revision == put.revision
        res = await t.txn([Compare.value(key) == b"1"], [Op.put(key, b"2")], [Op.get(key)])
        assert res.succeeded and res.revision == put.revision + 1
        grant = await t.lease_grant(5)
        await t.lease_revoke(grant.id)
        with pytest.raises(LeaseNotFoundError) as info:  # a status other than OK, translated
            await t.lease_revoke(grant.id)
        assert info.value.lease_id == grant.id
        assert not t._calls.active


async def test_close_ends_calls_in_flight(mode: str, etcd_factory, etcd_namespace: str) -> None:
    """A read in flight at close ends at once as unavailable, a write as ambiguous."""
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, request_timeout=30.0)
    t = await Transport.connect(cfg)
    key = cfg.keyspace.key("closing")
    await t.put(key, b"1")
    outcomes: dict[str, BaseException] = {}

    async def run(name: str, call) -> None:
        try:
            await call()
        except BaseException as exc:  # recorded and checked below
            outcomes[name] = exc

    server.pause()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "read", lambda: t.get(key))
                tg.start_soon(run, "write", lambda: t.put(key, b"2"))
                await anyio.sleep(0.3)  # both sent, both waiting on the paused member
                assert len(t._calls.active) == (2 if mode == "direct" else 0)
                t0 = time.monotonic()
                await t.close()
            assert time.monotonic() - t0 < 2  # not the 30 s request timeout
    finally:
        server.resume()
    assert type(outcomes["read"]) is EtcdUnavailableError
    assert type(outcomes["write"]) is AmbiguousResultError
    assert not t._calls.active


async def test_cancelled_caller_cancels_its_call(
    mode: str, etcd_factory, etcd_namespace: str
) -> None:
    """A caller's deadline is a TimeoutError; its call is cancelled, the transport goes on."""
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, request_timeout=30.0)
    async with open_transport(cfg) as t:
        key = cfg.keyspace.key("cancel")
        await t.put(key, b"1")
        server.pause()
        try:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    await t.put(key, b"2")
            assert not t._calls.active
        finally:
            server.resume()
        with anyio.fail_after(10):
            got = await t.get(key)
        # the cancelled put may or may not have been applied; nothing else was written
        assert got is not None and got.value in (b"1", b"2")


async def test_request_deadline_either_way(mode: str, etcd_factory, etcd_namespace: str) -> None:
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, request_timeout=0.5)
    async with open_transport(cfg) as t:
        await t.get(b"x")
        server.pause()
        try:
            t0 = time.monotonic()
            with anyio.fail_after(10):
                with pytest.raises(EtcdUnavailableError) as info:
                    await t.get(b"x")
            assert 0.4 < time.monotonic() - t0 < 5
            assert info.value.code == "DEADLINE_EXCEEDED"
        finally:
            server.resume()


class _Counting(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        self.seen.append(client_call_details.method)
        return await continuation(client_call_details, request)


async def test_a_channel_with_interceptors_keeps_grpcs_stubs(etcd_endpoints: list[str]) -> None:
    """An instrumentation library's interceptor must see every call: no direct calls there."""
    counting = _Counting()
    channel = grpc.aio.insecure_channel(etcd_endpoints[0], interceptors=[counting])
    try:
        kv = make_stub(channel, "KV", Calls())
        assert not isinstance(kv.Range, DirectUnary)
        await kv.Range(rpc.RangeRequest(key=b"x"), timeout=5)
        assert counting.seen in (["/etcdserverpb.KV/Range"], [b"/etcdserverpb.KV/Range"])
        plain = grpc.aio.insecure_channel(etcd_endpoints[0])
        try:
            assert isinstance(make_stub(plain, "KV", Calls()).Range, DirectUnary)
        finally:
            await plain.close()
    finally:
        await channel.close()


async def test_a_cancelled_caller_sends_nothing(mode: str, etcd_config: Config) -> None:
    """A request made in a scope cancelled already (or past its deadline) is never sent."""
    async with open_transport(etcd_config) as t:
        key = etcd_config.keyspace.key("unsent")
        await t.put(key, b"0")
        for i in range(30):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await t.put(key, str(i + 1))
            with anyio.move_on_after(-1):
                await t.put(key, b"past the deadline")
        got = await t.get(key)
        assert got is not None and got.value == b"0" and got.version == 1


class _CancelsOnAnswer:
    """A transport that cancels ``scope`` as each transaction's answer comes back."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.scope: anyio.CancelScope | None = None

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._t, name)

    async def txn(self, compare, success=(), failure=()):  # type: ignore[no-untyped-def]
        res = await self._t.txn(compare, success, failure)
        if self.scope is not None:
            self.scope.cancel()  # the caller's deadline passes just as the answer arrives
        return res


async def test_a_lock_acquired_as_its_scope_is_cancelled_runs_no_body(
    mode: str, etcd_config: Config
) -> None:
    """The body never starts in a scope cancelled while it was acquired; the key is released."""
    async with open_transport(etcd_config) as t:
        wrapper = _CancelsOnAnswer(t)
        async with open_session(wrapper) as session:  # type: ignore[arg-type]
            entered = 0
            for _ in range(5):
                with anyio.CancelScope() as scope:
                    wrapper.scope = scope
                    async with Lock(session, "as-cancelled").acquire():
                        entered += 1
                wrapper.scope = None
                assert scope.cancelled_caught
            assert entered == 0
            prefix = etcd_config.keyspace.lock_prefix("as-cancelled")
            with anyio.fail_after(10):  # released (at once, or left and deleted in the background)
                for kv in (await t.get_prefix(prefix)).kvs:
                    await wait_deleted(t, kv.key, kv.mod_revision)
            async with Lock(session, "as-cancelled").acquire() as held:
                assert held.fencing_token > 0


async def test_a_reservation_admitted_as_its_scope_is_cancelled_runs_no_body(
    mode: str, etcd_config: Config
) -> None:
    """As for locks: admitted just as the scope is cancelled, the body never starts."""
    async with (
        open_transport(etcd_config) as t,
        connect(etcd_config, node_id="limits") as admin,
        anyio.create_task_group() as tg,
    ):
        await admin.quotas.set_limit("seats", 1)
        wrapper = _CancelsOnAnswer(t)
        async with open_session(wrapper) as session:  # type: ignore[arg-type]
            quotas = Quotas(session, etcd_config.keyspace, holder="me", views=SharedViews(t, tg))
            entered = 0
            for _ in range(5):
                with anyio.CancelScope() as scope:
                    wrapper.scope = scope
                    async with quotas.reserve({"seats": 1}):
                        entered += 1
                wrapper.scope = None
                assert scope.cancelled_caught
            assert entered == 0
            with anyio.fail_after(10):  # the seat is free again: reserved at once
                async with quotas.reserve_nowait({"seats": 1}):
                    pass
        tg.cancel_scope.cancel()
