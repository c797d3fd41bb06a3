"""Test harness: real etcd servers, clusters and a fault proxy, as a pytest plugin.

The fixtures live in :mod:`foundation_etcd.testing.plugin`, loaded automatically by pytest
once the package is installed. The classes here can also be used on their own::

    with EtcdCluster(3) as cluster, FaultProxy(cluster.endpoints[0]) as proxy:
        cluster.kill(cluster.wait_leader())
        proxy.blackhole()

This package root only re-exports; the implementation lives in private modules, one
concept each: ``_errors``, ``_discovery`` (the etcd binary), ``_ports``, ``_processes``
(children bounded by the test run), ``_tls``, ``_http`` (health and status requests),
``_server``, ``_cluster``, ``_proxy`` (with ``_sockets``) and ``_waiting``. Every class
and function exported here names this package as its ``__module__``, the path to import it
from.
"""

from ._cluster import EtcdCluster, EtcdClusterFactory
from ._discovery import BIN_ENV, find_etcd_binary
from ._errors import EtcdHarnessError, EtcdNotFoundError, EtcdStartError
from ._ports import free_ports
from ._proxy import FaultProxy, FaultProxyFactory, ProxyMode, ProxyStatistics
from ._server import EtcdServer, EtcdServerFactory
from ._tls import TlsFiles
from ._waiting import wait_until

__all__ = [
    "BIN_ENV",
    "EtcdCluster",
    "EtcdClusterFactory",
    "EtcdHarnessError",
    "EtcdNotFoundError",
    "EtcdServer",
    "EtcdServerFactory",
    "EtcdStartError",
    "FaultProxy",
    "FaultProxyFactory",
    "ProxyMode",
    "ProxyStatistics",
    "TlsFiles",
    "find_etcd_binary",
    "free_ports",
    "wait_until",
]

for _public in (
    EtcdCluster,
    EtcdClusterFactory,
    EtcdHarnessError,
    EtcdNotFoundError,
    EtcdServer,
    EtcdServerFactory,
    EtcdStartError,
    FaultProxy,
    FaultProxyFactory,
    ProxyMode,
    ProxyStatistics,
    TlsFiles,
    find_etcd_binary,
    free_ports,
    wait_until,
):
    _public.__module__ = __name__
del _public
