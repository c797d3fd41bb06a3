import signal

import anyio
import pytest

from foundation_etcd import Config, connect
from foundation_etcd.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_killed_process_agents_vanish_within_ttl(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker
) -> None:
    """Two node processes; SIGKILL one; its agents leave the other's view within TTL + 1 s."""
    ttl = 2.0
    args = ["--endpoints", ",".join(etcd_endpoints), "--namespace", etcd_config.namespace]
    args += ["--ttl", str(ttl), "--wait", "0.5"]
    a = spawn_worker("foundation_etcd.demo", "node", "--id", "a", *args)
    b = spawn_worker("foundation_etcd.demo", "node", "--id", "b", *args)
    await a.next_event("joined")
    await b.next_event("joined")
    async with connect(etcd_config, node_id="observer") as obs:
        with anyio.fail_after(5):
            await wait_until(lambda: not (len(obs.registry.find("text")) < 4))
        # b sees a's agents (and the reverse) from its own process
        for w in (a, b):
            while True:
                ev = await w.next_event("lookup")
                if len(ev["agents"]) == 4:
                    break
        a.signal(signal.SIGKILL)
        killed = anyio.current_time()
        ev = await b.next_event("agents-removed", limit=ttl + 5)
        assert sorted(ev["agents"]) == ["a-summarizer", "a-translator"]
        with anyio.fail_after(ttl + 1):
            await wait_until(lambda: all(x.node_id != "a" for x in obs.registry.find("text")))
        took = anyio.current_time() - killed
        assert took <= ttl + 1, took
        assert [x.agent_id for x in obs.registry.find("text")] == ["b-summarizer", "b-translator"]
