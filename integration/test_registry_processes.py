import signal

import anyio
import pytest

from foundation_etcd import Config, connect
from foundation_etcd.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_killed_process_agents_vanish_within_ttl(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker
) -> None:
    """Two node processes see each other's agents; SIGKILL one: its agents leave in TTL + 1 s."""
    ttl = 2.0
    common = [",".join(etcd_endpoints), etcd_config.namespace, str(ttl)]
    a = spawn_worker("integration.workers.registry_node", "a", *common)
    b = spawn_worker("integration.workers.registry_node", "b", *common)
    await a.next_event("ready")
    await b.next_event("ready")
    for w in (a, b):  # each process sees all four agents, the other's included
        while len((await w.next_event("lookup"))["agents"]) < 4:
            pass
    async with connect(etcd_config, node_id="observer") as obs:
        with anyio.fail_after(5):
            await wait_until(lambda: len(obs.registry.find("text")) == 4)
        a.signal(signal.SIGKILL)
        killed = anyio.current_time()
        removed = {(await b.next_event("removed", ttl + 5))["agent"] for _ in range(2)}
        assert removed == {"a-one", "a-two"}
        with anyio.fail_after(ttl + 1):
            await wait_until(lambda: all(x.node_id != "a" for x in obs.registry.find("text")))
        took = anyio.current_time() - killed
        assert took <= ttl + 1, took
        assert [x.agent_id for x in obs.registry.find("text")] == ["b-one", "b-two"]
