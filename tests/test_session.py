import anyio
import anyio.lowlevel
import pytest

from foundation_etcd import (
    ChangeKind,
    Config,
    Lease,
    LeaseLostError,
    SessionClosedError,
    open_session,
)
from foundation_etcd.lowlevel import open_transport, open_view
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


async def test_session_keeps_keys_alive_for_five_ttls(etcd_config: Config) -> None:
    cfg = etcd_config.with_options(ttl=2.0)
    key = cfg.keyspace.key("alive")
    async with open_transport(cfg) as t, open_session(t) as s:
        await t.put(key, b"1", lease=s.lease.id)
        removed: list[int] = []
        async with open_view(t, cfg.keyspace.prefix) as view:
            view.on_change(
                lambda cs: removed.extend(c.revision for c in cs if c.kind is ChangeKind.REMOVED)
            )
            await anyio.sleep(5 * s.lease.ttl + 0.5)  # the point of the test is time passing
            assert removed == []
            assert (await t.get(key)) is not None
        stats = s.statistics()
        assert stats.generation == 1 and stats.leases_lost == 0
        assert stats.keepalives >= 5 * s.lease.ttl / cfg.safe_keepalive_interval - 1
        lease_id = s.lease.id
    async with open_transport(cfg) as t2:
        assert (await t2.lease_time_to_live(lease_id)).ttl == -1  # close revoked it
        assert await t2.get(key) is None


async def test_guard_and_closed_session(etcd_config: Config) -> None:
    async with open_transport(etcd_config) as t:
        async with open_session(t) as s:
            lease = await s.wait_lease()
            with lease.guard():
                lease.ensure_alive()
        with pytest.raises(SessionClosedError):
            _ = s.lease
        with pytest.raises(LeaseLostError, match="session closed"):
            lease.ensure_alive()


async def test_lost_when_etcd_says_expired_then_new_lease(etcd_config: Config) -> None:
    """Revoking the lease behind the session's back: lost at once, a new lease, hooks run."""
    key = etcd_config.keyspace.key("reg")
    async with open_transport(etcd_config) as t, open_session(t) as s:
        first = s.lease
        renewed: list[Lease] = []

        async def reregister(lease: Lease) -> None:
            await t.put(key, b"again", lease=lease.id)
            renewed.append(lease)

        s.on_renewed(reregister)
        await t.put(key, b"first", lease=first.id)
        cancelled = anyio.Event()

        async def bound_work() -> None:
            try:
                with first.guard():
                    await anyio.sleep_forever()
            except LeaseLostError:
                cancelled.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(bound_work)
            await anyio.lowlevel.checkpoint()
            await t.lease_revoke(first.id)
            with anyio.fail_after(etcd_config.ttl + 2):
                await cancelled.wait()
                second = await s.wait_lease()
                await wait_until(lambda: bool(renewed))
        assert second.id != first.id and second.generation == 2
        assert first.lost and "expired" in first.lost_reason
        kv = await t.get(key)
        assert kv is not None and kv.value == b"again" and kv.lease == second.id
        assert s.statistics().leases_lost == 1


async def test_cut_off_client_steps_down_before_etcd_expires(
    etcd_config: Config, etcd_endpoints: list[str], fault_proxy_factory
) -> None:
    """Blackholed: *lost* fires before etcd deletes the keys; healed: new lease, keys back."""
    proxy = fault_proxy_factory(etcd_endpoints[0])
    cfg = etcd_config.with_options(endpoints=(proxy.endpoint,), ttl=3.0, request_timeout=1.0)
    key = cfg.keyspace.key("member")
    async with (
        open_transport(etcd_config) as observer,
        open_view(observer, cfg.keyspace.prefix) as view,
    ):
        deleted_at: list[float] = []
        view.on_change(
            lambda cs: deleted_at.extend(
                anyio.current_time() for c in cs if c.kind is ChangeKind.REMOVED
            )
        )
        async with open_transport(cfg) as t, open_session(t) as s:

            async def reregister(lease: Lease) -> None:
                await t.put(key, b"me", lease=lease.id)

            s.on_renewed(reregister)
            first = s.lease
            await t.put(key, b"me", lease=first.id)
            proxy.blackhole()
            with anyio.fail_after(cfg.ttl + 5):
                await first.wait_lost()
                lost_at = anyio.current_time()
                await wait_until(lambda: bool(deleted_at))
            assert lost_at < deleted_at[0], "stepped down only after etcd expired the lease"
            proxy.pass_()
            with anyio.fail_after(30):
                second = await s.wait_lease()
                while True:
                    kv = view.get(key)
                    if kv is not None and kv.lease == second.id:
                        break
                    await anyio.sleep(0.02)
            assert second.generation == 2 and second.id != first.id
            assert (await observer.lease_time_to_live(first.id)).ttl == -1


async def test_body_errors_come_out_unwrapped(etcd_config: Config) -> None:
    class Boom(Exception):
        pass

    async with open_transport(etcd_config) as t:
        with pytest.raises(Boom):
            async with open_session(t):
                raise Boom
        with pytest.raises(Boom):
            async with open_view(t, etcd_config.keyspace.prefix):
                raise Boom
