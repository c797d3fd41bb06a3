"""Node health: the report, its status rules, the HTTP endpoints and ``node run --health-port``."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import foundation_etcd as fe
from foundation_etcd import Config, connect
from foundation_etcd._agents.health_http import serve_health
from foundation_etcd.cli import main
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parent.parent


@fe.clustered("health-sleeper")
class Sleeper:
    async def run(self, ctx: fe.AgentRunContext) -> None:
        await anyio.sleep_forever()


async def get(port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    """One request with a raw TCP client: the status code and the JSON body (or None)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        data = b""
        try:
            while True:
                data += await s.receive()
        except anyio.EndOfStream:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1])
    return code, json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_report_of_a_serving_node(etcd_config: Config) -> None:
    with anyio.fail_after(20):
        async with connect(etcd_config, node_id="h1", capacity={"cpu": 2}) as c:
            before = await c.health()
            assert not before.serving and before.failover_leader is None
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: c.serve({"health-sleeper": Sleeper}))
                await c.spawn(Sleeper, "sleepy", placement="pinned:h1")

                async def settled() -> bool:
                    r = await c.health()
                    return r.agents_hosted == {"sleepy": "running"} and bool(r.failover_leader)

                await wait_until(settled)
                r = await c.health()
                assert r.status == "ok" and r.reasons == ()
                assert r.node_id == "h1" and r.lease_id == c.session.lease.id
                assert r.lease_alive and 0 < r.lease_margin <= etcd_config.ttl
                assert r.etcd_reachable and r.etcd_leader != 0 and r.etcd_revision > 0
                assert r.views_caught_up and r.views and all(r.views.values())
                assert {"nodes", "agents/live"} <= set(r.views)
                assert r.serving and r.failover_leader is True and r.agents_failed == {}
                d = json.loads(json.dumps(r.to_dict()))
                assert d["status"] == "ok" and d["agents_hosted"] == {"sleepy": "running"}
                tg.cancel_scope.cancel()


async def test_failing_while_the_lease_is_lost_then_ok(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease revoked from outside: failing (503) until the replacement lease is granted."""
    with anyio.fail_after(30):
        async with connect(etcd_config, node_id="h2") as c, anyio.create_task_group() as tg:
            port = await tg.start(serve_health, c, 0)
            assert (await get(port, "/health"))[0] == 200
            release = anyio.Event()
            grant = c.transport.lease_grant

            async def held_grant(ttl: int) -> Any:
                await release.wait()  # the replacement waits: the lost lease stays current
                return await grant(ttl)

            monkeypatch.setattr(c.transport, "lease_grant", held_grant)
            first = c.session.lease
            async with open_transport(etcd_config) as t:
                await t.lease_revoke(first.id)
            await first.wait_lost()
            r = await c.health()
            assert r.status == "failing" and not r.lease_alive and r.lease_id == first.id
            assert any("lease lost" in why for why in r.reasons)
            code, body = await get(port, "/health")
            assert code == 503 and body["status"] == "failing"
            assert (await get(port, "/live"))[0] == 200  # the session is open, renewing
            assert (await get(port, "/ready"))[0] == 503
            release.set()
            second = await c.session.wait_lease()
            assert second.id != first.id
            await wait_until(lambda: get_ok(port, "/health"))
            tg.cancel_scope.cancel()


async def get_ok(port: int, path: str) -> bool:
    return (await get(port, path))[0] == 200


async def test_ready_only_when_serving_and_caught_up(etcd_config: Config) -> None:
    with anyio.fail_after(20):
        async with connect(etcd_config, node_id="h3") as c, anyio.create_task_group() as tg:
            port = await tg.start(
                lambda task_status: serve_health(c, 0, within=0.5, task_status=task_status)
            )
            code, body = await get(port, "/ready")
            assert code == 503 and "not serving" in body["reasons"]
            assert (await get(port, "/health"))[0] == 200  # healthy, just not serving
            tg.start_soon(lambda: c.serve({"health-sleeper": Sleeper}))
            await wait_until(lambda: get_ok(port, "/ready"))
            # a view whose stream is down is not caught up: degraded, not ready
            view = await c.view(c.keyspace.nodes_prefix())
            view.connected = False
            code, body = await get(port, "/ready")
            assert code == 503 and body["status"] == "degraded"
            r = await c.health(within=0.5)
            assert not r.views_caught_up and r.views["nodes"] is False
            assert (await get(port, "/health"))[0] == 200  # degraded still answers 200
            view.connected = True
            assert (await get(port, "/ready"))[0] == 200
            # the rest of the routes
            assert (await get(port, "/nope"))[0] == 404
            assert (await get(port, "/leader/bad name!"))[0] == 400
            assert (await get(port, "/health", "POST"))[0] == 405
            code, body = await get(port, "/health", "HEAD")
            assert code == 200 and body is None
            # a head over 8 KiB is refused, also one that ends in the read that crossed it
            for pad in (8_000, 9_000, 12_000):
                async with await anyio.connect_tcp("127.0.0.1", port) as s:
                    head = f"GET /live HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * pad}\r\n\r\n"
                    await s.send(head.encode())
                    answer = b""
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while True:
                            answer += await s.receive()
                code = int(answer.split(b" ", 2)[1])
                assert code == (200 if pad < 8_100 else 400), (pad, code)
            tg.cancel_scope.cancel()


async def test_leader_endpoint_follows_the_election(etcd_config: Config) -> None:
    names = ("l1", "l2", "l3")
    ports: dict[str, int] = {}
    stops = {name: anyio.Event() for name in names}
    done = {name: anyio.Event() for name in names}

    async def node(name: str, *, task_status: Any) -> None:
        try:
            async with connect(etcd_config, node_id=name) as c, anyio.create_task_group() as tg:
                ports[name] = await tg.start(serve_health, c, 0)

                async def campaign() -> None:
                    async with c.election("jobs").campaign(name):
                        await anyio.sleep_forever()

                tg.start_soon(campaign)
                task_status.started()
                await stops[name].wait()
                tg.cancel_scope.cancel()
        finally:
            done[name].set()

    async def leaders(among: tuple[str, ...]) -> list[str]:
        return [n for n in among if (await get(ports[n], "/leader/jobs"))[0] == 200]

    async def one_leader(among: tuple[str, ...]) -> list[str]:
        for _ in range(500):
            found = await leaders(among)
            if len(found) == 1:
                return found
            await anyio.sleep(0.02)
        raise AssertionError(f"no single leader among {among}")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for name in names:
                await tg.start(node, name)
            [first] = await one_leader(names)
            code, body = await get(ports[first], "/leader/jobs")
            assert code == 200 and body == {"election": "jobs", "leader": True, "node_id": first}
            assert (await get(ports[first], "/leader/other"))[0] == 503
            stops[first].set()  # the leader's cluster closes: it resigns, its lease is revoked
            await done[first].wait()
            rest = tuple(n for n in names if n != first)
            [second] = await one_leader(rest)
            assert second != first and len(await leaders(rest)) == 1
            for name in rest:
                stops[name].set()


def test_bad_health_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "65536", "http"):
        args = ["--endpoints", "127.0.0.1:1", "node", "run", "--id", "n", "--agents", "x"]
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--health-port", bad])
        assert exit_info.value.code == 2
        assert "argument --health-port" in capsys.readouterr().err


def start_node(endpoints: list[str], namespace: str, name: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "foundation_etcd.cli", "--endpoints", ",".join(endpoints)]
    cmd += ["--namespace", namespace, "node", "run", "--id", name, "--agents"]
    cmd += ["examples.agents", "--health-port", str(port)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    env["FOUNDATION_ETCD_TTL"] = "3"  # a killed leader's lease expires within 3 s
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.once
async def test_node_run_serves_health_and_leadership_moves_when_killed(
    etcd_endpoints: list[str], etcd_namespace: str
) -> None:
    """Two ``node run --health-port`` processes; SIGKILL the failover leader."""
    ports = {"hp1": free_port(), "hp2": free_port()}
    procs = {n: start_node(etcd_endpoints, etcd_namespace, n, p) for n, p in ports.items()}

    async def answers(port: int, path: str) -> bool:
        try:
            return await get_ok(port, path)
        except OSError:
            return False  # not listening (yet, or any more)

    try:
        with anyio.fail_after(40):
            for port in ports.values():
                await wait_until(lambda port=port: answers(port, "/ready"), poll=0.1)
            code, body = await get(ports["hp1"], "/health")
            assert code == 200 and body["node_id"] == "hp1" and body["serving"] is True
            assert (await get(ports["hp1"], "/live"))[0] == 200

            async def leaders() -> list[str]:
                return [n for n, p in ports.items() if await answers(p, "/leader/scheduler")]

            async def one_leader() -> bool:
                return len(await leaders()) == 1

            await wait_until(one_leader, poll=0.05)
            [first] = await leaders()
            procs[first].kill()  # no resignation: its lease must expire in etcd
            procs[first].wait()
            [other] = [n for n in ports if n != first]
            await wait_until(lambda: answers(ports[other], "/leader/scheduler"), poll=0.1)
            assert await leaders() == [other]
            body = (await get(ports[other], "/health"))[1]
            assert body["failover_leader"] is True
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        outs = {}
        for name, proc in procs.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None and proc.stderr is not None
            outs[name] = proc.stdout.read()
            proc.stdout.close()
            proc.stderr.close()
    for name, port in ports.items():
        assert f"health on http://127.0.0.1:{port}/" in outs[name], outs[name]


def test_health_port_in_use_fails_on_one_line(
    etcd_endpoints: list[str], etcd_namespace: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start_node(etcd_endpoints, etcd_namespace, "hbusy", port)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"cannot serve health on 127.0.0.1:{port}" in err, err


async def test_unanswered_status_is_failing_within_the_bound(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect(etcd_config, node_id="h4") as c:

        async def hang() -> None:
            await anyio.sleep_forever()

        monkeypatch.setattr(c.transport, "status", hang)
        with anyio.fail_after(2):
            r = await c.health(within=0.3)
        assert r.status == "failing" and not r.etcd_reachable and not r.views_caught_up
        assert any("etcd unreachable" in why for why in r.reasons), r.reasons


def test_sync_twin_returns_the_report(etcd_config: Config) -> None:
    with fe.sync.connect(etcd_config, node_id="h5", hosts_agents=False) as c:
        r = c.health()
    assert isinstance(r, fe.HealthReport) and r.status == "ok" and not r.serving
