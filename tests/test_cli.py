"""The command line, run as users run it (a subprocess), against the test etcd."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from foundation_etcd import Config, connect
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parent.parent


def cli(endpoints: list[str], namespace: str, *args: str, check: bool = True):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "foundation_etcd.cli",
            "--endpoints",
            ",".join(endpoints),
            "--namespace",
            namespace,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore"),
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def start_node(endpoints: list[str], namespace: str, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foundation_etcd.cli",
            "--endpoints",
            ",".join(endpoints),
            "--namespace",
            namespace,
            "node",
            "run",
            "--id",
            name,
            "--agents",
            "examples.agents",
            "--capacity",
            "cpu=4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore"),
    )


async def test_node_run_agents_drain_quota(
    etcd_endpoints: list[str], etcd_namespace: str, etcd_config: Config
) -> None:
    procs = [start_node(etcd_endpoints, etcd_namespace, name) for name in ("cli-a", "cli-b")]
    try:
        async with connect(etcd_config, node_id="t", hosts_agents=False) as c:
            with anyio.fail_after(20):
                await wait_until(lambda: {"cli-a", "cli-b"} <= set(c.nodes()))
            from examples.agents import Counter

            await c.spawn(Counter, "cnt", placement="pinned:cli-a")

            async def running_on(node: str) -> bool:
                return any(s.state == "running" and s.node_id == node for s in await c.agents())

            with anyio.fail_after(20):
                await wait_until(lambda: running_on("cli-a"))
            nodes = await anyio.to_thread.run_sync(cli, etcd_endpoints, etcd_namespace, "nodes")
            assert "cli-a" in nodes.stdout and "cpu=4" in nodes.stdout
            agents = await anyio.to_thread.run_sync(cli, etcd_endpoints, etcd_namespace, "agents")
            assert "cnt" in agents.stdout and "running" in agents.stdout
            drained = await anyio.to_thread.run_sync(
                cli, etcd_endpoints, etcd_namespace, "node", "drain", "cli-a"
            )
            assert "cnt -> cli-b" in drained.stdout
            with anyio.fail_after(20):
                await wait_until(lambda: running_on("cli-b"))
        q = await anyio.to_thread.run_sync(
            cli, etcd_endpoints, etcd_namespace, "quota", "set", "gpu", "3"
        )
        assert "gpu: limit 3, used 0" in q.stdout
        h = await anyio.to_thread.run_sync(cli, etcd_endpoints, etcd_namespace, "health")
        assert "etcd 3." in h.stdout and "session lease" in h.stdout
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()


def test_bad_endpoint_is_a_clear_error(etcd_namespace: str) -> None:
    out = cli(["127.0.0.1:1"], etcd_namespace, "nodes", check=False)
    assert out.returncode == 1
    assert "cannot reach etcd at 127.0.0.1:1" in out.stderr
    bad = cli(["nohost"], etcd_namespace, "nodes", check=False)
    assert bad.returncode == 1 and "is not host:port" in bad.stderr
