"""Elections and locks shared with etcd's own clients: ``etcdctl elect`` and ``etcdctl lock``.

etcd's Go ``concurrency`` package (behind ``etcdctl``) queues candidates as
``{prefix}/{lease id in hex}`` and makes the lowest create revision the owner: the
library's layout and rule. So an ``etcdctl elect`` on the library's election prefix is a
candidate like any other: the library sees it lead (``Election.leader``,
``Cluster.elections``, ``foundation-etcd leaders``) and its own candidate waits behind it;
and ``etcdctl lock`` on a library lock's prefix waits until the library releases.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from foundation_etcd import Config, connect
from foundation_etcd.testing import find_etcd_binary, wait_until

pytestmark = pytest.mark.etcd


def _etcdctl(endpoints: list[str], *args: str) -> subprocess.Popen[str]:
    etcdctl = Path(find_etcd_binary()).with_name("etcdctl")
    if not etcdctl.is_file():
        pytest.skip(f"no etcdctl next to {find_etcd_binary()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    return subprocess.Popen(
        [str(etcdctl), f"--endpoints={','.join(endpoints)}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _stop(p: subprocess.Popen[str]) -> tuple[str, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)  # etcdctl resigns / unlocks, then exits
    out, err = p.communicate(timeout=20)
    return out, err


async def test_etcdctl_elect_leads_and_the_library_waits_behind_it(
    etcd_endpoints: list[str], etcd_config: Config
) -> None:
    async with connect(etcd_config, node_id="interop") as c:
        prefix = c.keyspace.election_prefix("jobs").rstrip(b"/").decode()
        leader = _etcdctl(etcd_endpoints, "elect", prefix, "from-etcdctl")
        try:
            with anyio.fail_after(20):
                election = c.election("jobs")

                async def etcdctl_leads() -> bool:
                    owner = await election.leader()
                    return owner is not None and owner.value == b"from-etcdctl"

                await wait_until(etcdctl_leads)
                (summary,) = [e for e in await c.elections() if e.name == "jobs"]
                assert summary.owner.value == b"from-etcdctl" and summary.waiting == 0
                won = anyio.Event()

                async def campaign() -> None:
                    async with election.campaign(value=b"library"):
                        won.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(campaign)

                    async def queued() -> bool:
                        summaries = {e.name: e for e in await c.elections()}
                        return summaries["jobs"].waiting == 1

                    await wait_until(queued)
                    assert not won.is_set()  # behind etcdctl's candidate
                    await anyio.to_thread.run_sync(_stop, leader)
                    await won.wait()  # etcdctl resigned: the library leads
        finally:
            await anyio.to_thread.run_sync(_stop, leader)


async def test_etcdctl_lock_waits_until_the_library_releases(
    etcd_endpoints: list[str], etcd_config: Config
) -> None:
    async with connect(etcd_config, node_id="interop-lock") as c:
        prefix = c.keyspace.lock_prefix("db").rstrip(b"/").decode()
        with anyio.fail_after(20):
            async with c.lock("db").acquire(value=b"library"):
                waiter = _etcdctl(etcd_endpoints, "lock", prefix, "echo", "etcdctl-got-it")
                try:

                    async def queued() -> bool:
                        return [(x.name, x.waiting) for x in await c.locks()] == [("db", 1)]

                    await wait_until(queued)
                    assert waiter.poll() is None  # still waiting for the library's lock
                finally:
                    if waiter.poll() is not None:
                        _stop(waiter)
            out, err = await anyio.to_thread.run_sync(lambda: waiter.communicate(timeout=15))
        assert waiter.returncode == 0, err
        assert "etcdctl-got-it" in out
        assert await c.locks() == []  # etcdctl unlocked after its command
