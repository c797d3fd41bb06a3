"""Section ``keepalive``: lease keepalives on one stream, and the Session's own."""

from __future__ import annotations

import asyncio
import contextlib
import time

from benchmarks.harness import Bench, Case, Latency, Row, clocked, run_rounds
from benchmarks.raw import raw_lease, rpc
from foundation_etcd import EtcdError, open_session
from foundation_etcd.lowlevel import open_transport


async def section_keepalive(bench: Bench) -> list[Row]:
    """Lease keepalive on one open stream; the Session's own keepalive round trips."""
    s = bench.settings
    cfg = bench.config("ka")
    async with open_transport(cfg) as t, raw_lease(bench) as raw_id:
        lib_lease = await t.lease_grant(60)
        raw_call = bench.lease.LeaseKeepAlive()
        lib_stream = t.open_keepalive()

        async def raw_keepalive() -> None:
            await raw_call.write(rpc.LeaseKeepAliveRequest(ID=raw_id))
            resp = await raw_call.read()
            assert resp.TTL > 0

        try:
            results = await run_rounds(
                bench,
                [
                    Case(
                        "keepalive (write + read on one open stream)",
                        clocked(raw_keepalive),
                        clocked(lambda: lib_stream.keepalive(lib_lease.id)),
                    )
                ],
            )
            # The session keeps its lease alive every ``session_interval``; meanwhile a raw
            # loop sends keepalives at the same pace on its own stream, half a period
            # apart, so that both see the same (idle, not back-to-back) conditions.
            session_cfg = cfg.with_options(
                ttl=5.0, keepalive_interval=s.session_interval, step_down=2.5
            )
            paced_raw: list[float] = []
            session_rtts: list[float] = []
            for r in range(s.rounds):
                bench.progress(f"session window {r + 1}/{s.rounds} ({s.session_window:g} s)")
                async with open_session(t, session_cfg) as session:
                    seen = session.statistics().keepalives
                    end = time.perf_counter() + s.session_window
                    await asyncio.sleep(s.session_interval / 2)
                    next_raw = time.perf_counter()
                    while time.perf_counter() < end:
                        if time.perf_counter() >= next_raw:
                            t0 = time.perf_counter()
                            await raw_keepalive()
                            paced_raw.append(time.perf_counter() - t0)
                            next_raw = t0 + s.session_interval
                        stats = session.statistics()
                        if stats.keepalives != seen:
                            if seen > 0:  # the first one also opened the stream
                                session_rtts.append(stats.last_keepalive_rtt)
                            seen = stats.keepalives
                        await asyncio.sleep(0.002)
        finally:
            raw_call.cancel()
            lib_stream.close()
            with contextlib.suppress(EtcdError):
                await t.lease_revoke(lib_lease.id)
    rows: list[Row] = [Latency(label, raw, lib) for label, (raw, lib) in results.items()]
    rows.append(
        Latency(
            f"Session keepalive, every {s.session_interval * 1000:g} ms (last_keepalive_rtt)",
            paced_raw,
            session_rtts,
            note="raw: same pace on its own stream",
        )
    )
    return rows
