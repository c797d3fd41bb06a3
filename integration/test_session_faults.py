import signal

import anyio
import pytest

from foundation_etcd import ChangeKind, Config, open_session
from foundation_etcd.lowlevel import open_transport, open_view
from foundation_etcd.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_frozen_process_loses_its_keys(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker
) -> None:
    """SIGSTOP past the TTL: the other process sees the key go; SIGCONT: it steps down, renews."""
    key = etcd_config.keyspace.key("frozen")
    w = spawn_worker(
        "integration.workers.holder",
        ",".join(etcd_endpoints),
        etcd_config.namespace,
        key.decode(),
        "2",
    )
    ready = await w.next_event("ready")
    async with open_transport(etcd_config) as t, open_view(t, etcd_config.keyspace.prefix) as v:
        assert v.get(key) is not None and v.get(key).lease == ready["lease"]
        removed = anyio.Event()
        v.on_change(lambda cs: any(c.kind is ChangeKind.REMOVED for c in cs) and removed.set())
        w.signal(signal.SIGSTOP)
        stopped_at = anyio.current_time()
        with anyio.fail_after(2 + 3):
            await removed.wait()
        took = anyio.current_time() - stopped_at
        assert 1.0 < took < 2 + 1.5, took
        w.signal(signal.SIGCONT)
        lost = await w.next_event("lost")
        assert lost["lease"] == ready["lease"]
        renewed = await w.next_event("renewed")
        assert renewed["generation"] == 2 and renewed["lease"] != ready["lease"]
        with anyio.fail_after(5):
            await wait_until(
                lambda: v.get(key) is not None and v.get(key).lease == renewed["lease"]
            )


async def test_session_survives_member_loss(etcd_cluster, etcd_namespace: str) -> None:
    """Kill each member in turn, the raft leader first: the lease is never lost."""
    cfg = Config(endpoints=tuple(etcd_cluster.endpoints), namespace=etcd_namespace, ttl=5.0)
    async with open_transport(cfg) as t, open_session(t) as s:
        first = s.lease
        key = cfg.keyspace.key("k")
        await t.put(key, b"v", lease=first.id)
        leader = etcd_cluster.leader_index()
        order = [leader] + [i for i in range(3) if i != leader]
        for i in order:
            etcd_cluster.kill(i)
            await anyio.sleep(2 * s.config.safe_keepalive_interval + 0.5)
            assert not first.lost, first.lost_reason
            await anyio.to_thread.run_sync(etcd_cluster.restart, i)
        assert s.lease is first and s.statistics().leases_lost == 0
        kv = await t.get(key)
        assert kv is not None and kv.lease == first.id
