"""The plugin's public security fixtures, used as a user's test suite would use them.

``etcd_auth`` (auth on, tenants ``a`` and ``b``) and ``etcd_pki``/``etcd_tls_server`` (TLS
with client certificates; ``tests/test_tls_auth.py`` runs its TLS cases on them too). The
first test is the example of docs/testing.md.
"""

from __future__ import annotations

import anyio
import pytest

from foundation_etcd import AuthError, Config, connect
from foundation_etcd.lowlevel import open_transport
from foundation_etcd.testing import AuthEtcd, EtcdServer, Pki

pytestmark = pytest.mark.etcd


async def test_a_cannot_write_b(etcd_auth: AuthEtcd) -> None:
    with anyio.fail_after(20):
        async with open_transport(etcd_auth.root_config()) as root:
            before = await root.revision()
        async with connect(etcd_auth.tenant_config("a"), node_id="a1") as a:
            async with a.lock("work").acquire():  # its own keys: fine
                pass
            with pytest.raises(AuthError):
                await a.transport.put(b"/tenants/b/state/x", b"1")
        with pytest.raises(AuthError):  # its user on b's keys: refused at the first read
            async with connect(etcd_auth.tenant_config("a", keys_of="b"), node_id="a2"):
                raise AssertionError("tenant a's user connected on tenant b's keys")
        async with open_transport(etcd_auth.root_config()) as root:
            assert await root.revision() > before  # a's own work
            assert (await root.get(b"/tenants/b/state/x")) is None
            keys = [kv.key for kv in (await root.get_prefix(b"/tenants/b/")).kvs]
            assert all(k.startswith(b"/tenants/b/audit/") for k in keys), keys  # its creation


async def test_tls_server_needs_the_client_certificate(
    etcd_pki: Pki, etcd_tls_server: EtcdServer
) -> None:
    cert, key = etcd_pki.client("client")
    cfg = Config(
        endpoints=(etcd_tls_server.client_url,),
        namespace="fixtures",
        ca_cert=etcd_pki.ca,
        client_cert=cert,
        client_key=key,
        connect_timeout=2.0,
    )
    with anyio.fail_after(20):
        async with open_transport(cfg) as t:
            await t.put(b"/fixtures/k", b"v")
            assert (await t.get(b"/fixtures/k")).value == b"v"
        wrong_ca = cfg.with_options(ca_cert=etcd_pki.other_ca)
        with pytest.raises(Exception) as info:
            async with open_transport(wrong_ca):
                raise AssertionError("connected trusting the wrong CA")
        assert "AssertionError" not in repr(info.value)
