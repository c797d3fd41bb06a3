"""pytest plugin: real etcd servers, clusters, fault proxies and a namespace per test.

Registered through the ``pytest11`` entry point, so installing the package is enough.

Fixtures:

* ``etcd_endpoints`` (session) — the endpoints of ``FOUNDATION_ETCD_TEST_ENDPOINTS``
  (comma-separated) when set, else of one etcd started for the session on free ports.
* ``etcd_server`` (session) — that session :class:`EtcdServer`; the test is skipped when
  the endpoints are external. Do not stop or restart it: use ``etcd_factory``.
* ``etcd_factory`` (function) — ``etcd_factory()`` returns a started private server.
* ``etcd_cluster_factory`` (function) — ``etcd_cluster_factory(size=3)`` returns a started
  cluster; ``etcd_cluster`` is one 3-member cluster.
* ``fault_proxy_factory`` (function) — ``fault_proxy_factory("host:port")`` returns a
  started :class:`FaultProxy`.
* ``etcd_namespace`` (function) — a namespace unique to the test.
* ``etcd_config`` (function) — a :class:`foundation_etcd.Config` for ``etcd_endpoints`` and
  ``etcd_namespace``, with ``ttl=3.0``.
* ``etcd_pki`` (session) — test certificates made in Python (:func:`make_pki`).
* ``etcd_tls_server`` (session) — a private etcd behind TLS with client-certificate auth.
* ``etcd_auth`` (session) — a private etcd with auth on, ``root``, and tenants ``a`` and
  ``b`` provisioned (:class:`AuthEtcd`).

Everything a fixture starts is stopped when its scope ends. When a test fails, the last
60 lines of the log of every etcd server it used are attached to its report.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from foundation_etcd import Config

    from ._auth import AuthEtcd
    from ._cluster import EtcdCluster, EtcdClusterFactory
    from ._pki import Pki
    from ._proxy import FaultProxy, FaultProxyFactory
    from ._server import EtcdServer, EtcdServerFactory

__all__ = [
    "ENDPOINTS_ENV",
    "etcd_auth",
    "etcd_cluster",
    "etcd_cluster_factory",
    "etcd_config",
    "etcd_endpoints",
    "etcd_factory",
    "etcd_namespace",
    "etcd_pki",
    "etcd_server",
    "etcd_tls_server",
    "fault_proxy_factory",
    "unique_namespace",
]

ENDPOINTS_ENV = "FOUNDATION_ETCD_TEST_ENDPOINTS"
LOG_TAIL_LINES = 60
MAX_NAMESPACE_LENGTH = 100

_SESSION_FIXTURE = "_foundation_etcd_session_server"
_SESSION_SERVER: pytest.StashKey[EtcdServer] = pytest.StashKey()
_USED_SERVERS: pytest.StashKey[list[EtcdServer]] = pytest.StashKey()
_NOT_ID = re.compile(r"[^A-Za-z0-9.:-]+")


def unique_namespace(test_name: str) -> str:
    """Make a namespace from a test name plus a random suffix.

    The result is at most 100 characters of ``[A-Za-z0-9.:-]`` (``_`` and anything else
    outside that set become ``-``), so it is a valid id whatever the test is called.

    Args:
        test_name: the test's name, e.g. ``test_lock[3-members]``.

    Returns:
        e.g. ``test-lock-3-members-5f0c1a2b``.
    """
    suffix = secrets.token_hex(4)
    slug = _NOT_ID.sub("-", test_name.replace("_", "-")).strip(".:-") or "test"
    slug = slug[: MAX_NAMESPACE_LENGTH - len(suffix) - 1].rstrip(".:-") or "test"
    return f"{slug}-{suffix}"


def _external_endpoints() -> list[str] | None:
    raw = os.environ.get(ENDPOINTS_ENV, "")
    endpoints = [e.strip() for e in raw.split(",") if e.strip()]
    return endpoints or None


def _used_servers(request: pytest.FixtureRequest) -> list[EtcdServer]:
    """The list of servers the requesting test used, kept on its item for the report."""
    stash: pytest.Stash = request.node.stash
    return stash.setdefault(_USED_SERVERS, [])


def _close_all(closers: Sequence[Callable[[], None]]) -> None:
    """Call every closer, even when some fail; re-raise the first failure."""
    first: Exception | None = None
    for close in closers:
        try:
            close()
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


@pytest.fixture(scope="session")
def _foundation_etcd_session_server(request: pytest.FixtureRequest) -> Iterator[EtcdServer | None]:
    """The session's own etcd server, or ``None`` when the endpoints are external."""
    if _external_endpoints() is not None:
        yield None
        return
    from . import EtcdServer

    server = EtcdServer(name="session")
    request.config.stash[_SESSION_SERVER] = server
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_endpoints(_foundation_etcd_session_server: EtcdServer | None) -> list[str]:
    """Endpoints of the etcd the tests run against (external or the session's server)."""
    if _foundation_etcd_session_server is None:
        external = _external_endpoints()
        assert external is not None
        return external
    return [_foundation_etcd_session_server.endpoint]


@pytest.fixture(scope="session")
def etcd_server(_foundation_etcd_session_server: EtcdServer | None) -> EtcdServer:
    """The session's etcd server; skips the test when the endpoints are external."""
    if _foundation_etcd_session_server is None:
        pytest.skip(
            f"needs the plugin's own etcd server, but {ENDPOINTS_ENV} points at external "
            "endpoints (use etcd_factory for a private server)"
        )
    return _foundation_etcd_session_server


@pytest.fixture
def etcd_factory(request: pytest.FixtureRequest) -> Iterator[EtcdServerFactory]:
    """A callable that starts a fresh private etcd server; all are closed at teardown."""
    from . import EtcdServer

    servers: list[EtcdServer] = []
    used = _used_servers(request)

    def factory(
        name: str | None = None,
        *,
        heartbeat_interval: float = 0.05,
        election_timeout: float = 0.5,
        extra_args: Sequence[str] = (),
    ) -> EtcdServer:
        server = EtcdServer(
            name,
            heartbeat_interval=heartbeat_interval,
            election_timeout=election_timeout,
            extra_args=extra_args,
        )
        servers.append(server)
        used.append(server)
        server.start()
        return server

    yield factory
    _close_all([s.close for s in servers])


@pytest.fixture
def etcd_cluster_factory(request: pytest.FixtureRequest) -> Iterator[EtcdClusterFactory]:
    """A callable that starts a fresh etcd cluster; all are closed at teardown."""
    from . import EtcdCluster

    clusters: list[EtcdCluster] = []
    used = _used_servers(request)

    def factory(
        size: int = 3,
        *,
        heartbeat_interval: float = 0.05,
        election_timeout: float = 0.5,
        extra_args: Sequence[str] = (),
    ) -> EtcdCluster:
        cluster = EtcdCluster(
            size,
            heartbeat_interval=heartbeat_interval,
            election_timeout=election_timeout,
            extra_args=extra_args,
        )
        clusters.append(cluster)
        try:
            cluster.start()
        finally:  # (a start on ports taken meanwhile makes the members anew)
            used.extend(cluster.members)
        return cluster

    yield factory
    _close_all([c.close for c in clusters])


@pytest.fixture
def etcd_cluster(etcd_cluster_factory: EtcdClusterFactory) -> EtcdCluster:
    """A started 3-member etcd cluster, closed at teardown."""
    return etcd_cluster_factory(3)


@pytest.fixture
def fault_proxy_factory() -> Iterator[FaultProxyFactory]:
    """A callable that starts a :class:`FaultProxy` to ``host:port``; all closed at teardown."""
    from . import FaultProxy

    proxies: list[FaultProxy] = []

    def factory(target: str) -> FaultProxy:
        proxy = FaultProxy(target)
        proxies.append(proxy)
        return proxy.start()

    yield factory
    _close_all([p.close for p in proxies])


@pytest.fixture(scope="session")
def etcd_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test certificates made in Python (``make_pki``), for the session.

    A CA, a server certificate for ``127.0.0.1`` and ``localhost``, a client certificate for
    user ``client``, and a CA that signed nothing.
    """
    from . import make_pki

    return make_pki(tmp_path_factory.mktemp("etcd-pki"))


@pytest.fixture(scope="session")
def etcd_tls_server(request: pytest.FixtureRequest, etcd_pki: Pki) -> Iterator[EtcdServer]:
    """A private etcd behind TLS that requires a client certificate, for the session.

    Clients need a certificate signed by ``etcd_pki.ca`` (``--client-cert-auth``):
    ``cert, key = etcd_pki.client("client")`` then ``Config(endpoints=(server.client_url,),
    ca_cert=etcd_pki.ca, client_cert=cert, client_key=key)``.
    """
    from . import EtcdServer

    server = EtcdServer("tls", tls=etcd_pki.tls_files(client_cert_auth=True))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_auth() -> Iterator[AuthEtcd]:
    """A private etcd with authentication on and two tenants, for the session.

    ``root`` and tenants ``a`` and ``b`` of namespace ``tenants`` are provisioned
    (``start_auth_etcd``): ``etcd_auth.tenant_config("a")`` works as tenant a's own user,
    ``etcd_auth.root_config()`` as root.
    """
    from . import start_auth_etcd

    auth = start_auth_etcd()
    try:
        yield auth
    finally:
        auth.server.close()


@pytest.fixture
def etcd_namespace(request: pytest.FixtureRequest) -> str:
    """A namespace unique to this test: its name plus a random suffix."""
    return unique_namespace(request.node.name)


@pytest.fixture
def etcd_config(etcd_endpoints: list[str], etcd_namespace: str) -> Config:
    """A configuration for the test's etcd and namespace, with a short ``ttl`` (3 s)."""
    from foundation_etcd import Config

    return Config(endpoints=tuple(etcd_endpoints), namespace=etcd_namespace, ttl=3.0)


def _servers_of(item: pytest.Item) -> list[EtcdServer]:
    servers = list(item.stash.get(_USED_SERVERS, None) or ())
    session = item.config.stash.get(_SESSION_SERVER, None)
    if session is not None and _SESSION_FIXTURE in getattr(item, "fixturenames", ()):
        servers.insert(0, session)
    args = getattr(item, "funcargs", {})  # the session's private servers the test used
    for server in (args.get("etcd_tls_server"), getattr(args.get("etcd_auth"), "server", None)):
        if server is not None and server not in servers:
            servers.append(server)
    return servers


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the etcd log tails to the report of a test that failed in setup or call."""
    excinfo = call.excinfo
    if (
        call.when in ("setup", "call")
        and excinfo is not None
        and not excinfo.errisinstance((pytest.skip.Exception, pytest.xfail.Exception))
    ):
        for server in _servers_of(item):
            tail = server.log_tail(LOG_TAIL_LINES) or "(empty)"
            item.add_report_section(call.when, f"etcd log {server.name} ({server.endpoint})", tail)
    return (yield)
