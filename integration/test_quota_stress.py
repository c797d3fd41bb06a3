"""Quota accounting under stress: processes reserving concurrently, SIGKILLs, a checked history.

Four ``quota_user`` processes run eight tasks each, reserving random amounts of ``cpu`` and
``mem`` (limits 6 and 8). A seeded nemesis SIGKILLs a random worker every 6-10 s and starts a
replacement. An observer in this process watches the namespace live from before the limits
were set, stamping each event with the wall time it arrived. Afterwards a checker replays
that history revision by revision and checks:

* at every revision the admitted reservations (the longest prefix of each queue, in create
  order, that fits the limit; a reservation is admitted when admitted in each of its pools)
  fit every limit, and every reservation of one id has all of its keys or none;
* every reservation a worker reported admitted is, from the revision at which it learned so
  (``max(token, view revision)``) until its keys are deleted, admitted by that rule; its
  token and amounts are those of its keys, and its keys outlive the worker's report;
* every key of a SIGKILLed worker is deleted within TTL + 1 s of the kill (observer time),
  all at one revision (the lease's expiry);
* after SIGTERM every worker drains and stops; every wait of a worker that was not killed
  ended in an admission, every reservation key of such a worker was admitted at some
  revision before its deletion (no starvation), and the queues end empty.

``QUOTA_STRESS_SEED`` replays a schedule (kills, amounts, holds; timing still varies),
``QUOTA_STRESS_SECONDS`` changes the length of the faulted run (default 62 s).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

import foundation_etcd
from foundation_etcd import Config, EtcdUnavailableError
from foundation_etcd.lowlevel import EventType, Keyspace, Transport, open_transport, prefix_end
from workers.board import Board  # integration/ is on sys.path (conftest dir)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

LIMITS = {"cpu": 6, "mem": 8}
WORKERS = 4
TASKS = 8
TTL = 2.0
EXPIRY_SLACK = 1.0  # a killed worker's keys must be gone within TTL + this
RUN_SECONDS = float(os.environ.get("QUOTA_STRESS_SECONDS", "62"))
LINGER_RUN_SECONDS = float(os.environ.get("QUOTA_STRESS_LINGER_SECONDS", "30"))
KILL_EVERY = (6.0, 10.0)
READY_TIMEOUT = 20.0
DRAIN_TIMEOUT = 20.0
WORKER_MODULE = "integration.workers.quota_user"


# --------------------------------------------------------------------------------------------
# live observation


@dataclass(frozen=True, slots=True)
class Seen:
    """One event of the observer's watch, with the wall time it arrived."""

    revision: int
    kind: EventType
    key: bytes
    value: bytes
    create_revision: int
    lease: int
    seen_at: float


class Observer:
    """A raw watch of one prefix from a start revision, resumed after any disconnect."""

    def __init__(self, transport: Transport, prefix: bytes, start: int, board: Board) -> None:
        self._t = transport
        self._prefix = prefix
        self._next = start
        self._board = board
        self.events: list[Seen] = []
        self.alive: dict[bytes, Seen] = {}

    @property
    def revision(self) -> int:
        """The last revision whose events were received."""
        return self._next - 1

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        started = False
        while True:
            stream = self._t.open_watch()
            try:
                await stream.create(self._prefix, prefix_end(self._prefix), self._next)
                while True:
                    resp = await stream.read()
                    if resp.canceled:
                        raise AssertionError(
                            f"observer watch cancelled at {self._next}: {resp.cancel_reason!r}"
                            f" (compact revision {resp.compact_revision})"
                        )
                    now = time.time()
                    for e in resp.events:
                        seen = Seen(
                            e.kv.mod_revision,
                            e.type,
                            e.kv.key,
                            e.kv.value,
                            e.kv.create_revision,
                            e.kv.lease,
                            now,
                        )
                        self.events.append(seen)
                        if e.type is EventType.PUT:
                            self.alive[e.kv.key] = seen
                        else:
                            self.alive.pop(e.kv.key, None)
                        self._next = e.kv.mod_revision + 1
                    if resp.created and not started:
                        started = True
                        task_status.started()
                    if resp.events:
                        self._board.notify()
            except EtcdUnavailableError:
                await anyio.sleep(0.05)  # single etcd, no fault injected on it: reconnect
            finally:
                stream.close()


@dataclass
class Slot:
    """One worker process and what it reported."""

    node: str
    worker: Any
    done: anyio.Event = field(default_factory=anyio.Event)
    killed_at: float | None = None
    exit_message: str = ""

    def of(self, name: str) -> list[dict]:
        return [e for e in self.worker.events if e["event"] == name]


async def pump(slot: Slot, board: Board) -> None:
    """Read a worker's lines as they come (so its pipe never fills) until it exits."""
    try:
        while True:
            await slot.worker.next_event(None, 3600)  # positional: the keyword was renamed
            board.notify()
    except AssertionError as exc:  # end of output: the process exited
        slot.exit_message = str(exc)
    finally:
        slot.done.set()
        board.notify()


# --------------------------------------------------------------------------------------------
# the checker


@dataclass
class Res:
    """One reservation as the history shows it.

    ``rid`` is ``{name}@{token}``: the library reuses a lease's key names once released,
    so the name alone does not identify a reservation.
    """

    rid: str
    holder: str
    amounts: dict[str, int]
    token: int
    lease: int
    created_seen: float
    deleted_rev: int | None = None
    name: str = ""
    deleted_seen: float | None = None
    first_admitted: int | None = None


@dataclass
class Outcome:
    violations: list[tuple[int | None, str]] = field(default_factory=list)
    reservations: dict[str, Res] = field(default_factory=dict)
    revisions: int = 0
    max_queue: dict[str, int] = field(default_factory=dict)
    max_used: dict[str, int] = field(default_factory=dict)
    expiry_latency: dict[str, float] = field(default_factory=dict)

    def fail(self, revision: int | None, message: str) -> None:
        self.violations.append((revision, message))


def check_history(
    events: list[Seen],
    ks: Keyspace,
    slots: list[Slot],
    limits_expected: dict[str, int],
) -> Outcome:
    out = Outcome()
    queue_prefix = ks.quotas_prefix() + b"queue/"
    limit_keys = {ks.quota_limit(r): r for r in limits_expected}
    killed = {s.node: s.killed_at for s in slots if s.killed_at is not None}

    # what the workers reported, by reservation id, anchored at the revision they learned it
    reports: list[tuple[int, str, str, dict]] = []
    for s in slots:
        for ev in s.of("admitted"):
            learned = max(ev["token"], ev["view_rev"])
            reports.append((learned, f"{ev['rid']}@{ev['token']}", s.node, ev))
    reports.sort(key=lambda r: r[0])

    alive: dict[tuple[str, str], tuple[int, int]] = {}  # (pool, rid) -> (create rev, amount)
    named: dict[tuple[str, str], str] = {}  # (pool, key name) -> rid of its live key
    limits: dict[str, int] = {}
    held: set[str] = set()
    admitted: set[str] = set()
    key_deleted: dict[bytes, tuple[int, float]] = {}
    key_lease: dict[bytes, int] = {}
    next_report = 0

    def take_reports(before: int) -> None:
        """Check reports learned below ``before``: the state holds every revision below it."""
        nonlocal next_report
        while next_report < len(reports) and reports[next_report][0] < before:
            learned, rid, node, ev = reports[next_report]
            next_report += 1
            res = out.reservations.get(rid)
            if res is None:
                out.fail(learned, f"{node} reported {rid} admitted; no such key in etcd")
                continue
            if res.holder != node or res.token != ev["token"] or res.amounts != ev["amounts"]:
                out.fail(
                    learned,
                    f"{node} reported {rid} token={ev['token']} amounts={ev['amounts']}; "
                    f"etcd has holder={res.holder} token={res.token} amounts={res.amounts}",
                )
            if not any(r == rid for _, r in alive):
                out.fail(learned, f"{rid} of {node} learned admitted at {learned}: no keys then")
            elif rid not in admitted:
                out.fail(
                    learned,
                    f"{rid} of {node} learned admitted at {learned} (token {ev['token']}, "
                    f"view {ev['view_rev']}) but the rule does not admit it there",
                )
            else:
                held.add(rid)

    # group the events by revision (one transaction or one lease expiry each)
    by_rev: dict[int, list[Seen]] = defaultdict(list)
    for e in events:
        by_rev[e.revision].append(e)
    for rev in sorted(by_rev):
        take_reports(rev)
        out.revisions += 1
        touched = False
        for e in by_rev[rev]:
            if e.key in limit_keys:
                pool = limit_keys[e.key]
                if e.kind is EventType.PUT:
                    limits[pool] = int(json.loads(e.value)["limit"])
                else:
                    limits.pop(pool, None)
                touched = True
                continue
            if e.kind is EventType.PUT:
                key_lease[e.key] = e.lease
            else:
                key_deleted[e.key] = (rev, e.seen_at)
            if not e.key.startswith(queue_prefix):
                continue
            pool, sep, name = e.key[len(queue_prefix) :].decode().partition("/")
            if not sep:
                continue
            touched = True
            if e.kind is EventType.PUT:
                value = json.loads(e.value)
                rid = f"{name}@{e.create_revision}"
                res = out.reservations.get(rid)
                if res is None:
                    res = Res(
                        rid,
                        str(value["holder"]),
                        {str(k): int(v) for k, v in value["amounts"].items()},
                        e.create_revision,
                        e.lease,
                        e.seen_at,
                        name=name,
                    )
                    out.reservations[rid] = res
                if (pool, rid) in alive or e.create_revision != res.token:
                    out.fail(rev, f"{rid}: key {pool} rewritten or created at another revision")
                alive[(pool, rid)] = (e.create_revision, res.amounts.get(pool, 0))
                named[(pool, name)] = rid
            else:
                gone = named.pop((pool, name), None)
                if gone is None:
                    out.fail(rev, f"{pool}/{name} deleted but never seen created")
                    continue
                rid = gone
                alive.pop((pool, rid), None)
                res = out.reservations[rid]
                if res.deleted_rev is None:
                    res.deleted_rev, res.deleted_seen = rev, e.seen_at
                elif res.deleted_rev != rev:
                    out.fail(rev, f"{rid}: keys deleted at {res.deleted_rev} and {rev}")
        if not touched:
            continue

        # the rule, from the queue state at this revision
        present: dict[str, set[str]] = defaultdict(set)
        queues: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        for (pool, rid), (crev, amount) in alive.items():
            present[rid].add(pool)
            queues[pool].append((crev, rid, amount))
        for rid, pools in present.items():
            if pools != set(out.reservations[rid].amounts):
                out.fail(rev, f"{rid} has keys {sorted(pools)} of {out.reservations[rid].amounts}")
        prefix_of: dict[str, set[str]] = defaultdict(set)
        for pool, q in queues.items():
            q.sort()
            out.max_queue[pool] = max(out.max_queue.get(pool, 0), len(q))
            limit, total = limits.get(pool), 0
            for _, rid, amount in q:
                if limit is None or total + amount > limit:
                    break
                total += amount
                prefix_of[rid].add(pool)
        admitted = {rid for rid, pools in prefix_of.items() if pools == present[rid]}
        for pool in queues:
            used = sum(out.reservations[r].amounts.get(pool, 0) for r in admitted)
            out.max_used[pool] = max(out.max_used.get(pool, 0), used)
            if pool in limits and used > limits[pool]:
                out.fail(rev, f"{pool}: admitted use {used} over the limit {limits[pool]}")
        for rid in admitted:
            res = out.reservations[rid]
            if res.first_admitted is None:
                res.first_admitted = rev
        held &= {rid for _, rid in alive}
        for rid in sorted(held - admitted):
            out.fail(rev, f"{rid} held by {out.reservations[rid].holder} but not admitted")
    take_reports(1 << 62)
    for _, rid, node, ev in reports:
        res = out.reservations.get(rid)
        if res is not None and res.deleted_rev is not None and res.deleted_rev <= ev["status_rev"]:
            out.fail(
                res.deleted_rev,
                f"{rid} of {node} deleted at {res.deleted_rev} while its holder still held it "
                f"(status revision {ev['status_rev']})",
            )

    if limits != limits_expected:
        out.fail(None, f"limits in etcd {limits}, expected {limits_expected}")

    # the keys of a killed worker go with its lease, within TTL + slack, all at one revision
    for s in slots:
        if s.killed_at is None:
            continue
        node_key = ks.node(s.node)
        keys = [node_key] + [
            k for r in out.reservations.values() if r.holder == s.node for k in _keys(ks, r)
        ]
        if node_key not in key_lease:
            out.fail(None, f"{s.node} was killed before it announced itself")
        deadline = s.killed_at + TTL + EXPIRY_SLACK
        expiry = key_deleted.get(node_key)
        if expiry is None:
            out.fail(None, f"{s.node} killed: its node key was never deleted")
            continue
        out.expiry_latency[s.node] = expiry[1] - s.killed_at
        for k in keys:
            rev_seen = key_deleted.get(k)
            if rev_seen is None:
                out.fail(None, f"{s.node} killed: {k!r} never deleted")
            elif rev_seen[1] > s.killed_at and rev_seen[1] > deadline:
                out.fail(
                    rev_seen[0],
                    f"{s.node} killed at {s.killed_at:.3f}: {k!r} deleted at revision "
                    f"{rev_seen[0]}, seen {rev_seen[1] - s.killed_at:.3f} s later "
                    f"(> TTL {TTL} + {EXPIRY_SLACK})",
                )
            elif rev_seen[0] > expiry[0]:
                out.fail(rev_seen[0], f"{s.node}: {k!r} outlived its lease (expired {expiry[0]})")

    # no starvation: reservations of workers that were not killed were all admitted
    for res in out.reservations.values():
        if res.deleted_rev is None:
            out.fail(None, f"{res.rid} of {res.holder} still queued at the end")
        if res.holder not in killed and res.first_admitted is None:
            out.fail(res.deleted_rev, f"{res.rid} of live {res.holder} was never admitted")
    for s in slots:
        errors = s.of("error")
        if errors:
            out.fail(None, f"{s.node} task failed: {errors[0]['error']}\n{errors[0]['trace']}")
        if s.killed_at is not None:
            continue
        admitted_wids = {e["wid"] for e in s.of("admitted")}
        starved = [e["wid"] for e in s.of("waiting") if e["wid"] not in admitted_wids]
        if starved:
            out.fail(None, f"{s.node}: waits never admitted: {starved}")
        if len(s.of("released")) != len(admitted_wids):
            out.fail(None, f"{s.node}: {len(admitted_wids)} admitted, released differs")
        if not s.of("stopped"):
            out.fail(None, f"{s.node} did not stop cleanly: {s.exit_message[-2000:]}")
    return out


def _keys(ks: Keyspace, res: Res) -> list[bytes]:
    return [ks.quota_queue_prefix(pool) + res.name.encode() for pool in res.amounts]


def excerpt(events: list[Seen], revision: int, ks: Keyspace, t0: float, around: int = 6) -> str:
    """The history near ``revision``, one line per event."""
    lines = []
    for e in events:
        if revision - around <= e.revision <= revision + 2:
            key = e.key.decode()
            key = key.removeprefix(ks.prefix.decode()).removeprefix(ks.system_prefix.decode())
            value = e.value.decode() if e.kind is EventType.PUT else ""
            mark = ">>" if e.revision == revision else "  "
            lines.append(
                f"{mark} rev={e.revision} {e.kind.value:6} {key} create={e.create_revision} "
                f"lease={e.lease:x} seen=+{e.seen_at - t0:.3f}s {value}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the test


@pytest.mark.timeout(RUN_SECONDS + 90)
@pytest.mark.parametrize("views", ["kept", "lingering"])
async def test_quota_stress_with_kills(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker, views: str
) -> None:
    """``kept``: each worker asks for usage first, so its quota view stays open. ``lingering``:
    one task per worker, whose view opens when its reservation waits and closes 10 ms into
    a hold, over and over (a shorter run: ``QUOTA_STRESS_LINGER_SECONDS``, 30 s)."""
    kept = views == "kept"
    seconds = RUN_SECONDS if kept else min(RUN_SECONDS, LINGER_RUN_SECONDS)
    tasks, linger = (TASKS, ()) if kept else (1, ("0.01",))
    seed = int(os.environ.get("QUOTA_STRESS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nquota stress: seed={seed} (replay with QUOTA_STRESS_SEED={seed})")
    rng = random.Random(seed)
    cfg = Config(endpoints=etcd_config.endpoints, namespace=etcd_config.namespace, ttl=TTL)
    ks = cfg.keyspace
    endpoints = ",".join(etcd_endpoints)
    board = Board()
    slots: list[Slot] = []
    t0 = time.time()
    run_start = stop_at = t0

    with anyio.fail_after(seconds + 75):
        async with open_transport(cfg) as t:
            start = (await t.status()).revision + 1
            observer = Observer(t, f"/{cfg.namespace}/".encode(), start, board)
            async with anyio.create_task_group() as tg:
                try:
                    await tg.start(observer.run)
                    async with foundation_etcd.connect(cfg, node_id="stress-admin") as admin:
                        for resource, limit in LIMITS.items():
                            await admin.quotas.set_limit(resource, limit)

                    def spawn() -> Slot:
                        node = f"quota-user-{len(slots)}"
                        worker = spawn_worker(
                            WORKER_MODULE,
                            endpoints,
                            cfg.namespace,
                            node,
                            str(rng.randrange(2**32)),
                            str(tasks),
                            str(TTL),
                            *linger,
                        )
                        slot = Slot(node, worker)
                        slots.append(slot)
                        tg.start_soon(pump, slot, board)
                        return slot

                    live = [spawn() for _ in range(WORKERS)]
                    ready = await board.wait(
                        lambda: all(s.of("ready") or s.done.is_set() for s in live),
                        READY_TIMEOUT,
                    )
                    for s in live:
                        assert ready and s.of("ready"), f"{s.node} not ready: {s.exit_message}"
                        assert s.of("ready")[0]["limits"] == LIMITS

                    # the nemesis: SIGKILL a random worker every 6-10 s, start a replacement
                    run_start = time.time()
                    end = anyio.current_time() + seconds
                    while True:
                        delay = rng.uniform(*KILL_EVERY)
                        if anyio.current_time() + delay > end - TTL:
                            break
                        await anyio.sleep(delay)
                        i = rng.randrange(WORKERS)
                        victim = live[i]
                        # a replacement still starting (a loaded machine) is killed once it
                        # is up: the checker holds every killed worker to its announcement
                        up = await board.wait(
                            lambda v=victim: bool(v.of("ready")) or v.done.is_set(),
                            READY_TIMEOUT,
                        )
                        assert up and not victim.done.is_set(), (
                            f"{victim.node} died or never came up: {victim.exit_message}"
                        )
                        victim.killed_at = time.time()
                        victim.worker.signal(signal.SIGKILL)
                        live[i] = spawn()
                        print(f"  +{victim.killed_at - run_start:5.1f}s SIGKILL {victim.node}")
                    await anyio.sleep(max(0.0, end - anyio.current_time()))

                    # stop: no new reservations, the waiting ones drain, workers disconnect
                    stop_at = time.time()
                    for s in live:
                        assert not s.done.is_set(), f"{s.node} died: {s.exit_message}"
                        s.worker.signal(signal.SIGTERM)
                    drained = await board.wait(
                        lambda: all(s.done.is_set() for s in live), DRAIN_TIMEOUT
                    )
                    assert drained, [s.node for s in live if not s.done.is_set()]

                    # let the last kill's lease expire (bounded by its deadline), then make
                    # sure the observer has everything up to a final write
                    last_kill = max(s.killed_at or 0.0 for s in slots)
                    killed = {s.node for s in slots if s.killed_at is not None}
                    await board.wait(
                        lambda: (
                            not any(
                                _holder(ks, k, v.value) in killed for k, v in observer.alive.items()
                            )
                        ),
                        max(0.0, last_kill + TTL + EXPIRY_SLACK + 0.5 - time.time()),
                    )
                    final = await t.put(ks.key("stress-end"), b"1")
                    assert await board.wait(lambda: observer.revision >= final.revision, 10)
                    tg.cancel_scope.cancel()
                finally:
                    for s in slots:
                        if s.worker.proc.poll() is None:
                            s.worker.proc.kill()

    out = check_history(observer.events, ks, slots, LIMITS)
    admissions = [e for s in slots for e in s.of("admitted")]
    in_run = [e for e in admissions if run_start <= e["t"] <= stop_at]
    kills = [s for s in slots if s.killed_at is not None]
    survived = sum(s.killed_at is None for s in slots)
    print(
        f"  seed={seed} workers={len(slots)} (killed {len(kills)}, survived {survived}) "
        f"revisions={out.revisions} reservations={len(out.reservations)}\n"
        f"  admissions: {len(admissions)} total, {len(in_run)} in {stop_at - run_start:.1f} s "
        f"of faulted run = {len(in_run) / max(stop_at - run_start, 1e-9):.1f}/s\n"
        f"  max queue {out.max_queue}, max admitted use {out.max_used} (limits {LIMITS})\n"
        f"  lease expiry after SIGKILL (observer): "
        + ", ".join(f"{v:.2f}s" for v in out.expiry_latency.values())
        + f"\n  wall time {time.time() - t0:.1f} s"
    )
    if out.violations:
        shown = []
        for rev, message in out.violations[:5]:
            shown.append(message)
            if rev is not None:
                shown.append(excerpt(observer.events, rev, ks, t0))
        raise AssertionError(
            f"seed={seed}: {len(out.violations)} violation(s); first ones:\n" + "\n".join(shown)
        )
    if seconds >= 60:
        assert len(kills) >= 5, "the nemesis killed too few workers"
    elif seconds >= 30:
        assert len(kills) >= 2, "the nemesis killed too few workers"
    if not kept:  # the views of the workers that stopped by themselves came and went
        opens = [e["opens"] for s in slots for e in s.of("views")]
        print(f"  quota views opened per stopped worker: {opens}")
        assert opens and max(opens) >= 5, f"views opened {opens} times"
    assert in_run, "no admissions during the run"


def _holder(ks: Keyspace, key: bytes, value: bytes) -> str | None:
    """The node a live key belongs to: a node key's id or a reservation's holder."""
    if key.startswith(ks.nodes_prefix()):
        return key[len(ks.nodes_prefix()) :].decode()
    if key.startswith(ks.quotas_prefix() + b"queue/"):
        return str(json.loads(value).get("holder"))
    return None
