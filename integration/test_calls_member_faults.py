"""Calls while etcd members are paused and killed: each call's effect exactly once.

A paused member (SIGSTOP) holds its connections open and answers nothing, so a call whose
send or shared reply watch is on it hangs until a timeout moves it elsewhere; a killed one
refuses at once. The caller gives each call 5 s and then calls again with the same call id,
which must return that call's one outcome, never run it twice.
"""

from __future__ import annotations

import anyio
import pytest

import foundation_etcd as fe
from foundation_etcd import Config, EtcdError, connect
from foundation_etcd._core.checkpoints import decode_state

pytestmark = [pytest.mark.integration, pytest.mark.fault]


@fe.clustered("faults-tally")
class Tally:
    """Counts its calls; the count is its checkpointed state."""

    def __init__(self) -> None:
        self.n = 0

    def get_state(self) -> int:
        return self.n

    def restore_state(self, state: int) -> None:
        self.n = state

    @fe.action
    async def add(self) -> int:
        """Add one; return the count."""
        self.n += 1
        return self.n


async def test_calls_through_paused_and_killed_members_take_effect_once(
    etcd_cluster, etcd_namespace: str
) -> None:
    cfg = Config(
        endpoints=tuple(etcd_cluster.endpoints),
        namespace=etcd_namespace,
        ttl=10.0,  # the faults below are shorter: the agent stays where it is
        request_timeout=1.5,
    )
    results: list[int] = []
    retried = 0
    with anyio.fail_after(100):
        async with (
            connect(cfg, node_id="host") as host,
            connect(cfg, node_id="caller", hosts_agents=False) as caller,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(host.serve)
            await caller.spawn(Tally, "t1", placement="pinned:host")
            stop = anyio.Event()

            async def calls() -> None:
                nonlocal retried
                i = 0
                while not stop.is_set():
                    cid = f"c{i:04d}"
                    while True:  # the same id until it has its one outcome
                        try:
                            with anyio.fail_after(5):
                                results.append(await caller.call("t1", "add", call_id=cid))
                            break
                        except (fe.CallTimeoutError, EtcdError):
                            retried += 1
                    i += 1

            async with anyio.create_task_group() as load:
                load.start_soon(calls)
                await anyio.sleep(1.0)
                for _ in range(2):
                    paused = etcd_cluster.leader_index() or 0
                    etcd_cluster.pause(paused)  # holds its connections, answers nothing
                    await anyio.sleep(3.0)  # past the request timeout
                    etcd_cluster.resume(paused)
                    await anyio.sleep(1.0)
                    killed = (paused + 1) % 3
                    etcd_cluster.kill(killed)
                    await anyio.sleep(1.0)
                    await anyio.to_thread.run_sync(etcd_cluster.restart, killed)
                    await anyio.sleep(1.0)
                stop.set()
            state = decode_state(await caller.transport.get(caller.keyspace.agent_state("t1")))
            tg.cancel_scope.cancel()
    # every call ran once, in order: the counts its replies carried are 1, 2, 3, ...
    assert len(results) > 20, (len(results), retried)
    assert results == list(range(1, len(results) + 1)), (results, retried)
    assert state == len(results)  # the checkpoint: nothing else ran
    print(f"\n{len(results)} calls through 2 pauses and 2 kills; {retried} retried by id")
