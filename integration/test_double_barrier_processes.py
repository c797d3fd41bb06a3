import signal
import time

import anyio
import pytest

from foundation_etcd import Barrier, Config, open_session
from foundation_etcd.lowlevel import open_transport, prefix_end
from foundation_etcd.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_killed_participant_holds_leave_until_its_lease_expires(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker
) -> None:
    """5 processes enter (count 5); one is SIGKILLed inside; the 4 others call leave at once
    and are released only after etcd deletes the dead one's key, at its lease's expiry."""
    ttl = 2.0
    name, gate = "party", "party-gate"
    prefix = etcd_config.keyspace.double_barrier_prefix(name)
    deleted: dict[bytes, tuple[int, float]] = {}  # key -> (revision, time seen)
    async with open_transport(etcd_config) as t, open_session(t) as s:
        assert await Barrier(s, gate).set()
        start = await t.revision() + 1

        async def observe() -> None:
            stream = t.open_watch()
            try:
                end = prefix_end(prefix)
                await stream.create(prefix, end, start, progress_notify=False)
                while True:
                    for ev in (await stream.read()).events:
                        if ev.type.value == "delete":
                            deleted[ev.kv.key] = (ev.revision, time.time())
            finally:
                stream.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(observe)
            args = [",".join(etcd_endpoints), etcd_config.namespace, name, "5", str(ttl), gate]
            workers = [spawn_worker("integration.workers.barrier_party", *args) for _ in range(5)]
            leases = [(await w.next_event("ready"))["lease"] for w in workers]
            with anyio.fail_after(20):
                entered = [await w.next_event("entered") for w in workers]
            assert {e["round"] for e in entered} == {1}
            dead, rest = workers[0], workers[1:]
            dead_key = entered[0]["key"].encode()
            granted = (await t.lease_time_to_live(leases[0])).granted_ttl
            assert granted >= ttl
            dead.signal(signal.SIGKILL)
            killed_at = time.time()
            assert await Barrier(s, gate).remove()
            leaving = [await w.next_event("leaving") for w in rest]
            with anyio.fail_after(granted + 10):
                left = [await w.next_event("left") for w in rest]
                await wait_until(lambda: dead_key in deleted)
            tg.cancel_scope.cancel()
        dead_rev, dead_seen = deleted[dead_key]
        released = sorted(o["t"] - killed_at for o in left)
        print(
            f"lease ttl {granted} s; dead key deleted at revision {dead_rev}, "
            f"{dead_seen - killed_at:.2f} s after the kill; released "
            f"{released[0]:.2f}-{released[-1]:.2f} s after it"
        )
        for w, lv, out in zip(rest, leaving, left, strict=True):
            assert lv["t"] < dead_seen, "leave was called only after the dead key went"
            assert out["revision"] >= dead_rev, f"released before the dead key's deletion: {out}"
            # its lease was last renewed at most one keepalive interval before the kill
            assert out["t"] - killed_at >= granted - ttl / 6 - 0.2, (out, killed_at)
            assert all(e["event"] != "error" for e in w.events)
        for e in entered[1:]:  # the survivors' own keys went before they were released
            rev, _ = deleted[e["key"].encode()]
            assert rev < max(o["revision"] for o in left)
        assert max(rev for rev, _ in deleted.values()) <= min(o["revision"] for o in left)
        assert (await t.get_prefix(prefix + b"w/")).kvs == []
