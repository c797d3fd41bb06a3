"""The blocking facade (``foundation_etcd.sync``) against real etcd.

The same behaviour as the async tests, through the facade: lock mutual exclusion across
processes, election with fencing, a blocking sync hook that sleeps 3 x TTL while the
session keeps its lease, a lease revoked from outside surfacing in the sync caller, and
the edges of the facade itself (deadlines, background ``serve``, streams, async callers).
"""

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest

import foundation_etcd as fe
from foundation_etcd import Config
from foundation_etcd.lowlevel import Compare, Op, open_transport

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent


def _wait_until(predicate, limit: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)


# locks -------------------------------------------------------------------------------------
@pytest.mark.once
def test_lock_mutual_exclusion_across_processes(
    etcd_endpoints: list[str], etcd_namespace: str
) -> None:
    writers, rounds = 3, 8
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    worker = [sys.executable, str(ROOT / "tests" / "sync_lock_worker.py")]
    args = [",".join(etcd_endpoints), etcd_namespace]
    procs = [
        subprocess.Popen(
            [*worker, *args, f"w{i}", str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for i in range(writers)
    ]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    lines = [json.loads(line) for out, _ in outs for line in out.splitlines()]
    held = sorted((x for x in lines if "enter" in x), key=lambda x: x["enter"])
    assert len(held) == writers * rounds
    assert {x["writer"] for x in held} == {f"w{i}" for i in range(writers)}
    for before, after in itertools.pairwise(held):
        assert before["exit"] <= after["enter"], (before, after)  # never two holders
        assert before["token"] < after["token"]  # fencing tokens increase with each holder
    cfg = Config(endpoints=tuple(etcd_endpoints), namespace=etcd_namespace, ttl=3.0)
    with fe.sync.connect(cfg, node_id="reader", hosts_agents=False) as c:
        kv = c.transport.get(c.keyspace.key("test", "counter"))
        assert kv is not None and int(kv.value) == writers * rounds  # no update lost


def test_fail_after_bounds_a_lock_wait_and_leaves_no_waiter(etcd_config: Config) -> None:
    with (
        fe.sync.connect(etcd_config, node_id="a") as a,
        fe.sync.connect(etcd_config, node_id="b") as b,
        a.lock("l").acquire() as held,
    ):
        started = time.monotonic()
        with pytest.raises(TimeoutError), fe.sync.fail_after(0.5), b.lock("l").acquire():
            pytest.fail("the body ran without the lock")
        assert 0.4 < time.monotonic() - started < 5
        holder = b.lock("l").holder()
        assert holder is not None and holder.token == held.fencing_token
        waiting = b.transport.get_prefix(b.keyspace.lock_prefix("l"))
        assert [kv.key for kv in waiting.kvs] == [held.key]  # b's waiter key was deleted
        with pytest.raises(fe.LockBusyError), b.lock("l").acquire_nowait():
            pytest.fail("the body ran without the lock")


# lease loss --------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["lock", "bind", "reserve"])
def test_lease_revoked_from_outside_surfaces_in_the_sync_body(
    etcd_config: Config, scope: str
) -> None:
    expected = fe.LockLostError if scope == "lock" else fe.LeaseLostError
    with (
        fe.sync.connect(etcd_config, node_id="victim") as a,
        fe.sync.connect(etcd_config, node_id="outside", hosts_agents=False) as o,
    ):
        a.quotas.set_limit("gpu", 1)
        first = a.session.lease
        contexts = {
            "lock": lambda: a.lock("l").acquire(),
            "bind": lambda: a.session.bind(),
            "reserve": lambda: a.quotas.reserve({"gpu": 1}),
        }
        with pytest.raises(expected), contexts[scope]():
            o.transport.lease_revoke(first.id)  # the raw transport, behind a's back
            with pytest.raises(expected):  # a sync body checks without I/O
                deadline = time.monotonic() + etcd_config.ttl + 5
                while time.monotonic() < deadline:
                    fe.sync.checkpoint()
                    time.sleep(0.01)
            # (a lock ends when its key goes; the session notices at its next keepalive)
            _wait_until(lambda: first.lost, etcd_config.ttl + 5)
            with pytest.raises(expected):  # and every blocking call into the library
                a.agents()
            with pytest.raises(fe.LeaseLostError):
                first.ensure_alive()
        # outside the block the cluster works again, on a new lease
        with fe.sync.fail_after(etcd_config.ttl + 5):
            lease = a.session.wait_lease()
        assert lease.id != first.id and lease.generation == 2
        assert a.agents() == []


def test_election_with_fencing(etcd_config: Config) -> None:
    with (
        fe.sync.connect(etcd_config, node_id="a") as a,
        fe.sync.connect(etcd_config, node_id="b") as b,
    ):
        key = a.keyspace.key("jobs", "owner")
        got: dict[str, int] = {}
        leading, release = threading.Event(), threading.Event()

        def campaign_b() -> None:
            with fe.sync.fail_after(30), b.election("jobs").campaign(b"b") as lead:
                got["token"] = lead.fencing_token
                lead.put(key, b"b")
                leading.set()
                release.wait(30)

        with pytest.raises(fe.LeadershipLostError), a.election("jobs").campaign(b"a") as lead_a:
            lead_a.put(key, b"a")
            thread = threading.Thread(target=campaign_b)
            thread.start()
            time.sleep(0.3)
            assert not leading.is_set()  # b waits while a leads
            leader = b.election("jobs").leader()
            assert leader is not None and leader.value == b"a"
            b.transport.lease_revoke(lead_a.lease_id)  # a's lease ends behind its back
            assert leading.wait(etcd_config.ttl + 5)
            assert got["token"] > lead_a.fencing_token
            # a stale write carrying a's fencing compare is refused by etcd itself
            res = b.transport.txn([lead_a.guard], [Op.put(key, b"stale")])
            assert not res.succeeded
            with pytest.raises(fe.LeadershipLostError):
                lead_a.put(key, b"stale")
            kv = b.transport.get(key)
            assert kv is not None and kv.value == b"b"
        release.set()
        thread.join(10)
        assert not thread.is_alive()
        assert b.transport.txn([Compare.value(key) == b"b"]).succeeded


# sync hooks run in worker threads -----------------------------------------------------------
class Sleeper:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[str] = []
        self.done = threading.Event()

    def on_start(self, ctx: fe.AgentContext) -> None:
        self.threads.append(threading.current_thread().name)

    def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)  # blocks its thread, never the event loop
        self.done.set()


def test_blocking_sync_hook_sleeps_3_ttl_while_the_session_keeps_its_lease(
    etcd_config: Config,
) -> None:
    ttl = etcd_config.ttl
    with fe.sync.connect(etcd_config, node_id="n1") as c:
        agent = Sleeper(3 * ttl)
        with c.host(agent, "sleeper"):
            lease, before = c.session.lease, c.session.statistics()
            c.send("sleeper", "nap")
            assert agent.done.wait(3 * ttl + 20)
            after = c.session.statistics()
        loop_thread = {t.name for t in threading.enumerate() if "portal" in t.name}
        assert len(agent.threads) == 2 and not set(agent.threads) & loop_thread
        assert after.leases_lost == 0 and after.lease_id == lease.id and not lease.lost
        expected = 3 * ttl / etcd_config.keepalive_interval
        assert after.keepalives - before.keepalives >= expected / 2  # they went on meanwhile


STOP = threading.Event()


@fe.clustered("sync-ticker-test")
class Ticker:
    def __init__(self) -> None:
        self.ticks = 0

    def get_state(self) -> dict[str, int]:
        return {"ticks": self.ticks}

    def restore_state(self, state: dict[str, int]) -> None:
        self.ticks = state["ticks"]

    def run(self, ctx: fe.AgentRunContext) -> None:
        while True:  # a plain run(ctx): it checks for its stop, as docs/sync.md says
            anyio.from_thread.check_cancelled()
            self.ticks += 1
            if self.ticks == 3:
                anyio.from_thread.run(ctx.save_state, self.get_state())
            time.sleep(0.02)


@fe.clustered("sync-stuck-test")
class Stuck:
    def run(self, ctx: fe.AgentRunContext) -> None:
        STOP.wait(60)  # never checks: abandoned when the agent stops


def test_serve_in_the_background_with_sync_run_hooks(etcd_config: Config) -> None:
    classes = {"sync-ticker-test": Ticker, "sync-stuck-test": Stuck}
    try:
        with fe.sync.connect(etcd_config, node_id="n1") as c:
            serving = c.serve(classes, scheduler=False)
            assert serving.running
            c.spawn(Ticker, "ticker")
            c.spawn(Stuck, "stuck")
            _wait_until(lambda: {a.state for a in c.agents()} == {"running"}, 15, 0.1)
            state = c.keyspace.agent_state("ticker")
            _wait_until(lambda: c.transport.get(state) is not None, 10, 0.05)
            started = time.monotonic()
            serving.stop(20)  # a stuck sync run(ctx) does not hold the node's shutdown
            assert time.monotonic() - started < 10 and not serving.running
            assert c.registry.lookup("ticker") is None and c.registry.lookup("stuck") is None
    finally:
        STOP.set()


# the facade itself ------------------------------------------------------------------------
def test_streams_registry_and_views_through_the_facade(etcd_config: Config) -> None:
    with fe.sync.connect(etcd_config, node_id="n1") as a:
        with a.watch_nodes() as changes, fe.sync.connect(etcd_config, node_id="n2"):
            with fe.sync.fail_after(5):
                batch = changes.receive()
            assert [c.node.node_id for c in batch] == ["n2"]
        reg = a.registry.register("w1", capabilities=["work"])
        assert a.registry.lookup("w1") is not None
        a.wait_for(reg.incarnation)
        assert [x.agent_id for x in a.registry.find("work")] == ["w1"]
        view = a.view(a.keyspace.agents_live_prefix())
        assert list(view.items()) == [a.keyspace.agent_live("w1")]
        assert a.registry.unregister("w1")
        many = a.registry.register_many({"m1": {"i": 1}, "m2": None}, capabilities=["bulk"])
        assert list(many) == ["m1", "m2"] and set(a.registry.owned()) == {"m1", "m2"}
        with pytest.raises(fe.RegistrationsFailedError) as caught:
            with fe.sync.connect(etcd_config, node_id="n3") as b:
                b.registry.register_many(dict.fromkeys(["m2", "m3"]))
        assert list(caught.value.failed) == ["m2"] and list(caught.value.registered) == ["m3"]
    with pytest.raises(fe.SessionClosedError):
        a.agents()  # the connection is closed


def test_connect_errors_are_the_async_ones(etcd_config: Config) -> None:
    with pytest.raises(fe.InvalidIdError):
        fe.sync.connect(etcd_config, node_id="bad/id").open()
    with fe.sync.connect(etcd_config, node_id="dup") as c:
        with pytest.raises(fe.NodeExistsError), fe.sync.connect(etcd_config, node_id="dup"):
            pass
        with pytest.raises(fe.AgentNotFoundError):
            c.send("nobody", "ping")
    conn = fe.sync.connect(etcd_config, node_id="opened")
    cluster = conn.open()
    assert cluster.node("opened") is not None
    conn.close()
    conn.close()  # idempotent


async def test_sync_refuses_a_thread_that_runs_an_event_loop(etcd_config: Config) -> None:
    with pytest.raises(RuntimeError, match=r"foundation_etcd\.sync blocks"):
        fe.sync.connect(etcd_config).open()


def test_async_api_outside_asyncio_says_it_is_asyncio_only(etcd_config: Config) -> None:
    """Driven by anything but asyncio (here: by hand, as trio would), it says so first."""
    for cm in (fe.connect(etcd_config), open_transport(etcd_config)):
        coro = cm.__aenter__()
        with pytest.raises(fe.AsyncioRequiredError, match=r"asyncio only \(its transport is grpc"):
            coro.send(None)
    assert issubclass(fe.AsyncioRequiredError, fe.FoundationEtcdError)
    assert issubclass(fe.AsyncioRequiredError, RuntimeError)


def test_async_api_under_trio_says_it_is_asyncio_only(etcd_config: Config) -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        async with fe.connect(etcd_config):
            pass

    with pytest.raises(fe.AsyncioRequiredError, match="called under trio"):
        trio.run(main)


def test_shared_state_from_threads(etcd_config: Config) -> None:
    """Four threads update one state through the blocking twin: no increment lost."""
    with fe.sync.connect(etcd_config, node_id="st", hosts_agents=False) as c:
        st = c.state("sync-hits")
        assert st.get() is None
        rev = st.set(0)
        assert st.compare_and_set(1, revision=rev) is not None

        def work() -> None:
            for _ in range(10):
                c.state("sync-hits").update(lambda v: (v or 0) + 1, max_attempts=100)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        got = st.get(linearizable=True)
        assert got is not None and got.value == 41
        with st.watch() as values:
            first = values.receive()
            assert first is not None and first.value == 41


def test_open_from_many_threads_at_once_is_one_connection(etcd_config: Config) -> None:
    conn = fe.sync.connect(etcd_config, node_id="shared", hosts_agents=False)
    barrier = threading.Barrier(4)
    out: list[Any] = []

    def open_() -> None:
        barrier.wait()
        try:
            out.append(conn.open())
        except BaseException as exc:  # collected, checked below
            out.append(exc)

    threads = [threading.Thread(target=open_) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not [o for o in out if isinstance(o, BaseException)], out
        assert len({id(o.wrapped) for o in out}) == 1  # the same connection for all
    finally:
        closers = [threading.Thread(target=conn.close) for _ in range(3)]
        for t in closers:
            t.start()
        for t in closers:
            t.join(30)
    assert conn.open() is not None  # closed once, and can be opened again
    conn.close()


def test_views_and_the_registry_have_len_and_iteration(etcd_config: Config) -> None:
    with fe.sync.connect(etcd_config, node_id="lens") as c:
        prefix = etcd_config.keyspace.key("lens/")
        for k in (b"a", b"b"):
            c.transport.put(prefix + k, b"1")
        view = c.view(prefix)
        view.wait_for(c.transport.revision())
        assert len(view) == 2 and sorted(view) == [prefix + b"a", prefix + b"b"]
        c.registry.register("l1")
        c.registry.wait_for(c.transport.revision())
        assert len(c.registry) == 1
