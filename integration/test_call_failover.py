"""``call`` across node processes: results and errors, and a call whose agent fails over.

The agents are ``call-counter`` agents (``integration/workers/signal_node.py``, critical)
hosted by node processes; the caller is this test process (``hosts_agents=False``).

* Quick: results, the action's errors raised at the caller (as :class:`ActionError` and as
  the builtin type), an action that calls another agent on another node, and one outcome
  per ``call_id``.
* Failover: ``slow_add`` reports ``action-start``, works 2 s, then increments the count.
  While it works, the hosting node is SIGKILLed, or SIGSTOPped past the TTL and continued
  later (its stale incarnation then finishes the action and tries to commit). The agent
  moves to the other node, which runs the action again. The caller, under
  ``anyio.fail_after``, either waits (it must get the result computed on the new node) or
  gives up 1 s after the fault (it must get :class:`CallTimeoutError`, the may-still-run
  error, and calling again with the same ``call_id`` gets the one outcome). Afterwards the
  history of the namespace shows the count's effect exactly once: one state write, by the
  live incarnation, in the revision that acknowledged the call; a third call with the same
  id returns the same result and changes nothing.
"""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

import foundation_etcd as fe
from foundation_etcd import Cluster, Config, EtcdError, connect
from foundation_etcd.lowlevel import EventType, Keyspace, Transport, WatchEvent, prefix_end
from foundation_etcd.testing import wait_until
from workers.signal_node import CallCounter

pytestmark = [pytest.mark.integration, pytest.mark.fault]

NODE_MODULE = "integration.workers.signal_node"
TTL = 3.0
WORK = 2.0  # seconds slow_add works before it increments


class Nodes:
    """Node processes whose JSON lines are read continuously into one list."""

    def __init__(self, spawn_worker: Callable, tg: TaskGroup, cfg: Config) -> None:
        self._spawn, self._tg, self._cfg = spawn_worker, tg, cfg
        self.workers: dict[str, Any] = {}
        self.events: list[dict] = []
        self.killed: set[str] = set()
        self._changed = anyio.Event()

    def start(self, node_id: str) -> None:
        cfg = self._cfg
        worker = self._spawn(
            NODE_MODULE, node_id, ",".join(cfg.endpoints), cfg.namespace, str(cfg.ttl)
        )
        self.workers[node_id] = worker
        self._tg.start_soon(self._pump, node_id, worker)

    async def _pump(self, node_id: str, worker: Any) -> None:
        try:
            while True:
                self.events.append(await worker.next_event(None, None))
                self._notify()
        except AssertionError as exc:  # the process exited
            if node_id not in self.killed:
                self.events.append({"event": "exited", "node": node_id, "why": str(exc)[-3000:]})
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, event: str, **match: Any) -> list[dict]:
        return [
            e
            for e in self.events
            if e["event"] == event and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait(self, predicate: Callable[[], bool], limit: float, what: str) -> None:
        try:
            with anyio.fail_after(limit):
                while True:
                    changed = self._changed
                    died = self.of("exited")
                    if died:
                        raise AssertionError(f"a node exited while waiting for {what}: {died}")
                    if predicate():
                        return
                    await changed.wait()
        except TimeoutError:
            tail = "\n".join(json.dumps(e)[:300] for e in self.events[-20:])
            raise AssertionError(f"no {what} within {limit} s; last events:\n{tail}") from None

    def kill(self, node_id: str) -> None:
        self.killed.add(node_id)
        self.workers[node_id].proc.kill()

    def kill_all(self) -> None:
        for node_id, worker in self.workers.items():
            if worker.proc.poll() is None:
                self.kill(node_id)


async def start_nodes(nodes: Nodes, obs: Cluster, *names: str) -> None:
    for name in names:
        nodes.start(name)
    await nodes.wait(lambda: all(nodes.of("ready", node=n) for n in names), 30, "nodes up")

    async def ready() -> bool:
        led = await obs.election("scheduler").leader() is not None
        return led and set(names) <= set(obs.nodes())

    with anyio.fail_after(15):
        await wait_until(ready, poll=0.05)


async def spawn_on(obs: Cluster, nodes: Nodes, agent: str, node: str) -> int:
    """Spawn a call-counter pinned to ``node``; return its incarnation once it runs there."""
    await obs.spawn(CallCounter, agent, placement=f"pinned:{node}")
    await nodes.wait(lambda: bool(nodes.of("started", agent=agent, node=node)), 15, agent)
    return int(nodes.of("started", agent=agent, node=node)[-1]["incarnation"])


async def wait_stopped(pid: int) -> None:
    """Wait until the kernel shows ``pid`` stopped: SIGSTOP is asynchronous."""

    def stopped() -> bool:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    with anyio.fail_after(2):
        await wait_until(stopped, poll=0.005)


async def count_of(obs: Cluster, agent: str) -> tuple[int, int] | None:
    """The count in the agent's state checkpoint and the incarnation that wrote it."""
    kv = await obs.transport.get(obs.keyspace.agent_state(agent))
    if kv is None:
        return None
    d = json.loads(kv.value)
    return int(d["state"]["count"]), int(d["incarnation"])


async def read_history(t: Transport, prefix: bytes, end: int) -> list[WatchEvent]:
    """Every change under ``prefix`` from revision 1 to ``end`` (nothing compacts here)."""
    events: list[WatchEvent] = []
    nxt = 1
    with anyio.fail_after(30):
        while nxt <= end:
            stream = t.open_watch()
            try:
                await stream.create(prefix, prefix_end(prefix), nxt, progress_notify=False)
                while nxt <= end:
                    resp = await stream.read()
                    assert not resp.compact_revision, "history compacted"
                    assert not resp.canceled, resp.cancel_reason
                    events.extend(ev for ev in resp.events if ev.revision <= end)
                    if resp.events:
                        nxt = resp.events[-1].revision + 1
            except EtcdError:
                await anyio.sleep(0.1)
            finally:
                stream.close()
    return events


def call_history(events: list[WatchEvent], ks: Keyspace, agent: str, cid: str) -> dict[str, Any]:
    """The call's life in etcd, each write checked against the live incarnation then."""
    live_key, state_key = ks.agent_live(agent), ks.agent_state(agent)
    inbox_key, done_key = ks.inbox(agent, cid), ks.signal_done(agent, cid)
    marker_key = ks.signal_inflight(agent)
    live: int | None = None
    out: dict[str, Any] = defaultdict(list)
    by_rev: dict[int, list[WatchEvent]] = defaultdict(list)
    for ev in events:
        by_rev[ev.revision].append(ev)
    for rev in sorted(by_rev):
        for ev in by_rev[rev]:
            key, put = ev.kv.key, ev.type is EventType.PUT
            if key == inbox_key:
                out["inbox_puts" if put else "inbox_deletes"].append(rev)
            elif key == done_key and put:
                out["done"].append((rev, json.loads(ev.kv.value), live))
            elif key == state_key and put:
                out["states"].append((rev, json.loads(ev.kv.value), live))
            elif key == marker_key and put:
                out["markers"].append((rev, json.loads(ev.kv.value), live))
        for ev in by_rev[rev]:  # the compares of a revision saw the state before it
            if ev.kv.key == live_key:
                live = ev.kv.create_revision if ev.type is EventType.PUT else None
                out["incarnations"].append((rev, live))
    return dict(out)


# --------------------------------------------------------------------------------------------
# quick: results and errors across nodes


@pytest.mark.timeout(60)
async def test_calls_across_node_processes_return_results_and_errors(
    etcd_config: Config, spawn_worker
) -> None:
    cfg = etcd_config.with_options(ttl=TTL)
    async with connect(cfg, node_id="caller", hosts_agents=False) as obs:
        async with anyio.create_task_group() as tg:
            nodes = Nodes(spawn_worker, tg, cfg)
            try:
                await start_nodes(nodes, obs, "n1", "n2")
                await spawn_on(obs, nodes, "c1", "n1")
                await spawn_on(obs, nodes, "c2", "n2")
                with anyio.fail_after(30):
                    assert await obs.call("c1", "add", {"n": 5}) == 5
                    assert await obs.call("c2", "add", {"n": 2}) == 2
                    with pytest.raises(ValueError, match="no such value") as value:
                        await obs.call("c1", "boom", {"kind": "value"})
                    assert isinstance(value.value, fe.ActionError)
                    assert value.value.error_type == "ValueError"
                    assert value.value.agent_id == "c1"
                    with pytest.raises(KeyError) as key:
                        await obs.call("c2", "boom", {"kind": "key"})
                    assert isinstance(key.value, fe.ActionError)
                    with pytest.raises(fe.ActionError) as bad:
                        await obs.call("c1", "add", {"m": 1})
                    assert bad.value.error_type == "TypeError"
                    with pytest.raises(fe.ActionError) as unknown:
                        await obs.call("c2", "nope", {})
                    assert unknown.value.error_type == "UnknownAction"
                    # the failed actions kept no effect
                    assert await obs.call("c1", "add", {"n": 0}) == 5
                    assert await obs.call("c2", "add", {"n": 0}) == 2
                    # one outcome per call id
                    assert await obs.call("c1", "add", {"n": 1}, call_id="once") == 6
                    assert await obs.call("c1", "add", {"n": 1}, call_id="once") == 6
                    # an action on n1 calling an agent on n2
                    relayed = await obs.call("c1", "relay_add", {"to": "c2", "n": 3})
                    assert relayed == {"theirs": 5, "ours": 7, "node": "n1"}
                    c1 = nodes.of("started", agent="c1")[0]["incarnation"]
                    assert await count_of(obs, "c1") == (7, c1)
                    assert (await count_of(obs, "c2"))[0] == 5
                    with pytest.raises(fe.AgentNotFoundError):
                        await obs.call("nobody", "add", {"n": 1})
            finally:
                nodes.kill_all()
                tg.cancel_scope.cancel()


# --------------------------------------------------------------------------------------------
# failover in the middle of a call


@pytest.mark.timeout(60)
@pytest.mark.parametrize("patience", ["waits", "gives-up"])
@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
async def test_call_whose_agent_fails_over_mid_call_takes_effect_once(
    etcd_config: Config, spawn_worker, fault: str, patience: str
) -> None:
    cfg = etcd_config.with_options(ttl=TTL)
    ks = cfg.keyspace
    cid = f"slow-{fault}-{patience}"
    args = {"n": 1, "seconds": WORK}
    async with connect(cfg, node_id="caller", hosts_agents=False) as obs:
        async with anyio.create_task_group() as tg:
            nodes = Nodes(spawn_worker, tg, cfg)
            try:
                await start_nodes(nodes, obs, "n1", "n2")
                old = await spawn_on(obs, nodes, "slow", "n1")
                outcome: dict[str, Any] = {}
                scopes: list[anyio.CancelScope] = []
                finished = anyio.Event()

                async def caller() -> None:
                    began = outcome["began"] = time.monotonic()
                    try:
                        with anyio.fail_after(30) as scope:
                            scopes.append(scope)
                            outcome["result"] = await obs.call(
                                "slow", "slow_add", args, call_id=cid
                            )
                    except fe.CallTimeoutError as exc:
                        outcome["timeout"] = exc
                    finally:
                        outcome["took"] = time.monotonic() - began
                        finished.set()

                tg.start_soon(caller)
                await nodes.wait(
                    lambda: bool(nodes.of("action-start", agent="slow", incarnation=old)),
                    10,
                    "the action started on n1",
                )
                victim = nodes.workers["n1"].proc
                faulted = time.monotonic()
                if fault == "sigkill":
                    nodes.kill("n1")
                else:
                    victim.send_signal(signal.SIGSTOP)
                    await wait_stopped(victim.pid)
                if patience == "gives-up":
                    scopes[0].deadline = anyio.current_time() + 1.0
                resumed, resumed_wall = faulted, time.time()
                if fault == "sigstop":
                    await anyio.sleep(TTL + 2.0)  # frozen past the TTL: the agent moves
                    victim.send_signal(signal.SIGCONT)
                    resumed, resumed_wall = time.monotonic(), time.time()
                with anyio.fail_after(25):
                    await finished.wait()

                if patience == "waits":
                    assert "result" in outcome, outcome
                    result = outcome["result"]
                else:
                    timeout = outcome.get("timeout")
                    assert isinstance(timeout, fe.CallTimeoutError), outcome
                    assert isinstance(timeout, TimeoutError) and "may still run" in str(timeout)
                    with anyio.fail_after(25):  # the same id: wait for its one outcome
                        result = await obs.call("slow", "slow_add", args, call_id=cid)
                live = await obs.transport.get(ks.agent_live("slow"))
                assert live is not None
                new = live.create_revision
                assert new > old
                assert result == {"count": 1, "node": "n2", "agent": "slow", "incarnation": new}
                with anyio.fail_after(10):  # again: the same outcome, no second run
                    assert await obs.call("slow", "slow_add", args, call_id=cid) == result
                if fault == "sigstop":
                    # n1 woke up: its stale incarnation either finished the action (in
                    # memory) and tried to commit, or was cancelled first with the lost
                    # lease (a race on resume); either way its node lets the agent go
                    await nodes.wait(
                        lambda: bool(nodes.of("stopped", agent="slow", incarnation=old)),
                        15,
                        "n1 letting its stale incarnation go",
                    )
                assert await count_of(obs, "slow") == (1, new)
                end = (await obs.transport.put(ks.key("it-end"), b"")).revision
                history = await read_history(obs.transport, ks.prefix, end)
            finally:
                nodes.kill_all()
                tg.cancel_scope.cancel()

    h = call_history(history, ks, "slow", cid)
    stale_n1 = [
        {k: e[k] for k in ("event", "incarnation", "count", "error", "graceful") if k in e}
        for e in nodes.events
        if e.get("node") == "n1"
        and e["event"] in ("action-end", "crashed", "cancelled", "stopped", "lost")
        and e["t"] >= resumed_wall
    ]
    print(
        f"\n{fault}/{patience}: fault {faulted - outcome['began']:.2f} s into the call, which "
        f"{'returned' if 'result' in outcome else 'raised CallTimeoutError'} after "
        f"{outcome['took']:.2f} s; incarnations {old} -> {new}; start markers "
        f"{[m for _, m, _ in h.get('markers', [])]}"
        + (f"\n  n1 after SIGCONT: {stale_n1}" if fault == "sigstop" else "")
        + (
            "\n  (the stale incarnation finished the action in memory, then went on to its "
            "commit: nothing of it is in etcd)"
            if any(e["event"] == "action-end" for e in stale_n1)
            else "\n  (the stale incarnation was cancelled before it finished the action)"
            if fault == "sigstop"
            else ""
        )
    )
    # the call entered the inbox once and was taken out once
    assert len(h["inbox_puts"]) == 1 and len(h["inbox_deletes"]) == 1, h
    # done once, in the revision that took the call out of the inbox, by the live incarnation
    ((done_rev, done, live_then),) = h["done"]
    assert done_rev == h["inbox_deletes"][0] and done["inc"] == live_then == new, h["done"]
    assert done["reply"] == {"result": result}
    # one state write: the count's effect, in that same revision, by the live incarnation
    ((state_rev, state, state_live),) = h["states"]
    assert state_rev == done_rev and state["incarnation"] == state_live == new, h["states"]
    assert state["state"] == {"count": 1}
    for rev, marker, marker_live in h.get("markers", []):
        assert marker["inc"] == marker_live, (rev, marker, marker_live)
    # started markers: attempt 1 on n1, 2 on n2; then the standing one of n2's commit
    assert [m["attempt"] for _, m, _ in h["markers"] if "rev" in m] == [1, 2], h["markers"]
    standing = [(rev, m) for rev, m, _ in h["markers"] if "rev" not in m]
    assert standing == [(done_rev, {"after": h["inbox_puts"][0], "inc": new, "attempt": 0})]
    if fault == "sigstop":
        assert resumed - faulted > TTL
