"""Section ``election``: become leader, lock, handover, failover, etcd's own services."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from etcd3aio import _protobuf as pb

from benchmarks.children import (
    AETCD_LOCK_SCRIPT,
    AETCD_REQUIREMENT,
    CHILD_TIMEOUT,
    ETCD3_LOCK_SCRIPT,
    LEADER_SCRIPT,
    ChildFailed,
    child_process,
    expect_line,
    run_json,
)
from benchmarks.harness import (
    EVENT_TIMEOUT,
    FAILOVER_SLACK,
    FAILOVER_TTL,
    Bench,
    Case,
    Figure,
    Latency,
    Row,
    clocked,
    percentile,
    run_rounds,
    seconds_figure,
)
from benchmarks.kv import KV_GOAL
from benchmarks.raw import (
    Gateway,
    RawWatcher,
    b64,
    raw_enqueue_txn,
    raw_lease,
    raw_turn_txn,
    raw_wait_deleted,
    rpc,
    wait_count,
)
from foundation_etcd import Election, Lock, open_session
from foundation_etcd.lowlevel import Compare, Op, open_transport

CAMPAIGN_GOAL = KV_GOAL  # one transaction to lead: as close to a raw Txn as any kv call
HANDOVER_GOAL = 1.2  # resign -> next leader's body, against a hand-rolled handover
LOCK_CPU_GOAL = 1.3  # client CPU per lock cycle / the hand-rolled lock's
SETTLE = 0.03  # seconds left to a waiter to open its watch before the measured step


async def section_election(bench: Bench) -> list[Row]:
    """Become leader, lock, handover, failover after SIGKILL, etcd's v3lock/v3election."""
    s = bench.settings
    cfg = bench.config("elect")
    ks = cfg.keyspace
    loop = asyncio.get_running_loop()
    rows: list[Row] = []
    channel_b = grpc.aio.insecure_channel(bench.endpoint)
    gateway = Gateway(bench.endpoint)
    try:
        async with (
            open_transport(cfg) as ta,
            open_session(ta, cfg) as session_a,
            open_transport(cfg) as tb,
            open_session(tb, cfg) as session_b,
            raw_lease(bench) as lease_a,
            raw_lease(bench) as lease_b,
        ):
            kv_a, kv_b = bench.kv, pb.KVStub(channel_b)

            # (a) become leader, (b) lock, (e) the same through etcd's own services
            raw_prefix = ks.election_prefix("raw-uncontended")
            raw_key = raw_prefix + f"{lease_a:x}".encode()
            raw_lock_prefix = ks.lock_prefix("raw-uncontended")
            raw_lock_key = raw_lock_prefix + f"{lease_a:x}".encode()

            async def raw_campaign() -> float:
                t0 = time.perf_counter()
                res = await kv_a.Txn(raw_enqueue_txn(raw_prefix, raw_key, lease_a))
                elapsed = time.perf_counter() - t0
                assert res.succeeded
                await kv_a.DeleteRange(rpc.DeleteRangeRequest(key=raw_key))
                return elapsed

            async def lib_campaign() -> float:
                t0 = time.perf_counter()
                async with Election(session_a, "uncontended").campaign():
                    elapsed = time.perf_counter() - t0
                return elapsed

            txn_prefix = ks.election_prefix("transport-only")
            txn_key = txn_prefix + f"{session_a.lease.id:x}".encode()

            async def transport_campaign_txn() -> float:
                head = Op.get(txn_prefix, prefix=True, limit=1, sort_by_create=True)
                t0 = time.perf_counter()
                res = await ta.txn(
                    [Compare.create_revision(txn_key) == 0],
                    [Op.put(txn_key, b"", lease=session_a.lease.id), head],
                    [Op.get(txn_key), head],
                )
                elapsed = time.perf_counter() - t0
                assert res.succeeded
                await ta.delete(txn_key)
                return elapsed

            async def raw_lock() -> None:
                res = await kv_a.Txn(raw_enqueue_txn(raw_lock_prefix, raw_lock_key, lease_a))
                assert res.succeeded
                await kv_a.DeleteRange(rpc.DeleteRangeRequest(key=raw_lock_key))

            async def lib_lock() -> None:
                async with Lock(session_a, "uncontended").acquire():
                    pass

            gw_lease = gateway.post("/v3/lease/grant", {"TTL": 60})["ID"]
            gw_lock_name = b64(ks.lock_prefix("gateway")[:-1])
            gw_election_name = b64(ks.election_prefix("gateway")[:-1])

            async def gw_lock() -> float:
                t0 = time.perf_counter()
                key = gateway.post("/v3/lock/lock", {"name": gw_lock_name, "lease": gw_lease})
                gateway.post("/v3/lock/unlock", {"key": key["key"]})
                return time.perf_counter() - t0

            async def gw_campaign() -> float:
                t0 = time.perf_counter()
                leader = gateway.post(
                    "/v3/election/campaign",
                    {"name": gw_election_name, "lease": gw_lease, "value": ""},
                )["leader"]
                elapsed = time.perf_counter() - t0
                gateway.post("/v3/election/resign", {"leader": leader})
                return elapsed

            campaign = "become leader, uncontended: campaign() enter"
            campaign_txn = "campaign's Txn alone, through Transport.txn"
            lock = "lock acquire + release, uncontended"
            v3lock = "lock acquire + release: etcd v3lock (HTTP gateway) / library Lock"
            v3election = "become leader: etcd v3election Campaign (HTTP gateway) / library"
            bench.progress("campaign, lock, etcd's v3lock and v3election")
            results = await run_rounds(
                bench,
                [
                    Case(campaign, raw_campaign, lib_campaign, ops=s.coord_ops),
                    Case(campaign_txn, raw_campaign, transport_campaign_txn, ops=s.coord_ops),
                    Case(lock, clocked(raw_lock), clocked(lib_lock), ops=s.coord_ops),
                    Case(v3lock, gw_lock, clocked(lib_lock), ops=s.coord_ops),
                    Case(v3election, gw_campaign, lib_campaign, ops=s.coord_ops),
                ],
            )
            notes = {
                campaign: "raw: the same Txn (create own key if absent + read the queue head)",
                campaign_txn: "the election's share = campaign row minus this one",
                lock: "raw: the same Txn, then DeleteRange; library: one Txn each way",
                v3lock: "raw side: etcd's Lock service via JSON/HTTP keep-alive to the "
                "gateway built into etcd (one request each way, one lease for all)",
                v3election: "raw side: etcd's Campaign via the gateway; resign untimed",
            }
            for label, (raw, lib) in results.items():
                goal = CAMPAIGN_GOAL if label == campaign else None
                rows.append(Latency(label, raw, lib, goal=goal, note=notes[label]))
            rows.append(await lock_cpu(bench, raw_lock, lib_lock))
            with contextlib.suppress(RuntimeError):
                gateway.post("/v3/lease/revoke", {"ID": gw_lease})

            # (c) handover on resign
            h_raw = ks.election_prefix("raw-handover")
            key_a, key_b = (h_raw + f"{x:x}".encode() for x in (lease_a, lease_b))
            h_lib = ks.election_prefix("handover")

            async def raw_handover() -> float:
                res = await kv_a.Txn(raw_enqueue_txn(h_raw, key_a, lease_a))
                assert res.succeeded
                watching: asyncio.Future[None] = loop.create_future()
                started: asyncio.Future[float] = loop.create_future()

                async def candidate_b() -> None:
                    res = await kv_b.Txn(raw_enqueue_txn(h_raw, key_b, lease_b))
                    token = res.header.revision
                    while True:
                        check = await kv_b.Txn(raw_turn_txn(h_raw, key_b, token))
                        own = check.responses[0].response_range.kvs
                        assert own and own[0].create_revision == token
                        pred = check.responses[1].response_range.kvs
                        if not pred:
                            break
                        await raw_wait_deleted(
                            channel_b, pred[0].key, check.header.revision, watching
                        )
                    started.set_result(time.perf_counter())
                    await kv_b.DeleteRange(rpc.DeleteRangeRequest(key=key_b))

                task = asyncio.create_task(candidate_b())
                await asyncio.wait_for(watching, EVENT_TIMEOUT)
                await asyncio.sleep(SETTLE)
                t0 = time.perf_counter()
                await kv_a.DeleteRange(rpc.DeleteRangeRequest(key=key_a))
                t1 = await asyncio.wait_for(started, EVENT_TIMEOUT)
                await task
                return t1 - t0

            async def lib_handover() -> float:
                started: asyncio.Future[float] = loop.create_future()

                async def candidate_b() -> None:
                    async with Election(session_b, "handover").campaign():
                        started.set_result(time.perf_counter())

                async with Election(session_a, "handover").campaign():
                    task = asyncio.create_task(candidate_b())
                    await wait_count(bench, h_lib, 2)
                    await asyncio.sleep(SETTLE)
                    t0 = time.perf_counter()
                t1 = await asyncio.wait_for(started, EVENT_TIMEOUT)
                await task
                return t1 - t0

            bench.progress("handover on resign")
            handover = "handover: leader A leaves -> waiting candidate B's body starts"
            results = await run_rounds(
                bench, [Case(handover, raw_handover, lib_handover, ops=s.handover_ops)]
            )
            raw, lib = results[handover]
            note = (
                "raw: B (own lease) created its key, watches A's key; A sends DeleteRange; "
                "B gets the event and checks with one Txn. Library: A's resign Txn, "
                "B's watch event and check Txn; A and B on separate channels and sessions"
            )
            rows.append(Latency(handover, raw, lib, goal=HANDOVER_GOAL, note=note))

        # (d) failover after SIGKILL of the leader
        rows += await election_failover(bench)
        # (f) python3-etcd3, in its own interpreter
        rows.append(await python_etcd3_lock(bench))
        rows.append(await aetcd_lock(bench))
    finally:
        gateway.close()
        await channel_b.close()
        await bench.delete_prefix(f"/{cfg.namespace}/".encode())
    return rows


async def election_failover(bench: Bench) -> list[Row]:
    """SIGKILL a leader in a child process; time until a waiting candidate here leads."""
    total: list[float] = []
    expired: list[float] = []
    granted: set[int] = set()
    loop = asyncio.get_running_loop()
    for rep in range(bench.settings.failover_reps):
        cfg = bench.config(f"elect-fo{rep}", ttl=float(FAILOVER_TTL))
        prefix = cfg.keyspace.election_prefix("failover")
        bench.progress(f"election failover {rep + 1}/{bench.settings.failover_reps}")
        try:
            async with child_process(
                sys.executable,
                str(LEADER_SCRIPT),
                bench.endpoint,
                cfg.namespace,
                "failover",
                str(FAILOVER_TTL),
            ) as proc:
                leader = await expect_line(proc, "leader")
                leader_key = leader["key"].encode()
                granted.add(int(leader["ttl"]))
                async with (
                    open_transport(cfg) as t,
                    open_session(t, cfg) as session,
                    RawWatcher(bench, prefix) as watcher,
                ):
                    started = loop.create_future()

                    async def candidate(session: Any = session, started: Any = started) -> None:
                        async with Election(session, "failover").campaign():
                            started.set_result(time.perf_counter())

                    task = asyncio.create_task(candidate())
                    await wait_count(bench, prefix, 2)
                    await asyncio.sleep(SETTLE)
                    deleted = watcher.waiting[leader_key] = loop.create_future()
                    t0 = time.perf_counter()
                    proc.kill()
                    t1 = await asyncio.wait_for(started, CHILD_TIMEOUT)
                    t_del = await asyncio.wait_for(deleted, EVENT_TIMEOUT)
                    await task
            total.append(t1 - t0)
            expired.append(t_del - t0)
        finally:
            await bench.delete_prefix(f"/{cfg.namespace}/".encode())
    gap = 1000 * (percentile(total, 0.5) - percentile(expired, 0.5))
    note = (
        f"etcd deleted the dead leader's key after {percentile(expired, 0.5):.2f} s (median; "
        f"lease expiry), the candidate led {gap:.1f} ms later; TTL granted to the killed "
        f"leader: {', '.join(f'{t} s' for t in sorted(granted))}"
    )
    return seconds_figure(
        f"election failover: SIGKILL of the leader -> candidate's body (ttl {FAILOVER_TTL} s)",
        total,
        FAILOVER_TTL + FAILOVER_SLACK,
        note,
    )


async def python_etcd3_lock(bench: Bench) -> Row:
    """python3-etcd3's Lock acquire + release, in its own process and venv (made on first use).

    The venv is ``scripts/bench_sync.py``'s (python3-etcd3 0.13 cannot share an interpreter
    with etcd3aio's protos); it is made once under /tmp, offline from pip's cache if need be.
    """
    from bench_sync import PEER_REQUIREMENT

    return await peer_lock(bench, PEER_REQUIREMENT, ETCD3_LOCK_SCRIPT, "etcd3")


async def aetcd_lock(bench: Bench) -> Row:
    """Aetcd's Lock acquire + release (a lease grant and two Txns), in its own venv."""
    return await peer_lock(bench, AETCD_REQUIREMENT, AETCD_LOCK_SCRIPT, "aetcd")


async def peer_lock(bench: Bench, requirement: str, script: Path, tag: str) -> Row:
    """Another client's lock cycle, timed by ``script`` in a venv with ``requirement``."""
    from bench_sync import peer_python

    label = f"{requirement} Lock acquire + release (own process and venv)"
    python = await asyncio.to_thread(peer_python, requirement)
    if python is None:
        return Figure(label, None, None, "", 0, note=f"{requirement} not installable here")
    host, _, port = bench.endpoint.rpartition(":")
    name = f"bench-{bench.run_id}-{tag}"
    n = bench.settings.coord_ops * bench.settings.rounds
    try:
        samples = await run_json(str(python), str(script), host, port, name, str(n))
    except ChildFailed as exc:
        return Figure(label, None, None, "", 0, note=f"failed: {exc}")
    return Figure(label, percentile(samples, 0.5) * 1000, None, "ms", len(samples), note="p50")


async def lock_cpu(
    bench: Bench, raw_lock: Callable[[], Awaitable[None]], lib_lock: Callable[[], Awaitable[None]]
) -> Figure:
    """Client CPU (``time.process_time`` of this process) per uncontended lock cycle.

    Batches of cycles alternate between the hand-rolled lock and the library's; the median
    of each side's batches is reported. Everything this process runs meanwhile counts, the
    library's background work (its session, views, doorbells) included.
    """
    s = bench.settings
    cycles = max(20, s.coord_ops * 2)
    per_cycle: dict[str, list[float]] = {"raw": [], "lib": []}
    bench.progress("client CPU per lock cycle")
    for r in range(s.rounds):
        sides = [("raw", raw_lock), ("lib", lib_lock)]
        for name, step in sides if r % 2 == 0 else sides[::-1]:
            gc.collect()
            c0 = time.process_time()
            for _ in range(cycles):
                await step()
            per_cycle[name].append((time.process_time() - c0) / cycles)
    raw_us, lib_us = (percentile(per_cycle[k], 0.5) * 1e6 for k in ("raw", "lib"))
    verdict = "met" if lib_us <= LOCK_CPU_GOAL * raw_us else "missed"
    return Figure(
        "client CPU per lock acquire + release, uncontended (this process)",
        raw_us,
        lib_us,
        "µs",
        s.rounds,
        note=f"median of {s.rounds} batches of {cycles} per side, alternating; raw: the "
        f"hand-rolled Txn + DeleteRange above; goal {LOCK_CPU_GOAL:g}x: {verdict}",
    )
