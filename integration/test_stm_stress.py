"""Transactions under stress: processes moving money with ``cluster.transact``, SIGKILLs, history.

Four ``stm_transfers`` processes run eight tasks each; every task loops over
``cluster.transact(transfer)`` on ten accounts ``acct:0``..``acct:9`` (100 each at the start):
a transfer reads two balances, moves an amount and writes a record ``xfer:{id}`` =
``{src, dst, amount}`` in the same transaction. Each worker logs the transfer in flight before
calling ``transact`` and each outcome after (confirmed, or ``TransactionConflictError``
caught and counted). A seeded nemesis SIGKILLs two workers at random moments of the load
(each while a transfer of it is in flight) and starts a replacement for each.

Afterwards the test replays etcd's history of the tenant from the revision after the
initialisation (one watch from that revision up to a final sentinel write), and a checker
verifies:

* at every revision the accounts sum to 1000 and every balance is an int >= 0 (only the
  revisions that change a state can change the sum, and the test also reads the accounts
  at each of those revisions with a range at that revision and compares with the replay);
* every revision that changes a state is one transfer: it puts exactly two accounts, by
  ``-a`` and ``+a`` from their previous values, and creates exactly one new ``xfer`` record
  whose ``{src, dst, amount}`` is that move; nothing is ever deleted;
* every transfer a worker confirmed is in the history exactly once, with the amount the
  worker was told; a transfer that raised ``TransactionConflictError`` is not in it; a
  transfer left in flight by a SIGKILL is in it at most once; every record was attempted by
  some worker with those accounts; a worker stopped by SIGTERM left nothing unresolved;
* retries were bounded (no call over ``MAX_ATTEMPTS`` attempts, exhausted calls made exactly
  ``MAX_ATTEMPTS``), the workers' statistics agree with their logs, and conflicts did
  happen (the load is contended enough for the test to mean something).

``test_checker_*`` feed the checker crafted histories (a lost update, a double commit, a
lost confirmation, ...) and check it reports them: the stress test can fail.

``STM_STRESS_SEED`` replays a kill schedule (timing still varies), ``STM_STRESS_SECONDS``
changes the length of the load (default 15 s).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import foundation_etcd
from foundation_etcd import Config, Tx
from foundation_etcd.lowlevel import EventType, Keyspace, Op, Transport, open_transport, prefix_end
from workers.board import Board  # integration/ is on sys.path (conftest dir)

ROOT = Path(__file__).resolve().parent.parent
WORKER_MODULE = "integration.workers.stm_transfers"
ACCOUNTS = 10
INITIAL = 100
WORKERS = 4
TASKS = 8
MAX_ATTEMPTS = 16
KILLS = 2
LOAD_SECONDS = float(os.environ.get("STM_STRESS_SECONDS", "15"))
READY_TIMEOUT = 20.0
IN_FLIGHT_TIMEOUT = 5.0  # a victim's next attempt line, before it is killed
STOP_TIMEOUT = 15.0
MIN_CONFIRMED = 100  # below this the run says little (a stalled or starved load)


# --------------------------------------------------------------------------------------------
# what the workers said


@dataclass
class WorkerLog:
    """One worker's lines, by transfer id."""

    node: str
    killed: bool = False
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)
    confirmed: dict[str, dict[str, Any]] = field(default_factory=dict)
    conflicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    ready: bool = False
    stats: dict[str, int] | None = None

    def add(self, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "attempt":
            if ev["id"] in self.attempts:
                self.duplicates.append(ev["id"])
            self.attempts[ev["id"]] = ev
        elif kind == "confirmed":
            self.confirmed[ev["id"]] = ev
        elif kind == "conflict":
            self.conflicts[ev["id"]] = ev
        elif kind == "ambiguous":
            self.ambiguous.add(ev["id"])
        elif kind == "error":
            self.errors.append(ev)
        elif kind == "ready":
            self.ready = True
        elif kind == "stopped":
            self.stats = ev["stats"]

    @property
    def unresolved(self) -> set[str]:
        """Transfers attempted without an outcome (in flight when the process died)."""
        return set(self.attempts) - set(self.confirmed) - set(self.conflicts) - self.ambiguous


# --------------------------------------------------------------------------------------------
# the checker


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a state in etcd's history (``value`` ``None``: deleted)."""

    revision: int
    name: str
    value: bytes | None
    version: int = 1
    create_revision: int = 0


@dataclass
class Outcome:
    violations: list[tuple[int | None, str]] = field(default_factory=list)
    revisions: int = 0  # revisions that changed a state
    records: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    balances_at: dict[int, dict[str, int]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    low: int = INITIAL
    high: int = INITIAL

    def fail(self, revision: int | None, message: str) -> None:
        self.violations.append((revision, message))


def _int(data: bytes | None) -> int | None:
    try:
        v = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _record(data: bytes | None) -> dict[str, Any] | None:
    try:
        v = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(v, dict) or set(v) != {"src", "dst", "amount"}:
        return None
    amount = v["amount"]
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        return None
    if not isinstance(v["src"], str) or not isinstance(v["dst"], str):
        return None
    return v


def check_history(initial: dict[str, int], changes: list[Change], logs: list[WorkerLog]) -> Outcome:
    """Check the history of the states (from just after ``initial``) against the logs."""
    out = Outcome(balances=dict(initial))
    total = sum(initial.values())
    by_rev: dict[int, list[Change]] = defaultdict(list)
    for ch in changes:
        by_rev[ch.revision].append(ch)

    for rev in sorted(by_rev):
        out.revisions += 1
        accounts = [c for c in by_rev[rev] if c.name.startswith("acct:")]
        records = [c for c in by_rev[rev] if c.name.startswith("xfer:")]
        for c in by_rev[rev]:
            if c not in accounts and c not in records:
                out.fail(rev, f"state {c.name!r} changed: not an account nor a record")
            elif c.value is None:
                out.fail(rev, f"{c.name} deleted")
        if len(accounts) != 2 or len(records) != 1:
            out.fail(
                rev,
                f"changes {sorted(c.name for c in accounts)} and {len(records)} record(s): "
                "a transfer changes exactly two accounts and creates one record",
            )
        new: dict[str, int] = {}
        for c in accounts:
            value = _int(c.value)
            if c.name not in out.balances:
                out.fail(rev, f"{c.name}: no such account")
            elif c.value is None:
                pass
            elif value is None or value < 0:
                out.fail(rev, f"{c.name} = {c.value!r}: not a balance (an int >= 0)")
            else:
                new[c.name] = value
        record: dict[str, Any] | None = None
        for x in records:
            if x.value is None:
                continue
            xid = x.name.removeprefix("xfer:")
            content = _record(x.value)
            if content is None:
                out.fail(rev, f"{x.name} = {x.value!r}: not a transfer record")
            if xid in out.records:
                out.fail(rev, f"{x.name} written again (first at {out.records[xid][0]})")
                continue
            if x.version != 1 or x.create_revision != rev:
                out.fail(rev, f"{x.name} not created here (version {x.version})")
            if content is not None:
                out.records[xid] = (rev, content)
                record = content if len(records) == 1 else None
        if record is not None and len(accounts) == 2:
            src, dst, amount = record["src"], record["dst"], record["amount"]
            changed = {c.name for c in accounts}
            if src == dst or {src, dst} != changed:
                out.fail(rev, f"record moves {src} -> {dst}; the accounts changed: {changed}")
            elif src in new and dst in new:
                was_src, was_dst = out.balances[src], out.balances[dst]
                if new[src] != was_src - amount or new[dst] != was_dst + amount:
                    out.fail(
                        rev,
                        f"lost or torn update: {src} {was_src} -> {new[src]}, "
                        f"{dst} {was_dst} -> {new[dst]}, record says {amount} moved",
                    )
        out.balances.update(new)
        s = sum(out.balances.values())
        if s != total:
            out.fail(rev, f"the accounts sum to {s}, not {total}: {out.balances}")
        if accounts:
            out.balances_at[rev] = dict(out.balances)
            out.low = min(out.low, *out.balances.values())
            out.high = max(out.high, *out.balances.values())

    # the history against what the workers said
    attempted: dict[str, tuple[str, dict[str, Any]]] = {}
    for log in logs:
        for xid in log.duplicates:
            out.fail(None, f"{log.node} attempted {xid} twice")
        for err in log.errors:
            out.fail(None, f"{log.node} task failed on {err['id']}: {err['error']}\n{err['trace']}")
        for xid, a in log.attempts.items():
            attempted[xid] = (log.node, a)
    for xid, (rev, content) in sorted(out.records.items(), key=lambda r: r[1][0]):
        if xid not in attempted:
            out.fail(rev, f"xfer:{xid} = {content}: no worker ever attempted it")
            continue
        node, a = attempted[xid]
        if (content["src"], content["dst"]) != (a["src"], a["dst"]) or content["amount"] > a[
            "amount"
        ]:
            out.fail(rev, f"xfer:{xid} = {content}: {node} attempted {a}")
    for log in logs:
        for xid, c in log.confirmed.items():
            if xid not in out.records:
                out.fail(None, f"{log.node} confirmed {xid}: not in the history (lost)")
            elif out.records[xid][1]["amount"] != c["amount"]:
                out.fail(out.records[xid][0], f"{log.node} confirmed {xid} moving {c['amount']}")
        for xid in log.conflicts:
            if xid in out.records:
                out.fail(out.records[xid][0], f"{xid} raised TransactionConflictError; committed")
        if log.unresolved and not log.killed:
            out.fail(None, f"{log.node} was not killed; unresolved: {sorted(log.unresolved)}")
        if log.killed and len(log.unresolved) > TASKS:
            out.fail(None, f"{log.node}: {len(log.unresolved)} in flight, more than {TASKS}")
    return out


# --------------------------------------------------------------------------------------------
# the worker processes


@dataclass
class Slot:
    """One worker process, its log, its stderr file."""

    log: WorkerLog
    process: Process
    stderr: Path
    done: anyio.Event = field(default_factory=anyio.Event)
    killed_at: float | None = None

    def tail(self) -> str:
        try:
            return self.stderr.read_text()[-3000:]
        except OSError:
            return ""


async def pump(slot: Slot, board: Board) -> None:
    """Read the worker's lines as they come (its pipe never fills) until it exits."""
    assert slot.process.stdout is not None
    lines = BufferedByteReceiveStream(slot.process.stdout)
    try:
        while True:
            try:
                line = await lines.receive_until(b"\n", 1 << 20)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            slot.log.add(json.loads(line))
            board.notify()
    finally:
        slot.done.set()
        board.notify()


async def read_history(t: Transport, ks: Keyspace, after: int, until: int) -> list[Change]:
    """Every change of a state in ``(after, until]``: one watch of the tenant from ``after + 1``.

    ``until`` must be the revision of a write under the tenant (the watch's last event).
    """
    states = ks.states_prefix()
    changes: list[Change] = []
    stream = t.open_watch()
    try:
        await stream.create(ks.prefix, prefix_end(ks.prefix), after + 1, progress_notify=False)
        last = after
        while last < until:
            resp = await stream.read()
            if resp.canceled:
                raise AssertionError(f"history watch cancelled: {resp.cancel_reason!r}")
            for e in resp.events:
                last = e.kv.mod_revision
                if e.kv.key.startswith(states):
                    changes.append(
                        Change(
                            e.kv.mod_revision,
                            e.kv.key[len(states) :].decode(),
                            e.kv.value if e.type is EventType.PUT else None,
                            e.kv.version,
                            e.kv.create_revision,
                        )
                    )
    finally:
        stream.close()
    return changes


async def ranged_balances(t: Transport, ks: Keyspace, revs: list[int]) -> dict[int, dict]:
    """The accounts as etcd's MVCC store has them at each of ``revs`` (8 ranges at a time)."""
    prefix = ks.state_range("acct:")
    out: dict[int, dict[str, int | None]] = {}
    todo = iter(revs)

    async def reader() -> None:
        for rev in todo:
            res = await t.range(Op.get(prefix, prefix=True, revision=rev))
            out[rev] = {
                ks.relative(kv.key).removeprefix("state/"): _int(kv.value) for kv in res.kvs
            }

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(reader)
    return out


# --------------------------------------------------------------------------------------------
# the test


@pytest.mark.integration
@pytest.mark.fault
@pytest.mark.timeout(LOAD_SECONDS + 75)
async def test_transfers_with_kills_keep_a_consistent_history(
    etcd_config: Config, etcd_endpoints: list[str], tmp_path: Path
) -> None:
    seed = int(os.environ.get("STM_STRESS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nstm stress: seed={seed} (replay with STM_STRESS_SEED={seed})")
    rng = random.Random(seed)
    cfg = etcd_config
    ks = cfg.keyspace
    names = [f"acct:{i}" for i in range(ACCOUNTS)]
    board = Board()
    slots: list[Slot] = []
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    with anyio.fail_after(LOAD_SECONDS + 60):
        async with open_transport(cfg) as t, anyio.create_task_group() as tg:
            try:
                async with foundation_etcd.connect(cfg, node_id="stm-admin") as admin:

                    async def init(tx: Tx) -> None:
                        for name in names:
                            tx.put(name, INITIAL)

                    await admin.transact(init)
                start = await t.revision()
                at_start = await t.range(Op.get(ks.state_range("acct:"), prefix=True))
                initial = {
                    ks.relative(kv.key).removeprefix("state/"): int(kv.value) for kv in at_start.kvs
                }
                assert initial == dict.fromkeys(names, INITIAL)

                async def spawn() -> Slot:
                    node = f"stm-{len(slots)}"
                    err = tmp_path / f"{node}.stderr"
                    with err.open("wb") as stderr:
                        process = await anyio.open_process(
                            [
                                sys.executable,
                                "-u",
                                "-m",
                                WORKER_MODULE,
                                ",".join(etcd_endpoints),
                                cfg.namespace,
                                node,
                                str(rng.randrange(2**32)),
                                str(TASKS),
                                str(ACCOUNTS),
                                str(MAX_ATTEMPTS),
                            ],
                            stdin=subprocess.DEVNULL,
                            stderr=stderr,
                            cwd=ROOT,
                            env=env,
                        )
                    slot = Slot(WorkerLog(node), process, err)
                    slots.append(slot)
                    tg.start_soon(pump, slot, board)
                    return slot

                live = [await spawn() for _ in range(WORKERS)]
                ready = await board.wait(
                    lambda: all(s.log.ready or s.done.is_set() for s in live), READY_TIMEOUT
                )
                for s in live:
                    assert ready and s.log.ready, f"{s.log.node} not ready:\n{s.tail()}"

                # the load, and the nemesis: SIGKILL at random moments, each time while the
                # victim has a transfer in flight (its next attempt line), and replace it
                load_start = anyio.current_time()
                moments = sorted(rng.uniform(2.0, LOAD_SECONDS - 3.0) for _ in range(KILLS))
                for moment in moments:
                    await anyio.sleep(max(0.0, load_start + moment - anyio.current_time()))
                    # a replacement may still be starting: only a ready worker is a victim
                    i = rng.choice([j for j, s in enumerate(live) if s.log.ready])
                    victim = live[i]
                    seen = len(victim.log.attempts)
                    assert await board.wait(
                        lambda v=victim, n=seen: len(v.log.attempts) > n or v.done.is_set(),
                        IN_FLIGHT_TIMEOUT,
                    ), f"{victim.log.node} attempts no transfer"
                    assert not victim.done.is_set(), f"{victim.log.node} died:\n{victim.tail()}"
                    victim.process.send_signal(signal.SIGKILL)
                    victim.killed_at = anyio.current_time()
                    victim.log.killed = True
                    live[i] = await spawn()
                    print(f"  +{victim.killed_at - load_start:5.1f}s SIGKILL {victim.log.node}")
                await anyio.sleep(max(0.0, load_start + LOAD_SECONDS - anyio.current_time()))

                # a replacement may still be starting on a loaded machine: it joins the load
                # (and has a report to make) before the stop
                joined = await board.wait(
                    lambda: all(s.log.ready or s.done.is_set() for s in live), READY_TIMEOUT
                )
                # stop: every task finishes its transfer in flight and reports
                load_seconds = anyio.current_time() - load_start
                for s in live:
                    assert joined and s.log.ready, f"{s.log.node} not ready:\n{s.tail()}"
                    assert not s.done.is_set(), f"{s.log.node} died:\n{s.tail()}"
                    s.process.send_signal(signal.SIGTERM)
                stopped = await board.wait(
                    lambda: all(s.done.is_set() for s in slots), STOP_TIMEOUT
                )
                assert stopped, [s.log.node for s in slots if not s.done.is_set()]
                for s in live:
                    assert s.log.stats is not None, f"{s.log.node} did not stop:\n{s.tail()}"

                # the history, from just after the initialisation to a final write
                end = (await t.put(ks.key("stm-stress-end"), b"1")).revision
                t_check = time.monotonic()
                changes = await read_history(t, ks, start, end)
                ranged = await ranged_balances(
                    t, ks, sorted({c.revision for c in changes if c.name.startswith("acct:")})
                )
                final = await t.get_prefix(ks.states_prefix())
            finally:
                with anyio.CancelScope(shield=True):
                    for s in slots:
                        if s.process.returncode is None:
                            s.process.kill()
                    with anyio.move_on_after(10):
                        for s in slots:
                            await s.process.wait()
                            await s.process.aclose()
                tg.cancel_scope.cancel()

    logs = [s.log for s in slots]
    out = check_history(initial, changes, logs)
    # etcd's own reads at each revision agree with the replay
    for rev, balances in ranged.items():
        if balances != out.balances_at.get(rev):
            out.fail(rev, f"range at {rev}: {balances}; replay: {out.balances_at.get(rev)}")
    finals = {ks.relative(kv.key).removeprefix("state/"): kv.value for kv in final.kvs}
    if {n: _int(finals.get(n)) for n in names} != out.balances:
        out.fail(None, f"final accounts {finals}; replay {out.balances}")
    if sum(n.startswith("xfer:") for n in finals) != len(out.records):
        out.fail(None, "the final records differ from the history's")
    check_seconds = time.monotonic() - t_check

    confirmed = [c for log in logs for c in log.confirmed.values()]
    conflicts = [c for log in logs for c in log.conflicts.values()]
    retried = sum(c["attempts"] - 1 for c in confirmed) + MAX_ATTEMPTS * len(conflicts)
    in_flight = {log.node: len(log.unresolved) for log in logs if log.killed}
    landed = {log.node: sum(x in out.records for x in log.unresolved) for log in logs if log.killed}
    print(
        f"  seed={seed} workers={len(slots)} revisions={out.revisions} "
        f"records={len(out.records)}\n"
        f"  confirmed {len(confirmed)} in {load_seconds:.1f} s "
        f"= {len(confirmed) / load_seconds:.0f}/s; TransactionConflictError {len(conflicts)}; "
        f"ambiguous {sum(len(log.ambiguous) for log in logs)}\n"
        f"  attempts per confirmed transfer: mean "
        f"{sum(c['attempts'] for c in confirmed) / max(len(confirmed), 1):.2f}, max "
        f"{max((c['attempts'] for c in confirmed), default=0)}; conflicting attempts {retried}\n"
        f"  killed workers' transfers in flight {in_flight}, of which committed {landed}\n"
        f"  balances ranged {out.low}..{out.high}; history checked in {check_seconds:.1f} s; "
        f"wall time {time.monotonic() - t0:.1f} s"
    )
    if out.violations:
        shown = [f"{'-' if r is None else r}: {m}" for r, m in out.violations[:10]]
        raise AssertionError(
            f"seed={seed}: {len(out.violations)} violation(s):\n" + "\n".join(shown)
        )

    # bounded retries, statistics agreeing with the logs, a contended load
    assert all(1 <= c["attempts"] <= MAX_ATTEMPTS for c in confirmed)
    assert all(c["attempts"] == MAX_ATTEMPTS for c in conflicts)
    for log in logs:
        if log.stats is None:
            continue
        st = log.stats
        assert st["calls"] == len(log.attempts), (log.node, st)
        assert st["commits"] == len(log.confirmed), (log.node, st)
        assert st["exhausted"] == len(log.conflicts), (log.node, st)
        made = sum(c["attempts"] for c in log.confirmed.values())
        made += MAX_ATTEMPTS * len(log.conflicts)
        if not log.ambiguous:
            assert st["attempts"] == made, (log.node, st, made)
            assert st["conflicts"] == st["attempts"] - st["commits"], (log.node, st)
        assert st["attempts"] <= MAX_ATTEMPTS * st["calls"], (log.node, st)
    assert sum(log.killed for log in logs) == KILLS
    assert len(confirmed) >= MIN_CONFIRMED, "too few transfers for the run to say much"
    assert retried > 0, "no transaction ever conflicted: the load tests nothing"
    assert len(conflicts) < len(confirmed), "most transfers gave up: retries not working"


# --------------------------------------------------------------------------------------------
# the checker against crafted histories


def _history() -> tuple[dict[str, int], list[Change], list[WorkerLog]]:
    """A good history: four transfers of two workers, the last in flight when w1 was killed."""
    initial = {f"acct:{i}": INITIAL for i in range(3)}
    balances = dict(initial)
    changes: list[Change] = []
    w0, w1 = WorkerLog("w0"), WorkerLog("w1", killed=True)
    plan = [
        (w0, "w0.0.0", "acct:0", "acct:1", 10, True),
        (w1, "w1.0.0", "acct:1", "acct:2", 30, True),
        (w0, "w0.1.0", "acct:2", "acct:0", 5, True),
        (w1, "w1.1.0", "acct:0", "acct:2", 7, False),  # committed; w1 killed before confirming
    ]
    for rev, (log, xid, src, dst, amount, confirmed) in enumerate(plan, start=11):
        balances[src] -= amount
        balances[dst] += amount
        record = json.dumps({"amount": amount, "dst": dst, "src": src}).encode()
        changes += [
            Change(rev, src, b"%d" % balances[src], 2, 10),
            Change(rev, dst, b"%d" % balances[dst], 2, 10),
            Change(rev, f"xfer:{xid}", record, 1, rev),
        ]
        log.add({"event": "attempt", "id": xid, "src": src, "dst": dst, "amount": amount})
        if confirmed:
            log.add({"event": "confirmed", "id": xid, "amount": amount, "attempts": 1})
    w0.add({"event": "attempt", "id": "w0.2.0", "src": "acct:0", "dst": "acct:1", "amount": 3})
    w0.add({"event": "conflict", "id": "w0.2.0", "attempts": MAX_ATTEMPTS})
    w1.add({"event": "attempt", "id": "w1.2.0", "src": "acct:0", "dst": "acct:1", "amount": 4})
    return initial, changes, [w0, w1]


def test_checker_accepts_a_good_history() -> None:
    initial, changes, logs = _history()
    out = check_history(initial, changes, logs)
    assert out.violations == []
    assert out.revisions == 4 and len(out.records) == 4
    assert out.balances == {"acct:0": 88, "acct:1": 80, "acct:2": 132}


def _lost_update(changes: list[Change]) -> list[Change]:
    # the third transfer computed acct:0 from a stale read (100 instead of 90): +5 on 100
    return [
        Change(c.revision, c.name, b"105", c.version, c.create_revision)
        if (c.revision, c.name) == (13, "acct:0")
        else c
        for c in changes
    ]


def _double_commit(changes: list[Change]) -> list[Change]:
    # the in-flight transfer of the killed worker applied twice
    again = [Change(15, c.name, c.value, c.version + 1, c.create_revision) for c in changes[-3:]]
    return changes + again


def _partial(changes: list[Change]) -> list[Change]:
    return [c for c in changes if (c.revision, c.name) != (12, "acct:2")]


def _phantom(changes: list[Change]) -> list[Change]:
    record = b'{"amount":0,"dst":"acct:1","src":"acct:0"}'
    return [
        *changes,
        Change(15, "acct:0", b"88", 3, 10),
        Change(15, "acct:1", b"80", 3, 10),
        Change(15, "xfer:w9.0.0", record, 1, 15),
    ]


def _overdrawn(changes: list[Change]) -> list[Change]:
    out = [c for c in changes if c.revision < 14]
    record = b'{"amount":120,"dst":"acct:2","src":"acct:0"}'
    return [
        *out,
        Change(14, "acct:0", b"-25", 3, 10),
        Change(14, "acct:2", b"245", 3, 10),
        Change(14, "xfer:w1.1.0", record, 1, 14),
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_lost_update, "lost or torn update"),
        (_lost_update, "the accounts sum to 310, not 300"),
        (_double_commit, "written again"),
        (_partial, "a transfer changes exactly two accounts"),
        (_partial, "sum to"),
        (_phantom, "no worker ever attempted"),
        (_overdrawn, "not a balance"),
    ],
)
def test_checker_finds_a_broken_history(
    mutate: Callable[[list[Change]], list[Change]], expected: str
) -> None:
    initial, changes, logs = _history()
    out = check_history(initial, mutate(changes), logs)
    messages = [m for _, m in out.violations]
    assert any(expected in m for m in messages), messages


def test_checker_finds_broken_promises_to_the_workers() -> None:
    initial, changes, logs = _history()
    w0, w1 = logs
    # a confirmed transfer missing from the history
    out = check_history(initial, [c for c in changes if c.revision != 11], logs)
    assert any("w0 confirmed w0.0.0: not in the history" in m for _, m in out.violations)
    # a transfer that raised TransactionConflictError, committed all the same
    w0.conflicts["w0.1.0"] = {"attempts": MAX_ATTEMPTS}
    out = check_history(initial, changes, logs)
    assert any("raised TransactionConflictError" in m for _, m in out.violations)
    del w0.conflicts["w0.1.0"]
    # a worker stopped cleanly with a transfer unresolved; confirmed with another amount
    w1.killed = False
    w0.confirmed["w0.1.0"] = {**w0.confirmed["w0.1.0"], "amount": 6}
    out = check_history(initial, changes, logs)
    messages = [m for _, m in out.violations]
    assert any("w1 was not killed; unresolved" in m for m in messages), messages
    assert any("w0 confirmed w0.1.0 moving 6" in m for m in messages), messages
