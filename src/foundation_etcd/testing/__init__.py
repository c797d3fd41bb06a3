"""Test harness: real etcd servers, clusters and a fault proxy, as a pytest plugin.

The fixtures live in :mod:`foundation_etcd.testing.plugin`, loaded automatically by pytest
once the package is installed. The classes here can also be used on their own::

    with EtcdCluster(3) as cluster, FaultProxy(cluster.endpoints[0]) as proxy:
        cluster.kill(cluster.wait_leader())
        proxy.blackhole()
"""

from ._cluster_launcher import EtcdCluster, EtcdClusterFactory
from ._launcher import (
    BIN_ENV,
    EtcdHarnessError,
    EtcdNotFoundError,
    EtcdServer,
    EtcdServerFactory,
    EtcdStartError,
    TlsFiles,
    find_etcd_binary,
    free_ports,
)
from ._proxy import FaultProxy, FaultProxyFactory, ProxyMode, ProxyStatistics
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
