"""Sharded counters across processes, two of them SIGKILLed mid-run: the totals are exact.

Eight ``counter_worker`` processes run two tasks each, adding random amounts (negative ones
included) to one counter they all share (16 shards for 16 writers: the random first
shards collide, and adds conflict and move) and to a counter of their own. Each worker
reports every add before it is sent (``begin``) and once it returned (``done``; or
``refused``: not applied). Two workers are SIGKILLed while adding; the others are stopped
with SIGTERM and finish their adds. Then, from one linearizable read:

* each survivor's own counter equals the sum of its confirmed adds, exactly;
* each killed worker's own counter equals its confirmed adds plus some subset of the adds
  it had in flight when killed (each applied once or not at all);
* the shared counter equals every confirmed add plus some subset of the killed workers'
  in-flight adds on it.
"""

from __future__ import annotations

import itertools
import math
import random
import signal
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from foundation_etcd import Config, ShardedCounter, open_session
from foundation_etcd.lowlevel import open_transport
from workers.board import Board  # integration/ is on sys.path (conftest dir)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

WORKERS = 8
KILLED = 2
TASKS = 2
WORKER_MODULE = "integration.workers.counter_worker"


@dataclass
class Slot:
    """One worker process and what it reported (read as it comes, so its pipe never fills)."""

    name: str
    worker: Any
    done: anyio.Event = field(default_factory=anyio.Event)

    def of(self, event: str) -> list[dict]:
        return [e for e in self.worker.events if e["event"] == event]

    async def pump(self, board: Board) -> None:
        try:
            while True:
                await self.worker.next_event(None, 3600)
                board.notify()
        except AssertionError:  # end of output: the process exited
            pass
        finally:
            self.done.set()
            board.notify()


def adding(s: Slot, at_least: int) -> bool:
    """``s`` confirmed ``at_least`` adds (or stopped: an error, checked afterwards)."""
    return len(s.of("done")) >= at_least or bool(s.of("error")) or s.done.is_set()


def subset_sums(values: list[int]) -> set[int]:
    return {sum(c) for r in range(len(values) + 1) for c in itertools.combinations(values, r)}


def ledger(slot: Slot) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Confirmed sums per counter, and the adds still in flight (begun, never done)."""
    begun = {e["id"]: e for e in slot.of("begin")}
    for e in slot.of("refused"):  # not applied
        del begun[e["id"]]
    confirmed: dict[str, int] = {}
    for e in slot.of("done"):
        b = begun.pop(e["id"])
        confirmed[b["counter"]] = confirmed.get(b["counter"], 0) + b["n"]
    in_flight: dict[str, list[int]] = {}
    for b in begun.values():
        in_flight.setdefault(b["counter"], []).append(b["n"])
    return confirmed, in_flight


async def test_counter_exact_across_processes_with_kills(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker
) -> None:
    rng = random.Random()
    board = Board()
    endpoints = ",".join(etcd_endpoints)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            slots = []
            for i in range(WORKERS):
                name = f"w{i}"
                w = spawn_worker(
                    WORKER_MODULE,
                    endpoints,
                    etcd_config.namespace,
                    name,
                    str(rng.random()),
                    str(TASKS),
                )
                slots.append(Slot(name, w))
                tg.start_soon(slots[-1].pump, board)
            assert await board.wait(
                lambda: all(s.of("ready") or s.done.is_set() for s in slots), math.inf
            )
            assert all(s.of("ready") for s in slots), [s.worker.events[-1:] for s in slots]

            # everyone adds for a while; kill two in the middle of their adds
            assert await board.wait(lambda: all(adding(s, 30) for s in slots), math.inf)
            victims, survivors = slots[:KILLED], slots[KILLED:]
            for s in victims:
                s.worker.signal(signal.SIGKILL)
            for s in victims:
                await s.done.wait()
            marks = {s.name: len(s.of("done")) for s in survivors}
            assert await board.wait(
                lambda: all(adding(s, marks[s.name] + 30) for s in survivors), math.inf
            )
            for s in survivors:
                s.worker.signal(signal.SIGTERM)
            assert await board.wait(lambda: all(s.done.is_set() for s in survivors), math.inf)

        for s in slots:
            assert not s.of("error"), s.of("error")
        for s in survivors:
            (stopped,) = s.of("stopped")
            assert all(st["ambiguous"] == 0 for st in stopped["statistics"].values())

        async with open_transport(etcd_config) as t, open_session(t) as session:
            shared_expected, shared_uncertain, killed_in_flight = 0, [], 0
            for s in slots:
                confirmed, in_flight = ledger(s)
                own = f"own-{s.name}"
                got = await ShardedCounter(session, own).exact()
                if s in survivors:
                    assert not in_flight, (s.name, in_flight)
                    assert got == confirmed.get(own, 0), (s.name, got, confirmed)
                else:
                    assert sum(map(len, in_flight.values())) <= TASKS
                    extra = got - confirmed.get(own, 0)
                    assert extra in subset_sums(in_flight.get(own, [])), (s.name, extra, in_flight)
                    shared_uncertain += in_flight.get("shared", [])
                    killed_in_flight += sum(map(len, in_flight.values()))
                shared_expected += confirmed.get("shared", 0)
            shared = await ShardedCounter(session, "shared").exact()
            extra = shared - shared_expected
            assert extra in subset_sums(shared_uncertain), (
                shared,
                shared_expected,
                shared_uncertain,
            )
            assert killed_in_flight >= 1  # killed while adding, as meant
            total_adds = sum(len(s.of("done")) for s in slots)
            refused = sum(len(s.of("refused")) for s in slots)
            print(
                f"\n{total_adds} confirmed adds by {WORKERS} processes ({refused} refused: "
                f"every attempt lost); shared = {shared}; {killed_in_flight} adds in flight when "
                f"killed, adding {extra} to the shared counter"
            )
