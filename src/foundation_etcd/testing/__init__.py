"""Test harness: real etcd servers, clusters and a fault proxy, as a pytest plugin.

The fixtures live in :mod:`foundation_etcd.testing.plugin`, loaded automatically by pytest
once the package is installed. The classes here can also be used on their own::

    with EtcdCluster(3) as cluster, FaultProxy(cluster.endpoints[0]) as proxy:
        cluster.kill(cluster.wait_leader())
        proxy.blackhole()

This package root only re-exports; the implementation lives in private modules, one
concept each: ``_errors``, ``_discovery`` (the etcd binary), ``_ports``, ``_processes``
(children bounded by the test run), ``_tls``, ``_http`` (health and status requests),
``_server``, ``_cluster``, ``_proxy`` (with ``_sockets``), ``_pki`` (test certificates),
``_auth`` (an etcd with auth on and tenants) and ``_waiting``. Every class
and function exported here names this package as its ``__module__``, the path to import it
from.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING
from typing import Any as _Any

if TYPE_CHECKING:  # for type checkers; at run time each name loads on first use
    from ._auth import AuthEtcd, start_auth_etcd
    from ._cluster import EtcdCluster, EtcdClusterFactory
    from ._discovery import BIN_ENV, find_etcd_binary
    from ._errors import EtcdHarnessError, EtcdNotFoundError, EtcdStartError
    from ._pki import Pki, make_pki
    from ._ports import free_ports
    from ._proxy import FaultProxy, FaultProxyFactory, ProxyMode, ProxyStatistics
    from ._server import EtcdServer, EtcdServerFactory
    from ._tls import TlsFiles
    from ._waiting import wait_until

__all__ = [
    "BIN_ENV",
    "AuthEtcd",
    "EtcdCluster",
    "EtcdClusterFactory",
    "EtcdHarnessError",
    "EtcdNotFoundError",
    "EtcdServer",
    "EtcdServerFactory",
    "EtcdStartError",
    "FaultProxy",
    "FaultProxyFactory",
    "Pki",
    "ProxyMode",
    "ProxyStatistics",
    "TlsFiles",
    "find_etcd_binary",
    "free_ports",
    "make_pki",
    "start_auth_etcd",
    "wait_until",
]

# Where each name lives. pytest loads the plugin (this package's ``plugin``) in every run of
# every project where foundation-etcd is installed, so nothing is imported before it is
# used; the imports under TYPE_CHECKING above say the same for type checkers.
_SOURCES = {
    "._auth": "AuthEtcd start_auth_etcd",
    "._cluster": "EtcdCluster EtcdClusterFactory",
    "._discovery": "BIN_ENV find_etcd_binary",
    "._errors": "EtcdHarnessError EtcdNotFoundError EtcdStartError",
    "._pki": "Pki make_pki",
    "._ports": "free_ports",
    "._proxy": "FaultProxy FaultProxyFactory ProxyMode ProxyStatistics",
    "._server": "EtcdServer EtcdServerFactory",
    "._tls": "TlsFiles",
    "._waiting": "wait_until",
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names.split()}


def __getattr__(name: str) -> _Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    obj = getattr(_importlib.import_module(where, __name__), name)
    if isinstance(obj, type) or callable(obj):
        obj.__module__ = __name__  # the path to import it from, in reprs and docs
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
