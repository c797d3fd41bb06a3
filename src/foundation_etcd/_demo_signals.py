"""The demo's signals act: counting agents, a node SIGKILLed mid-handler, exact totals.

Six critical ``demo-tally`` agents, three on node ``delta`` and three on ``epsilon`` (both
started for this act), record the id of every signal they handle; the record is their
state, committed with each acknowledgement. The conductor sends one signal per agent per
round. One signal to a ``delta`` agent is slow: its handler reports that it has started
and then sleeps, and the conductor SIGKILLs ``delta`` right then, while it keeps sending.
The failover scheduler restarts ``delta``'s agents elsewhere from their last commit; the
signals sent meanwhile waited in their inboxes. The act then checks, through calls that
queue behind the signals, that each agent handled every accepted signal exactly once and
in the order sent, that the slow signal was delivered again with a higher attempt, that
ids sent again were duplicates, and that nothing was dead-lettered or left waiting.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import anyio

import foundation_etcd as fe

from ._cli_out import table
from ._demo_conductor import Demo, say

__all__ = ["Tally", "act_signals"]

ROUNDS = 50
PACE = 0.04  # seconds between rounds
SLOW_ROUND = 12
VICTIM, OTHER = "delta", "epsilon"
TTL = 3.0


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


@fe.clustered("demo-tally", critical=True)
class Tally:
    """Records every signal it handles; the record is committed with each acknowledgement."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.again: dict[str, int] = {}  # signals delivered more than once: their attempt

    def get_state(self) -> dict[str, Any]:
        """The checkpoint, written in the acknowledgement's transaction."""
        return {"seen": self.seen, "again": self.again}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Continue from the last commit (also what a failed handler is undone to)."""
        self.seen, self.again = list(state["seen"]), dict(state["again"])

    async def handle_signal(self, sig: fe.Signal, ctx: fe.SignalContext) -> None:
        """Count the signal; a slow one on its first attempt says so and takes its time."""
        self.seen.append(sig.id)
        if sig.attempt > 1:
            self.again[sig.id] = sig.attempt
        if (sig.data or {}).get("slow") and sig.attempt == 1:
            _emit("handling", agent=ctx.agent_id, node=ctx.node_id, signal=sig.id)
            await anyio.sleep(5)

    @fe.action
    def tally(self) -> dict[str, Any]:
        """What this agent has handled, in order, and what it was given again."""
        return {"seen": self.seen, "again": self.again}


async def _send_all(
    cluster: Any, agents: list[str], accepted: dict[str, list[str]], done: anyio.Event
) -> None:
    """Send one signal per agent per round; remember every accepted one."""
    for r in range(ROUNDS):
        for a in agents:
            sid = f"{a}-{r:03}"
            slow = r == SLOW_ROUND and a == agents[0]
            try:
                res = await cluster.send(a, "count", {"slow": slow}, signal_id=sid)
            except fe.AmbiguousResultError:  # may have been applied: the same id again
                res = await cluster.send(a, "count", {"slow": slow}, signal_id=sid)
            accepted[a].append(res.signal_id)
        await anyio.sleep(PACE)
    done.set()


async def act_signals(demo: Demo, tg: Any, cluster: Any) -> None:
    """Act 5: signals counted exactly once across a SIGKILL (see the module docstring)."""
    say("== act 5: signals, a node killed mid-handler ==")
    for name in (VICTIM, OTHER):
        demo.start(tg, name)
    joined: set[str] = set()
    while len(joined) < 2:
        ev = await demo.until(
            lambda e: e["event"] == "joined" and e["node"] in (VICTIM, OTHER), 30, "nodes joined"
        )
        joined.add(ev["node"])
    agents = [f"tally-{i}" for i in range(1, 7)]
    home = {a: VICTIM if i < 3 else OTHER for i, a in enumerate(agents)}
    for a in agents:
        await cluster.spawn(Tally, a, placement=f"pinned:{home[a]}")
    started: set[str] = set()
    while len(started) < len(agents):
        ev = await demo.until(
            lambda e: e["event"] == "rt-started" and e.get("agent") in home, 20, "tallies"
        )
        started.add(ev["agent"])
    accepted: dict[str, list[str]] = {a: [] for a in agents}
    sent = anyio.Event()
    began = time.time()
    tg.start_soon(_send_all, cluster, agents, accepted, sent)
    slow = await demo.until(lambda e: e["event"] == "handling", 20, "the slow handler")
    at_kill = sum(len(v) for v in accepted.values())
    say(f"SIGKILL {VICTIM} while {slow['agent']} handles {slow['signal']} ({at_kill} sent so far)")
    killed = time.time()
    demo.nodes[VICTIM].proc.send_signal(signal.SIGKILL)
    moved: dict[str, dict[str, Any]] = {}
    while len(moved) < 3:
        ev = await demo.until(
            lambda e: (
                e["event"] == "rt-started"
                and home.get(e.get("agent", "")) == VICTIM
                and e["node"] != VICTIM
            ),
            TTL + 15,
            "tallies restarted",
        )
        moved[ev["agent"]] = ev
    with anyio.fail_after(30):
        await sent.wait()
    total = sum(len(v) for v in accepted.values())
    say(f"{total} signals sent in {time.time() - began:.2f}s; sending 3 ids again")
    again = [await cluster.send(a, "count", {}, signal_id=f"{a}-005") for a in agents[:3]]
    demo.check(all(r.duplicate for r in again), "ids sent again are duplicates: nothing sent")
    results: dict[str, dict[str, Any]] = {}
    with anyio.fail_after(30):
        for a in agents:  # a call waits behind the signals sent before it (FIFO)
            results[a] = await cluster.call(a, "tally")
    print()
    rows = []
    for a in agents:
        node = moved[a]["node"] if a in moved else home[a]
        again_of = ", ".join(f"{s} (attempt {n})" for s, n in results[a]["again"].items())
        counted = str(len(results[a]["seen"]))
        rows.append([a, home[a], node, str(len(accepted[a])), counted, again_of or "-"])
    table(["AGENT", "BEFORE", "AFTER", "SENT", "COUNTED", "AGAIN"], rows)  # the CLI's tables
    print()
    exact = [a for a in agents if results[a]["seen"] == accepted[a]]
    demo.check(
        len(exact) == len(agents),
        f"every accepted signal counted exactly once, in the order sent ({total} signals)",
    )
    attempt = results[slow["agent"]]["again"].get(slow["signal"], 1)
    demo.check(
        attempt > 1, f"{slow['signal']}, killed mid-handler, delivered again (attempt {attempt})"
    )
    restart = max(ev["t"] for ev in moved.values()) - killed
    demo.check(restart <= TTL + 5, f"{VICTIM}'s tallies restarted within {restart:.2f}s")
    dead = [d for d in await cluster.dead_letters() if d.agent_id in home]
    waiting = [s for a in agents for s in await cluster.inbox(a)]
    demo.check(not dead and not waiting, "no dead letter, nothing left waiting")
    for a in agents:
        await cluster.despawn(a)
    demo.summary.append(
        f"signals: {total} sent during a SIGKILL, each counted exactly once; "
        f"{VICTIM}'s agents resumed within {restart:.2f}s"
    )
