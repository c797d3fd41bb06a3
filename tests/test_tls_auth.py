"""TLS (with client certificates) and etcd authentication against real etcd servers.

Certificates are the plugin's ``etcd_pki`` (made in Python with ``cryptography`` by
``foundation_etcd.testing.make_pki``): a CA, a server certificate for ``127.0.0.1`` and
``localhost``, a client certificate, and a second CA that signed neither; the TLS server is
the plugin's ``etcd_tls_server``. Users and roles are set up with ``etcdctl``, shipped next to
etcd.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from foundation_etcd import (
    AuthError,
    Cluster,
    Config,
    EtcdUnavailableError,
    InvalidIdError,
    QuotaExceededError,
    connect,
    open_session,
    testing,
)
from foundation_etcd.lowlevel import Keyspace, Transport, open_transport, open_view
from foundation_etcd.testing import EtcdServer, find_etcd_binary, wait_until
from foundation_etcd.testing.plugin import unique_namespace

pytestmark = pytest.mark.etcd

CONNECT_TIMEOUT = 1.0
TOKEN_TTL = 2  # seconds, etcd's --auth-token-ttl for simple tokens
ROOT_PASSWORD = "root-secret"
ALICE_PASSWORD = "alice-secret"


# -- certificates: the public harness's (etcd_pki, etcd_tls_server) ---------------------------

CLIENT_USER = "client"  # the CN: the user etcd's --client-cert-auth takes it for, with auth on


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the server presents


@pytest.fixture(scope="module")
def pki(etcd_pki: testing.Pki) -> Pki:
    """The plugin's session certificates, made in Python (``make_pki``)."""
    cert, key = etcd_pki.client(CLIENT_USER)
    return Pki(etcd_pki.ca, etcd_pki.server_cert, etcd_pki.server_key, cert, key, etcd_pki.other_ca)


@pytest.fixture(scope="module")
def tls_server(etcd_tls_server: EtcdServer) -> EtcdServer:
    """The plugin's etcd behind TLS that requires a client certificate."""
    return etcd_tls_server


def _tls_config(
    server: EtcdServer, pki: Pki, request: pytest.FixtureRequest, **kw: object
) -> Config:
    base: dict[str, object] = {
        "endpoints": (server.client_url,),
        "namespace": unique_namespace(request.node.name),
        "ca_cert": pki.ca,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
        "ttl": 3.0,
        "connect_timeout": CONNECT_TIMEOUT,
    }
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


# -- TLS --------------------------------------------------------------------------------------


async def test_launcher_serves_https(tls_server: EtcdServer) -> None:
    assert tls_server.client_url == f"https://{tls_server.endpoint}"
    assert tls_server.is_healthy()


async def test_mutual_tls_kv_session_and_view(
    tls_server: EtcdServer, pki: Pki, request: pytest.FixtureRequest
) -> None:
    cfg = _tls_config(tls_server, pki, request)
    assert cfg.tls and cfg.endpoints == (tls_server.endpoint,)
    p = cfg.keyspace.prefix
    async with open_transport(cfg) as t:
        await t.put(p + b"k", b"v")
        kv = await t.get(p + b"k")
        assert kv is not None and kv.value == b"v"
        async with open_session(t) as session, open_view(t, p + b"live/") as view:
            lease = session.lease
            assert (await t.lease_time_to_live(lease.id)).ttl > 0
            put = await t.put(p + b"live/me", b"here", lease=lease.id)
            with anyio.fail_after(5):
                seen = await view.wait_for_key(p + b"live/me", put.revision)
            assert seen is not None and seen.value == b"here" and seen.lease == lease.id


async def test_server_name_override(
    tls_server: EtcdServer, pki: Pki, request: pytest.FixtureRequest
) -> None:
    # the certificate names DNS:localhost as well as IP:127.0.0.1
    async with open_transport(_tls_config(tls_server, pki, request, server_name="localhost")) as t:
        assert (await t.status()).version
    wrong = _tls_config(tls_server, pki, request, server_name="etcd.example.invalid")
    with pytest.raises(EtcdUnavailableError):
        async with open_transport(wrong):
            raise AssertionError("connected although the certificate does not name the server")


@pytest.mark.parametrize("case", ["no-client-cert", "wrong-ca", "plaintext"])
async def test_refused_connections_fail_within_connect_timeout(
    tls_server: EtcdServer, pki: Pki, request: pytest.FixtureRequest, case: str
) -> None:
    if case == "no-client-cert":
        cfg = _tls_config(tls_server, pki, request, client_cert=None, client_key=None)
    elif case == "wrong-ca":
        cfg = _tls_config(tls_server, pki, request, ca_cert=pki.other_ca)
    else:
        cfg = _tls_config(
            tls_server,
            pki,
            request,
            endpoints=(tls_server.endpoint,),
            ca_cert=None,
            client_cert=None,
            client_key=None,
        )
    started = time.monotonic()
    with pytest.raises((EtcdUnavailableError, AuthError)) as info:
        async with open_transport(cfg):
            raise AssertionError(f"{case}: connected")
    elapsed = time.monotonic() - started
    assert elapsed < CONNECT_TIMEOUT + 2.0, f"{case}: failed only after {elapsed:.1f} s"
    assert tls_server.endpoint in str(info.value) or isinstance(info.value, AuthError)


# -- authentication ---------------------------------------------------------------------------


def _etcdctl(server: EtcdServer, *args: str, user: str | None = None) -> str:
    etcdctl = Path(find_etcd_binary()).with_name("etcdctl")
    if not etcdctl.is_file():
        pytest.skip(f"no etcdctl next to {find_etcd_binary()}")
    argv = [str(etcdctl), f"--endpoints={server.client_url}", "--command-timeout=5s"]
    if user is not None:
        argv.append(f"--user={user}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    done = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=20, env=env, check=False
    )
    assert done.returncode == 0, f"etcdctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def auth_server() -> Iterator[EtcdServer]:
    """An etcd with auth on: root, and alice confined to tenant ``tenant-a`` of ``ns-a``.

    Simple tokens expire after ``TOKEN_TTL`` seconds unused.
    """
    server = EtcdServer("auth", extra_args=("--auth-token-ttl", str(TOKEN_TTL)))
    try:
        server.start()
        _etcdctl(server, "user", "add", f"root:{ROOT_PASSWORD}")
        _etcdctl(server, "user", "grant-role", "root", "root")
        _etcdctl(server, "role", "add", "tenant-a")
        _etcdctl(
            server, "role", "grant-permission", "tenant-a", "--prefix=true",
            "readwrite", "/ns-a/tenant-a/",
        )  # fmt: skip
        _etcdctl(
            server, "role", "grant-permission", "tenant-a", "--prefix=true",
            "read", "/ns-a/_system/quotas/tenant-a/",
        )  # fmt: skip
        _etcdctl(
            server, "role", "grant-permission", "tenant-a", "--prefix=true",
            "readwrite", "/ns-a/_system/quotas/tenant-a/queue/",
        )  # fmt: skip
        _etcdctl(server, "user", "add", f"alice:{ALICE_PASSWORD}")
        _etcdctl(server, "user", "grant-role", "alice", "tenant-a")
        _etcdctl(server, "auth", "enable")
        yield server
    finally:
        server.close()


def _auth_config(server: EtcdServer, user: str, password: str, **kw: object) -> Config:
    base: dict[str, object] = {
        "endpoints": (server.endpoint,),
        "namespace": "ns-a",
        "tenant": "tenant-a",
        "user": user,
        "password": password,
        "ttl": 3.0,
        "connect_timeout": CONNECT_TIMEOUT * 3,
    }
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def _token(t: Transport) -> str:
    # white-box: the token the transport sends, to prove that it was replaced
    return dict(t._metadata)["token"]


async def test_tenant_works_in_its_prefix(auth_server: EtcdServer) -> None:
    cfg = _auth_config(auth_server, "alice", ALICE_PASSWORD)
    p = cfg.keyspace.prefix + b"t1/"
    async with open_transport(cfg) as t:
        await t.put(p + b"k", b"v")
        kv = await t.get(p + b"k")
        assert kv is not None and kv.value == b"v"
        async with open_session(t) as session, open_view(t, p) as view:
            put = await t.put(p + b"leased", b"x", lease=session.lease.id)
            with anyio.fail_after(5):
                seen = await view.wait_for_key(p + b"leased", put.revision)
            assert seen is not None and seen.lease == session.lease.id
        # the session revoked its lease (alice may: every key on it is hers)
        assert await t.get(p + b"leased") is None


async def test_tenant_is_confined_to_its_prefix(auth_server: EtcdServer) -> None:
    cfg = _auth_config(auth_server, "alice", ALICE_PASSWORD)
    outside = [
        b"/ns-a/tenant-b/x",
        b"/ns-a/x",
        cfg.keyspace.quota_limit("gpu"),
        b"/ns-a/_system/quotas/tenant-b/queue/gpu/x",
        b"/other",
    ]
    async with open_transport(cfg) as t:
        for key in outside:
            with pytest.raises(AuthError):
                await t.put(key, b"intruder")
        with pytest.raises(AuthError):
            await t.get(b"/ns-a/tenant-b/x")
        with pytest.raises(AuthError):
            await t.get_prefix(b"/ns-a/")
    root = _auth_config(auth_server, "root", ROOT_PASSWORD)
    async with open_transport(root) as t:
        for key in outside:
            assert await t.get(key) is None


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "x")])
async def test_bad_credentials_refused_at_connect(
    auth_server: EtcdServer, user: str, password: str
) -> None:
    started = time.monotonic()
    with pytest.raises(AuthError):
        async with open_transport(_auth_config(auth_server, user, password)):
            raise AssertionError("connected with bad credentials")
    assert time.monotonic() - started < CONNECT_TIMEOUT * 3


async def test_no_credentials_refused_when_auth_is_on(auth_server: EtcdServer) -> None:
    cfg = Config(endpoints=(auth_server.endpoint,), namespace="ns-a", tenant="tenant-a")
    async with open_transport(cfg) as t:  # Status needs no token
        with pytest.raises(AuthError):
            await t.get(cfg.keyspace.prefix + b"k")
        with pytest.raises(AuthError):
            await t.put(cfg.keyspace.prefix + b"k", b"v")


async def test_expired_token_is_renewed(auth_server: EtcdServer) -> None:
    cfg = _auth_config(auth_server, "alice", ALICE_PASSWORD)
    p = cfg.keyspace.prefix + b"ttl/"
    async with (
        open_transport(cfg) as reader,
        open_transport(cfg) as writer,
        open_transport(cfg) as opener,
    ):
        await writer.put(p + b"k", b"1")
        assert (await reader.get(p + b"k")) is not None
        await opener.status()
        old = {id(t): _token(t) for t in (reader, writer, opener)}
        # unused for longer than the TTL (etcd checks expiry once a second)
        await anyio.sleep(TOKEN_TTL + 1.5)
        put = await writer.put(p + b"k", b"2")  # a write: rejected unapplied, then retried
        kv = await reader.get(p + b"k")
        assert kv is not None and kv.value == b"2" and kv.mod_revision == put.revision
        async with open_session(opener) as session, open_view(opener, p) as view:
            assert session.lease.id and view.get(p + b"k") is not None
        for t in (reader, writer, opener):
            assert _token(t) != old[id(t)], "the token was not renewed: did it expire?"


async def test_limits_readable_but_not_settable_by_tenant(auth_server: EtcdServer) -> None:
    root = _auth_config(auth_server, "root", ROOT_PASSWORD)
    async with connect(root, node_id="admin", hosts_agents=False) as admin:
        await admin.quotas.set_limit("gpu", 2)
    cfg = _auth_config(auth_server, "alice", ALICE_PASSWORD)
    async with connect(cfg, node_id="a") as c:
        assert await c.quotas.get_limit("gpu") == 2
        with pytest.raises(AuthError):
            await c.quotas.set_limit("gpu", 100)
        assert await c.quotas.get_limit("gpu") == 2
        async with c.quotas.reserve({"gpu": 2}) as r:  # judged against the read-only limit
            assert r.amounts == {"gpu": 2}
            usage = await c.quotas.open_usage("gpu")
            assert (usage.limit, usage.used) == (2, 2)


def test_reserved_tenant_is_refused_at_construction(auth_server: EtcdServer) -> None:
    # a tenant named _system would own /ns-a/_system/, where every tenant's limits live:
    # a role granted on "its" prefix would let it raise every limit
    for reserved in ("_system", "_sys", "_"):
        with pytest.raises(InvalidIdError, match="reserved for the library"):
            _auth_config(auth_server, "alice", ALICE_PASSWORD, tenant=reserved)
        with pytest.raises(InvalidIdError, match="reserved for the library"):
            _auth_config(auth_server, "alice", ALICE_PASSWORD, namespace=reserved)
        with pytest.raises(InvalidIdError):
            Keyspace("ns-a", reserved)
    cfg = _auth_config(auth_server, "alice", ALICE_PASSWORD)
    assert not cfg.keyspace.prefix.startswith(cfg.keyspace.system_prefix)


CRAFTED = {
    "negative": b'{"amounts": {"cpu": -100}}',
    "zero": b'{"amounts": {"cpu": 0}}',
    "garbage": b"\x00\xff{{ not json",
    "huge": b'{"amounts": {"cpu": 1' + b"0" * 30 + b"}}",
    "float": b'{"amounts": {"cpu": 0.001}}',
    "other-pool": b'{"amounts": {"gpu": 1}}',
}


async def test_tenant_cannot_escape_its_limit_with_crafted_entries(
    auth_server: EtcdServer,
) -> None:
    root = _auth_config(auth_server, "root", ROOT_PASSWORD)
    async with connect(root, node_id="admin-crafted", hosts_agents=False) as admin:
        await admin.quotas.set_limit("cpu", 2)
    cfg = _auth_config(auth_server, "alice", ALICE_PASSWORD)
    qp = cfg.keyspace.quota_queue_prefix("cpu")
    held = peak = 0
    admitted: list[tuple[int, anyio.Event]] = []
    changed = anyio.Event()

    async def user(c: Cluster, amount: int) -> None:
        nonlocal held, peak, changed
        async with c.quotas.reserve({"cpu": amount}):
            held += amount
            peak = max(peak, held)
            release = anyio.Event()
            admitted.append((amount, release))
            changed.set()
            changed = anyio.Event()
            await release.wait()
            held -= amount

    async def until(predicate: Callable[[], bool]) -> None:
        while not predicate():
            await changed.wait()

    async with (
        connect(cfg, node_id="victim-1") as c1,
        connect(cfg, node_id="victim-2") as c2,
        open_transport(cfg) as evil,  # the same tenant's user, no library in between
    ):
        q = c1.quotas
        await q.open_usage("cpu")
        with anyio.fail_after(20):
            # the tenant's role may write its own queue (that is how it reserves): use it
            for kind, value in CRAFTED.items():
                await evil.put(qp + f"evil-{kind}".encode(), value)
            u = await q.open_usage("cpu")
            assert (u.used, u.malformed) == (2, len(CRAFTED))
            with pytest.raises(QuotaExceededError):
                async with c2.quotas.reserve_nowait({"cpu": 1}):
                    raise AssertionError("admitted behind crafted entries")

            async with anyio.create_task_group() as tg:
                tg.start_soon(user, c1, 2)
                await wait_until(lambda: len(q._waiters) == 1)
                tg.start_soon(user, c2, 1)
                tg.start_soon(user, c2, 1)
                await wait_until(lambda: len(c2.quotas._waiters) == 2)
                # each crafted entry blocks the queue on its own: deleting all but the last
                # admits nobody
                for kind in list(CRAFTED)[:-1]:
                    await evil.delete(qp + f"evil-{kind}".encode())
                    assert (await q.open_usage("cpu")).malformed >= 1
                    assert (await c2.quotas.open_usage("cpu")).used == 2
                    assert admitted == []
                await evil.delete(qp + f"evil-{list(CRAFTED)[-1]}".encode())
                await until(lambda: len(admitted) == 1)  # the first in line, 2 of 2
                assert admitted[0][0] == 2

                # rewrite the holder's key to a smaller, well-formed amount: a rewritten key
                # is not what reserve writes, so it frees nothing for the two waiting for 1
                first = min((await evil.get_prefix(qp)).kvs, key=lambda kv: kv.create_revision)
                await evil.put(first.key, b'{"amounts": {"cpu": 1}, "holder": "victim-1"}')
                u = await c2.quotas.open_usage("cpu")
                assert u.malformed == 1 and len(admitted) == 1
                # a crafted entry appended behind everyone blocks nobody ahead of it
                await evil.put(qp + b"evil-late", CRAFTED["negative"])
                admitted[0][1].set()  # the holder releases: the two 1s are admitted together
                await until(lambda: len(admitted) == 3)
                assert held == 2
                for _, release in admitted[1:]:
                    release.set()
            # everyone released: the late crafted entry alone blocks the whole limit
            with pytest.raises(QuotaExceededError):
                async with c1.quotas.reserve_nowait({"cpu": 1}):
                    raise AssertionError("admitted behind the late crafted entry")
            await evil.delete(qp + b"evil-late")
            async with c1.quotas.reserve_nowait({"cpu": 2}):  # the whole limit is free again
                pass
    assert peak == 2


async def test_view_resumes_after_restart_invalidates_the_token(auth_server: EtcdServer) -> None:
    # runs last in this file: it restarts the module's server (simple tokens die with it)
    cfg = _auth_config(auth_server, "alice", ALICE_PASSWORD)
    p = cfg.keyspace.prefix + b"restart/"
    async with open_transport(cfg) as t, open_view(t, p) as view:
        await auth_server.arestart()
        async with open_transport(cfg) as other:  # a fresh token
            put = await other.put(p + b"k", b"after restart")
        with anyio.fail_after(4):
            kv = await view.wait_for_key(p + b"k", put.revision)
        assert kv is not None and kv.value == b"after restart"
