"""etcd#14110: a read-only transaction cancelled while etcd 3.5.0-3.5.4 ranges crashes etcd.

The transport leaves such a read running on the server when its caller is cancelled. Each
test has a private server: the control case crashes its own.
"""

import random
import time

import anyio
import pytest

from foundation_etcd import Config
from foundation_etcd.lowlevel import Compare, Op, Transport, open_transport
from foundation_etcd.testing import EtcdServer, EtcdServerFactory

pytestmark = pytest.mark.etcd

KEYS = 20_000


async def _filled(server: EtcdServer) -> tuple[Config, float]:
    """Write KEYS keys; return the config and how long a range over all of them takes."""
    config = Config(endpoints=[server.endpoint])
    async with open_transport(config) as t:
        if not t._reads:
            pytest.skip(f"etcd {t.server_version} does not crash on a cancelled read")
        value = b"v" * 200
        for start in range(0, KEYS, 100):
            await t.txn([], [Op.put(b"/r/%06d" % i, value) for i in range(start, start + 100)])
        took = []
        for _ in range(3):
            began = time.perf_counter()
            res = await t.txn([], [Op.get(b"/r/", prefix=True, keys_only=True)])
            took.append(time.perf_counter() - began)
            assert res.range(0).count == KEYS
        return config, min(took)


async def _cancel_reads(t: Transport, took: float, attempts: int, server: EtcdServer) -> int:
    """Cancel ``attempts`` big reads part way; return how many ran before etcd crashed.

    Each is cancelled at a random point of the time a range of every key (keys only) takes.
    """
    reads = [
        lambda: t.txn([], [Op.get(b"/r/", prefix=True)]),
        lambda: t.txn(
            [Compare.version(b"/r/000001") > 0], [Op.txn([], [Op.get(b"/r/", prefix=True)])]
        ),
        lambda: t.txn([], [Op.get(b"/r/", prefix=True, keys_only=True), Op.get(b"/r/000002")]),
    ]
    cancelled = 0
    for n in range(attempts):
        with anyio.move_on_after(random.uniform(0.05, 0.6) * took) as scope:
            await reads[n % len(reads)]()
        cancelled += scope.cancelled_caught
        # a crash ends the process; a live etcd still ranging the abandoned reads may take
        # longer than a short health check to answer under load (that is no crash)
        if not server.running or not server.is_healthy(timeout=10):
            return n
    assert cancelled >= attempts // 2, f"only {cancelled} of {attempts} reads were cancelled"
    return attempts


async def test_cancelled_reads_leave_etcd_running(etcd_factory: EtcdServerFactory) -> None:
    server = etcd_factory()
    config, took = await _filled(server)
    async with open_transport(config) as t:
        with anyio.fail_after(60):
            assert await _cancel_reads(t, took, 12, server) == 12
            # the caller left at once; the read it abandoned runs on, its answer dropped
            with anyio.move_on_after(0.05 * took) as scope:
                await t.txn([], [Op.get(b"/r/", prefix=True)])
            assert scope.cancelled_caught and t._reads and t._reads._running
        # closing the transport waits for the abandoned reads instead of cancelling them
    assert t._reads is not None and not t._reads._running
    assert server.is_healthy(timeout=2), server.log_tail()
    assert "unexpected error during txn" not in server.log_tail(2000)
    async with open_transport(config) as t:
        assert (await t.txn([], [Op.get(b"/r/", prefix=True, count_only=True)])).range(
            0
        ).count == KEYS


async def test_control_without_the_guard_etcd_crashes(etcd_factory: EtcdServerFactory) -> None:
    """The same cancellations with the guard off crash this etcd: the test above is not vacuous."""
    server = etcd_factory()
    config, took = await _filled(server)
    async with open_transport(config) as t:
        t._reads = None
        with anyio.fail_after(60):
            crashed_after = await _cancel_reads(t, took, 30, server)
    assert crashed_after < 30, "etcd survived every cancelled read without the guard"
    proc = server._proc
    assert proc is not None
    assert await anyio.to_thread.run_sync(proc.wait, 10) != 0  # it panicked
    assert "unexpected error during txn" in server.log_tail(2000)


async def test_paused_server_caller_leaves_read_finishes(etcd_factory: EtcdServerFactory) -> None:
    """A read sent to a paused (SIGSTOP) etcd: its caller leaves on time; resumed, etcd answers."""
    server = etcd_factory()
    config, _ = await _filled(server)
    async with open_transport(config) as t:
        assert t._reads is not None
        server.pause()
        try:
            with anyio.fail_after(5):
                with anyio.move_on_after(0.3) as scope:
                    await t.txn([], [Op.get(b"/r/", prefix=True, keys_only=True)])
            assert scope.cancelled_caught and t._reads._running
        finally:
            server.resume()
        with anyio.fail_after(10):
            await t._reads.settle(10)
        assert not t._reads._running
    assert server.is_healthy(timeout=2), server.log_tail()
    assert "unexpected error during txn" not in server.log_tail(2000)
