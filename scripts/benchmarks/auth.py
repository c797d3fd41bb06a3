"""Section ``auth``: what etcd's authentication costs a lease-attached put (issue 14).

With auth on, etcd checks the permissions of every key already attached to a lease when a
put attaches one more (etcd#15993; admin users and auth off skip it), and a node's session
lease carries every live key of that node: its announcement and each hosted agent's
registration. So ``Registry.register`` (one create-if-absent transaction with the lease)
may slow down as a node hosts more agents.

Two private etcds of the same flags, started here: one with auth off, one with auth on, a
``root`` user and tenant ``bench`` provisioned (``foundation_etcd.testing.start_auth_etcd``);
the library connects to the second as the tenant's own user (not an admin). For each
population (10, 1,000, 5,000 keys on the lease) both sessions are filled to it (32
registrations at a time), then
``register`` + ``unregister`` pairs run in alternating rounds on both (the population stays
put); the sample is the ``register`` alone. "raw" is auth off, "library" auth on: the ratio
is the cost of auth at that population.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import foundation_etcd as fe
from benchmarks.harness import Bench, Case, Latency, Row, Step, concurrently, run_rounds
from foundation_etcd import Config, connect
from foundation_etcd.testing import AuthEtcd, EtcdServer, start_auth_etcd

POPULATIONS = (10, 1_000, 5_000)
ROOT_PASSWORD = "bench-root"
TENANT_PASSWORD = "bench-tenant"


@asynccontextmanager
async def _servers(namespace: str) -> AsyncIterator[tuple[EtcdServer, AuthEtcd]]:
    """Auth off, and auth on with tenant ``bench`` provisioned (the test harness's helper)."""
    off = EtcdServer("bench-auth-off")
    on: AuthEtcd | None = None
    try:
        off.start()
        on = await asyncio.to_thread(
            start_auth_etcd,
            "bench-auth-on",
            namespace=namespace,
            tenants={"bench": TENANT_PASSWORD},
            root_password=ROOT_PASSWORD,
        )
        yield off, on
    finally:
        off.close()
        if on is not None:
            on.server.close()


async def section_auth(bench: Bench) -> list[Row]:
    """Register p50 at 10 / 1,000 / 5,000 keys on the lease, auth off against auth on."""
    s = bench.settings
    namespace = bench.namespace("auth")
    rows: list[Row] = []
    async with _servers(namespace) as (off, on), AsyncExitStack() as stack:
        cfg_on = on.tenant_config("bench")
        cfg_off = Config(endpoints=(off.endpoint,), namespace=namespace, tenant="bench")
        plain = await stack.enter_async_context(connect(cfg_off, node_id="bench-auth"))
        authed = await stack.enter_async_context(connect(cfg_on, node_id="bench-auth"))
        fill = itertools.count()
        probes = itertools.count()
        have = 1  # the node's announcement is on the lease already
        for population in POPULATIONS:
            ids = [f"fill-{next(fill):06d}" for _ in range(population - have)]
            t0 = time.perf_counter()
            for cluster in (plain, authed):
                await concurrently(cluster.registry.register, ids)
            have = population
            bench.progress(f"{population} keys on each lease ({time.perf_counter() - t0:.1f} s)")

            def pair(cluster: fe.Cluster) -> Step:
                async def step() -> float:
                    agent = f"probe-{next(probes):06d}"
                    t = time.perf_counter()
                    await cluster.registry.register(agent)
                    took = time.perf_counter() - t
                    await cluster.registry.unregister(agent)
                    return took

                return step

            label = f"register with {population:,} keys on the lease (auth off / on)"
            results = await run_rounds(
                bench,
                [Case(label, pair(plain), pair(authed), ops=s.register_ops)],
            )
            raw, lib = results[label]
            rows.append(
                Latency(
                    label,
                    raw,
                    lib,
                    note="library column: the tenant's own user, auth on; raw column: the "
                    "same etcd flags with auth off",
                )
            )
    return rows
