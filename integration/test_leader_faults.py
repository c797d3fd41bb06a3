"""Sessions, locks and elections while the raft leader member hangs or is cut off.

A 3-member cluster with etcd's default raft timings (100 ms heartbeat, 1 s election
timeout) and clients at the library's default session timings with ``ttl = 5``. Six times
in a row, the member that is raft leader is

* **paused** (SIGSTOP) for 3 s: it keeps every connection open and answers nothing, while
  the other two elect a new leader within about 1-2 s; or
* **cut off** for 3 s: every client reaches the members through a fault proxy, and the
  leader's proxy blackholes (connections stay open, nothing is forwarded either way).

Meanwhile 6 sessions (2 processes x 3) hold keys, 4 processes take turns in a lock and 3
campaign for an election, both making fenced writes. Afterwards: **no session lost its
lease** (every process logs a loss at WARNING, and the session workers also report it),
and the whole history passes the fencing checkers of ``test_election_nemesis``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from foundation_etcd import Config
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import EtcdCluster, FaultProxy
from test_election_nemesis import (
    MARKS,
    Checked,
    Fleet,
    check_history,
    end_of_history,
    read_history,
    report,
    worker_views,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

TTL = 5.0
ROUNDS = 6
FAULT = 3.0  # seconds: 3 x etcd's election timeout


def session_losses(events: list[dict]) -> list[dict]:
    """Leases a process declared lost (the session logs each loss at WARNING)."""
    return [
        e
        for e in events
        if (e["event"] == "lost" and "session" in e)
        or (
            e["event"] == "log"
            and e["logger"] == "foundation_etcd.session"
            and " lost: " in e["message"]
        )
    ]


async def writes_after(fleet: Fleet, since: float, count: int = 1) -> None:
    """Wait until ``count`` fenced writes made after ``since`` were accepted."""
    seen = 0
    while seen < count:
        at = len(fleet.events)
        await fleet.wait_for(lambda e: e["event"] == "write-ok" and e["t"] > since, 30, at)
        seen = sum(1 for e in fleet.events if e["event"] == "write-ok" and e["t"] > since)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("fault", ["pause", "cut-off"])
async def test_hung_raft_leader_costs_no_lease(
    fault: str,
    etcd_cluster_factory,
    fault_proxy_factory,
    etcd_namespace: str,
    spawn_worker,
    tmp_path: Path,
) -> None:
    cluster: EtcdCluster = etcd_cluster_factory(3, heartbeat_interval=0.1, election_timeout=1.0)
    proxies: list[FaultProxy] = []
    endpoints = list(cluster.endpoints)
    if fault == "cut-off":
        proxies = [fault_proxy_factory(e) for e in cluster.endpoints]
        endpoints = [p.endpoint for p in proxies]
    cfg = Config(endpoints=tuple(cluster.endpoints), namespace=etcd_namespace, ttl=TTL)
    ks = cfg.keyspace
    joined = ",".join(endpoints)
    e_prefix, e_target = ks.election_prefix("e"), ks.key("e-target")
    l_prefix, l_target = ks.lock_prefix("l"), ks.key("l-target")
    log: list[str] = []

    async with open_transport(cfg) as t, anyio.create_task_group() as tg:
        sessions = Fleet(
            spawn_worker,
            tg,
            "integration.workers.sessions",
            lambda w: [joined, cfg.namespace, "3", str(TTL), w],
        )
        campaigners = Fleet(
            spawn_worker,
            tg,
            "integration.workers.campaigner",
            lambda w: [joined, cfg.namespace, "e", e_target.decode(), str(TTL), w],
        )
        lockers = Fleet(
            spawn_worker,
            tg,
            "integration.workers.locker",
            lambda w: [joined, cfg.namespace, "l", l_target.decode(), str(TTL), w, w],
        )
        fleets = (sessions, campaigners, lockers)
        try:
            for i in range(2):
                sessions.spawn(f"s{i}.1")
            for i in range(3):
                campaigners.spawn(f"c{i}.1")
            for i in range(4):
                lockers.spawn(f"l{i}.1")
            for i in range(2):  # every worker up before the first fault
                await sessions.wait_for(
                    lambda e, w=f"s{i}.1": e["event"] == "ready" and e["writer"] == w, 30
                )
            for fleet, prefix, n in ((campaigners, "c", 3), (lockers, "l", 4)):
                for i in range(n):
                    await fleet.wait_for(
                        lambda e, w=f"{prefix}{i}.1": e["event"] == "ready" and e["writer"] == w,
                        30,
                    )
            await writes_after(campaigners, 0)
            await writes_after(lockers, 0)

            start = time.time()
            for r in range(ROUNDS):
                leader = await cluster.await_leader()
                if fault == "pause":
                    cluster.pause(leader)
                else:
                    await anyio.to_thread.run_sync(proxies[leader].blackhole)
                at = time.time()
                log.append(f"{at - start:6.2f}s round {r}: {fault} member {leader}")
                await anyio.sleep(FAULT)  # the fault's duration is the point
                if fault == "pause":
                    cluster.resume(leader)
                else:
                    await anyio.to_thread.run_sync(proxies[leader].pass_)
                await cluster.await_healthy()
                new = await cluster.await_leader()
                log.append(f"{time.time() - start:6.2f}s round {r}: healed, leader {new}")
                # both fenced workloads make progress again before the next round
                healed = time.time()
                await writes_after(campaigners, healed, 5)
                await writes_after(lockers, healed, 5)

            await sessions.shutdown()
            await campaigners.shutdown()
            await lockers.shutdown()
            last = await end_of_history(t, cfg)
            history = await read_history(t, ks.prefix, last)
        finally:
            for fleet in fleets:
                fleet.kill_all()

    print("\n".join(log))
    (tmp_path / "events.json").write_text(
        json.dumps({"log": log, "events": [e for f in fleets for e in f.events]}, indent=1)
    )
    print(f"events written to {tmp_path / 'events.json'}")
    marks = ks.key(MARKS, "")
    problems: list[str] = []
    checked: dict[str, Checked] = {}
    for name, prefix, target, fleet in (
        ("election", e_prefix, e_target, campaigners),
        ("lock", l_prefix, l_target, lockers),
    ):
        checked[name] = check_history(history, prefix, target, marks)
        problems += [f"{name}: {p}" for p in checked[name].problems]
        problems += [f"{name}: {p}" for p in worker_views(fleet, checked[name])]
    losses = [e for fleet in fleets for e in session_losses(fleet.events)]
    stats = [e for e in sessions.events if e["event"] == "stats"]
    print(
        f"{fault}: {len(losses)} session losses; election {len(checked['election'].writes)} "
        f"writes, lock {len(checked['lock'].writes)} writes; sessions {stats}"
    )
    assert len(stats) == 2, sessions.events[-5:]
    assert all(s["losses"] == 0 for st in stats for s in st["sessions"]), stats
    assert not losses, losses
    assert not problems, report(0, problems)
    # progress between the faults (awaited above) is in the checked history too
    assert len(checked["election"].writes) >= 5 * ROUNDS
    assert len(checked["lock"].writes) >= 5 * ROUNDS
