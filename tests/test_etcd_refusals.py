"""etcd's refusals are raised at once, by name: a full etcd (space alarm) in particular.

``--quota-backend-bytes`` is set small on a private server and filled: etcd raises its
NOSPACE alarm and refuses every put and every new lease until an operator compacts,
defragments and disarms it. A new session must say so at once (not retry for its whole
connect timeout and report "unavailable"); an open session keeps its lease, since
keepalives are not writes.
"""

from __future__ import annotations

import json

import anyio
import pytest

import foundation_etcd as fe
from foundation_etcd import Config, NoSpaceError, open_session
from foundation_etcd.lowlevel import Transport, open_transport
from test_cli import cli_in_process  # tests/ is on sys.path (pytest's rootdir import mode)

pytestmark = [pytest.mark.etcd]

QUOTA = 2 * 1024 * 1024


async def fill(t: Transport, prefix: bytes) -> None:
    """Write 256 KiB values until etcd refuses with its space alarm."""
    blob = b"x" * (256 * 1024)
    with anyio.fail_after(60):
        for i in range(10_000):
            try:
                await t.put(prefix + b"fill-%05d" % i, blob)
            except NoSpaceError:
                return
    raise AssertionError("etcd never raised its space alarm")


async def test_full_etcd_is_named_at_once_and_open_sessions_keep_their_lease(
    etcd_factory, etcd_namespace: str
) -> None:
    server = etcd_factory(extra_args=["--quota-backend-bytes", str(QUOTA)])
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, ttl=3)
    async with open_transport(cfg) as t, open_session(t) as s:
        lease = s.lease
        await fill(t, cfg.keyspace.prefix)
        before = await t.revision()

        # a write: refused at once, with etcd's reason and what to do
        started = anyio.current_time()
        with pytest.raises(NoSpaceError, match="database space exceeded") as info:
            await t.put(cfg.keyspace.key("one-more"), b"1")
        assert "disarm" in str(info.value)
        assert isinstance(info.value, fe.EtcdServerError)
        assert anyio.current_time() - started < 1.0

        # a new session (and a new cluster member): refused at once, not after 5 s
        for attempt in ("session", "connect"):
            started = anyio.current_time()
            with pytest.raises(NoSpaceError, match="database space exceeded"):
                if attempt == "session":
                    async with open_session(t):
                        pass
                else:
                    async with fe.connect(cfg, node_id="n1"):
                        pass
            took = anyio.current_time() - started
            assert took < 1.0, f"{attempt} took {took:.2f}s (connect_timeout 5 s)"

        # the open session rides it out: keepalives still renew the lease
        await anyio.sleep(2 * cfg.ttl)  # longer than the lease: it must have been renewed
        assert not lease.lost and s.lease is lease
        assert (await t.lease_time_to_live(lease.id)).ttl > 0
        assert await t.revision() == before  # nothing was written meanwhile

        # the CLI's health still answers: degraded, naming the alarm (it gets no session)
        out = await anyio.to_thread.run_sync(
            cli_in_process, [server.endpoint], etcd_namespace, "health", "-o", "json"
        )
        assert out.returncode == 1, out.stderr
        report = json.loads(out.stdout)
        assert report["kind"] == "Health" and report["status"] == "degraded", report
        assert report["etcd_reachable"] and report["etcd_leader"] and not report["lease_id"]
        assert any("NOSPACE" in e for e in report["etcd_errors"]), report
        assert any("refused a new session" in r for r in report["reasons"]), report
        text = await anyio.to_thread.run_sync(
            cli_in_process, [server.endpoint], etcd_namespace, "health"
        )
        assert text.returncode == 1 and text.stdout.startswith("degraded: etcd at"), text.stdout
        assert "no session" in text.stdout and "Traceback" not in text.stderr
        assert text.stdout.count("NOSPACE") == 1, text.stdout  # said once
        assert len(set(text.stdout.splitlines())) == len(text.stdout.splitlines()), text.stdout
        # a listing cannot get its session: one line that says so and names what works
        status = await anyio.to_thread.run_sync(
            cli_in_process, [server.endpoint], etcd_namespace, "status"
        )
        assert status.returncode == 1 and "database space exceeded" in status.stderr
        assert "`foundation-etcd health` works without one" in status.stderr, status.stderr
        assert len(status.stderr.strip().splitlines()) == 1, status.stderr
