"""Counters and transactions while etcd members are paused (SIGSTOP) and killed (SIGKILL).

A paused member is not a dead one: it keeps its TCP connections open and answers nothing,
so requests routed to it end in the request deadline (an ambiguous write), where a killed
member's connections are refused at once. Four tasks add to a sharded counter and transfer
between two states through ``transact`` (each transfer also writes its own record, so that
an ambiguous one can be looked up); one member is paused, then resumed, then another killed
and restarted. Afterwards: the counter equals the adds that returned plus at most the ones
that raised ``AmbiguousResultError`` (the counter resolves the others), the two balances
still sum to their start at every revision, and every confirmed transfer is in etcd once.
"""

from __future__ import annotations

import functools

import anyio
import pytest

from foundation_etcd import AmbiguousResultError, Config, EtcdError, Tx, connect
from foundation_etcd.lowlevel import Op

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def transfer(tx: Tx, *, xid: str) -> None:
    """Move 1 from ``a`` to ``b`` and leave the transfer's own record."""
    a, b = await tx.get_many("bal:a", "bal:b")
    tx.put("bal:a", a - 1)
    tx.put("bal:b", b + 1)
    tx.put(f"xfer:{xid}", 1)


async def test_counter_and_transact_through_paused_and_killed_members(
    etcd_cluster, etcd_namespace: str
) -> None:
    cfg = Config(
        endpoints=tuple(etcd_cluster.endpoints),
        namespace=etcd_namespace,
        ttl=5.0,
        request_timeout=1.5,
    )
    confirmed_adds = unsure_adds = 0
    confirmed: list[str] = []
    unsure: list[str] = []
    with anyio.fail_after(90):
        async with connect(cfg, node_id="faulted") as c:

            async def init(tx: Tx) -> None:
                tx.put("bal:a", 1000)
                tx.put("bal:b", 1000)

            await c.transact(init)
            start = await c.transport.revision()
            counter = c.counter("faulted", shards=8)
            stop = anyio.Event()

            async def adder() -> None:
                nonlocal confirmed_adds, unsure_adds
                while not stop.is_set():
                    try:
                        await counter.add(1)
                        confirmed_adds += 1
                    except AmbiguousResultError:
                        unsure_adds += 1
                    except EtcdError:
                        await anyio.sleep(0.05)  # refused: not applied

            async def mover(n: int) -> None:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    xid = f"x{n}-{seq}"

                    try:
                        await c.transact(functools.partial(transfer, xid=xid))
                        confirmed.append(xid)
                    except AmbiguousResultError:
                        unsure.append(xid)
                    except EtcdError:
                        await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                for n in range(2):
                    tg.start_soon(adder)
                    tg.start_soon(mover, n)
                paused = etcd_cluster.leader_index() or 0
                etcd_cluster.pause(paused)  # holds its connections, answers nothing
                await anyio.sleep(4)  # the fault's length is the point
                etcd_cluster.resume(paused)
                killed = (paused + 1) % 3
                etcd_cluster.kill(killed)
                await anyio.sleep(3)
                await anyio.to_thread.run_sync(etcd_cluster.restart, killed)
                await anyio.sleep(1)
                stop.set()

            exact = await counter.exact()
            assert confirmed_adds <= exact <= confirmed_adds + unsure_adds, (
                exact,
                confirmed_adds,
                unsure_adds,
            )
            assert confirmed_adds > 50 and confirmed, (confirmed_adds, len(confirmed))
            end = await c.transport.revision()
            prefix = cfg.keyspace.key("state", "")
            for rev in range(start, end + 1):
                res = await c.transport.range(Op.get(prefix + b"bal:", prefix=True, revision=rev))
                total = sum(int(kv.value) for kv in res.kvs)
                assert total == 2000, f"balances sum to {total} at revision {rev}"
            records = await c.transport.range(Op.get(prefix + b"xfer:", prefix=True))
            written = {kv.key[len(prefix) + len("xfer:") :].decode() for kv in records.kvs}
            assert set(confirmed) <= written, set(confirmed) - written
            assert written <= set(confirmed) | set(unsure), written - set(confirmed) - set(unsure)
            final = {
                kv.key: int(kv.value)
                for kv in (await c.transport.range(Op.get(prefix + b"bal:", prefix=True))).kvs
            }
            assert final[prefix + b"bal:b"] - 1000 == len(written)
