"""A keepalive answer of "gone" from one member is confirmed by another before it counts.

A member that has just resumed from a pause may not know a lease granted while it was
frozen and answers its keepalive with TTL 0, though the lease lives. Here two independent
etcd servers play the two members: the lease exists on one of them only, so the other
answers "gone" for it every time it is asked, for real. The session is made to ask it by
pausing (SIGSTOP) the member that knows the lease, for less than the retry budget.
"""

from __future__ import annotations

import logging

import anyio
import pytest

from foundation_etcd import Config, LeaseNotFoundError, open_session
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import EtcdServer, wait_until

pytestmark = [pytest.mark.etcd, pytest.mark.fault]


async def knower_of(lease_id: int, servers: list[EtcdServer], namespace: str) -> int:
    """The index of the server that knows ``lease_id``."""
    found = []
    for i, server in enumerate(servers):
        async with open_transport(Config(endpoints=(server.endpoint,), namespace=namespace)) as t:
            if (await t.lease_time_to_live(lease_id)).ttl > 0:
                found.append(i)
    assert len(found) == 1, found
    return found[0]


async def test_one_member_saying_gone_does_not_end_the_lease(
    etcd_factory, etcd_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    servers = [etcd_factory(), etcd_factory()]
    cfg = Config(endpoints=tuple(s.endpoint for s in servers), namespace=etcd_namespace, ttl=2)
    assert cfg.retry_budget == pytest.approx(1.0)
    caplog.set_level(logging.DEBUG, "foundation_etcd.session")
    async with open_transport(cfg) as t, open_session(t) as s:
        lease = s.lease
        knower = servers[await knower_of(lease.id, servers, etcd_namespace)]
        # steady state first: a few renewals, so the session's stream is on the knower
        with anyio.fail_after(5):
            await wait_until(lambda: s.statistics().keepalives >= 3)
        caplog.clear()
        for _ in range(5):
            knower.pause()  # its keepalive hangs; the session asks the other server
            try:
                with anyio.fail_after(5):
                    await wait_until(lambda: "is gone; asking another" in caplog.text)
                await anyio.sleep(0.2)  # and a few more hedges while it stays paused
            finally:
                knower.resume()
            caplog.clear()
            assert not lease.lost, lease.lost_reason
            # the knower answers again: renewed, well before the safe deadline
            with anyio.fail_after(2):
                await wait_until(lambda: lease.remaining() > cfg.ttl - cfg.safe_step_down - 0.5)
        assert not lease.lost and s.lease is lease
        assert s.statistics().leases_lost == 0
    # not revoked while it lived: the close revoked it (on whichever server it hit first,
    # so ask the knower)
    async with open_transport(Config(endpoints=(knower.endpoint,), namespace="x")) as k:
        assert (await k.lease_time_to_live(lease.id)).ttl <= 2


async def test_two_members_saying_gone_end_the_lease_at_once(
    etcd_factory, etcd_namespace: str
) -> None:
    servers = [etcd_factory(), etcd_factory()]
    cfg = Config(endpoints=tuple(s.endpoint for s in servers), namespace=etcd_namespace, ttl=5)
    async with open_transport(cfg) as t, open_session(t) as s:
        lease = s.lease
        knower = servers[await knower_of(lease.id, servers, etcd_namespace)]
        cut = Config(endpoints=(knower.endpoint,), namespace=etcd_namespace)
        async with open_transport(cut) as k:
            await k.lease_revoke(lease.id)
        revoked = anyio.current_time()
        with anyio.fail_after(cfg.safe_keepalive_interval + 1.5):
            reason = await lease.wait_lost()
        # both servers now say "gone": lost at the next keepalive, not at the safe deadline
        assert "confirmed" in reason, reason
        assert anyio.current_time() - revoked < cfg.safe_keepalive_interval + 1.0
        with anyio.fail_after(10):
            renewed = await s.wait_lease()
        assert renewed.generation == 2
        with pytest.raises(LeaseNotFoundError):
            async with open_transport(cut) as k:
                await k.lease_revoke(lease.id)
