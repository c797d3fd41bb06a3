"""The fenced-store example: a SQLite store outside etcd refuses a stale leader's token."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from foundation_etcd import Config, Election, LeadershipLostError, Session, open_session
from foundation_etcd.lowlevel import open_transport

pytestmark = pytest.mark.etcd

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fenced_store.py"


def load_example():
    spec = importlib.util.spec_from_file_location("fenced_store_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_stale_leader_is_refused_by_the_store(etcd_config: Config, tmp_path: Path) -> None:
    """a leads; its lease goes (as at expiry) while it still holds its token; b leads with a
    higher token; a's late write is refused by the store, which keeps b's value."""
    ex = load_example()
    store = ex.FencedStore(str(tmp_path / "store.db"))
    target = etcd_config.keyspace.key("report")
    elected = anyio.Event()

    async def lead_b(b: Session, out: list[int]) -> None:
        async with Election(b, "writer").campaign("b") as lead:
            out.append(lead.fencing_token)
            store.write(lead.fencing_token, "report", "by b")
            await lead.put(target, "by b")
            elected.set()

    with anyio.fail_after(20):
        async with open_transport(etcd_config) as t, open_session(t) as a, open_session(t) as b:
            b_token: list[int] = []
            async with anyio.create_task_group() as tg:
                with pytest.raises(LeadershipLostError) as lost:
                    async with Election(a, "writer").campaign("a") as stale:
                        store.write(stale.fencing_token, "report", "by a")
                        tg.start_soon(lead_b, b, b_token)  # queued behind a
                        await t.lease_revoke(stale.lease_id)  # what etcd does at expiry
                        await anyio.sleep_forever()  # cancelled: a's key is gone
                await elected.wait()
            assert lost.value.token == stale.fencing_token
            assert b_token[0] > stale.fencing_token

            # a "wakes up" and writes with the token it still holds: both sides refuse it
            with pytest.raises(ex.StaleTokenError):
                store.write(stale.fencing_token, "report", "stale, by a")
            with pytest.raises(LeadershipLostError):
                await stale.put(target, "stale, by a")
            kv = await t.get(target)
            assert kv is not None and kv.value == b"by b"
    assert store.read("report") == "by b"
    # equal tokens are the same leader writing again; higher ones are later leaders
    store.write(b_token[0], "report", "by b again")
    store.write(b_token[0] + 1, "report", "by c")
    with pytest.raises(ex.StaleTokenError):
        store.write(b_token[0], "report", "by b, late")
    assert ex.FencedStore(str(tmp_path / "store.db")).read("report") == "by c"  # committed


async def test_example_main(etcd_config: Config) -> None:
    ex = load_example()
    lines = await ex.main(etcd_config, ex.FencedStore())
    assert lines[-2].startswith("a's late write refused: token ")
    assert lines[-1] == "report = 'by b'"


def test_example_runs_as_a_script(etcd_endpoints: list[str], etcd_namespace: str) -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), etcd_endpoints[0], etcd_namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "late write refused" in run.stdout and "report = 'by b'" in run.stdout
