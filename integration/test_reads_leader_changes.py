"""Reads and view openings while etcd's leadership moves from member to member.

A linearizable read in flight when the leader changes is refused (``etcdserver: leader
changed``, ``no leader``): nothing was applied, so the transport asks again within the
request's deadline instead of raising. Writes are not retried that way (their outcome is
unknown: they stay :class:`AmbiguousResultError`). Here three readers (point reads, range
reads, and views opened and closed, whose initial list is a read) run while the leadership
is transferred six times; not one read may fail, and every view must open with the keys
written before it.
"""

from __future__ import annotations

import json

import anyio
import pytest

from foundation_etcd import Config, connect
from foundation_etcd.lowlevel import open_view
from foundation_etcd.testing._http import request_json

pytestmark = [pytest.mark.integration, pytest.mark.fault]

MOVES = 6


def _transfer(cluster, target: int) -> None:
    """Ask the current leader to hand leadership to member ``target`` (v3 JSON gateway)."""
    leader = cluster.wait_leader(10.0)
    member = cluster.member(target)
    status = request_json(f"{member.client_url}/v3/maintenance/status", b"{}", 2.0)
    assert status is not None, "status of the target member"
    target_id = status["header"]["member_id"]
    url = f"{cluster.member(leader).client_url}/v3/maintenance/transfer-leadership"
    answer = request_json(url, json.dumps({"targetID": target_id}).encode(), 10.0)
    assert answer is not None, f"transfer to member {target} refused"


async def test_reads_survive_leader_changes(etcd_cluster, etcd_namespace: str) -> None:
    cfg = Config(
        endpoints=tuple(etcd_cluster.endpoints), namespace=etcd_namespace, request_timeout=5.0
    )
    errors: list[str] = []
    reads = opened = 0
    with anyio.fail_after(90):
        async with connect(cfg, node_id="reader") as c:
            t = c.transport
            prefix = f"{etcd_namespace}/reads/".encode()
            for i in range(20):
                await t.put(prefix + b"k%02d" % i, b"v")
            stop = anyio.Event()

            async def point_reads() -> None:
                nonlocal reads
                while not stop.is_set():
                    try:
                        assert await t.get(prefix + b"k00") is not None
                        reads += 1
                    except Exception as exc:
                        errors.append(f"get: {exc!r}")

            async def range_reads() -> None:
                nonlocal reads
                while not stop.is_set():
                    try:
                        got = await t.get_prefix(prefix)
                        assert len(got.kvs) == 20
                        reads += 1
                    except Exception as exc:
                        errors.append(f"range: {exc!r}")

            async def views() -> None:
                nonlocal opened
                while not stop.is_set():
                    try:
                        async with open_view(t, prefix) as view:
                            assert len(view) == 20
                            opened += 1
                    except Exception as exc:
                        errors.append(f"view: {exc!r}")

            async with anyio.create_task_group() as tg:
                for task in (point_reads, range_reads, views):
                    tg.start_soon(task)
                before = await anyio.to_thread.run_sync(etcd_cluster.wait_leader, 10.0)
                current = before
                for n in range(MOVES):
                    target = (current + 1 + n % 2) % 3
                    await anyio.to_thread.run_sync(_transfer, etcd_cluster, target)
                    while True:  # the move is seen by a quorum before the next one
                        seen = await anyio.to_thread.run_sync(etcd_cluster.wait_leader, 10.0)
                        if seen == target:
                            break
                        await anyio.sleep(0.05)
                    current = target
                    await anyio.sleep(0.2)  # reads in flight across the new term
                stop.set()
    assert errors == [], f"{len(errors)} reads failed across {MOVES} leader moves: {errors[:5]}"
    assert reads > 100 and opened > 5, (reads, opened)
