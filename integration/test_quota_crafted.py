"""Quota accounting while a malicious writer crafts entries in its own tenant's queues.

Three ``quota_user`` processes run four tasks each, reserving random amounts of ``cpu`` and
``mem`` (limits 6 and 8) and reporting every admission (its token and the view revision at
which it learned it) and release. Meanwhile a *crafter* task in this process, with its own
connection and writing only where a tenant's etcd role lets it (the tenant's ``queue/``),
keeps writing entries the library never writes:

* **appends** of crafted values (negative, zero, fractional, boolean, string, huge amounts,
  garbage bytes, no ``amounts``, another pool's amounts, a well-formed small amount too),
  singly or several in one transaction (one revision);
* **rewrites** of keys of reservations that workers hold right now (to smaller or invalid
  amounts), guarded by the reservation's create revision;
* **squats** on names a worker will take next (``{lease}-{n}``), create-only: its next
  fresh names, and, right after the observer sees a worker's key deleted, the name it just
  released and is about to reuse (the reserve must leave the squat alone and take a fresh
  name);
* keys in queues no pool has (not UTF-8, a space in the pool, no pool segment);

and deletes each of its own entries after 0.05-0.3 s. An observer watches the namespace
from before the limits were set. Afterwards a checker replays the whole history revision
by revision, with its own model of the rule (an entry counts only when it is a well-formed
reservation of its key's pool, put once; anything else blocks the queue behind it), and
checks:

* **held use within the limit**: at every revision, per pool, the sum of the amounts of the
  reservations that workers reported admitted, counted from the first revision at which the
  model admits them (never later than when the worker learned it) until their keys are
  deleted, is at most the limit;
* every reported admission is admitted by the model at some revision between the creation
  of its keys and the moment the worker learned it, and its keys were created, not
  overwritten, by its reserve (the token is their create revision: squats are left alone);
* after the crafter stops and removes its entries, every worker's waits end in admissions,
  no task failed, the workers drain on SIGTERM and the queues end empty.

This run has no etcd auth: ``tests/test_tls_auth.py`` shows that a tenant's role confines
it to its queue; here the crafter keeps to the queue of its own accord.
``QUOTA_CRAFTED_SEED`` replays a schedule, ``QUOTA_CRAFTED_SECONDS`` sets the length (25 s).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field

import anyio
import pytest

from foundation_etcd import Config
from foundation_etcd.lowlevel import Compare, EventType, Keyspace, Op, Transport, open_transport
from test_quota_stress import Board, Observer, Seen, Slot, pump  # integration/ is on sys.path

pytestmark = [pytest.mark.integration]

LIMITS = {"cpu": 6, "mem": 8}
WORKERS = 3
TASKS = 4
TTL = 5.0  # nothing is killed here: a longer lease rides out a loaded machine
RUN_SECONDS = float(os.environ.get("QUOTA_CRAFTED_SECONDS", "25"))
READY_TIMEOUT = 20.0
DRAIN_TIMEOUT = 20.0
CRAFTED_LIFETIME = (0.05, 0.3)  # seconds each crafted entry lives before the crafter deletes it
CRAFT_EVERY = (0.03, 0.15)
MAX_AMOUNT = 2**53 - 1
WORKER_MODULE = "integration.workers.quota_user"


def crafted_values(pool: str) -> list[bytes]:
    """Values the library never writes into ``pool``'s queue (and one it could)."""
    return [
        json.dumps({"amounts": {pool: -100}}).encode(),
        json.dumps({"amounts": {pool: 0}}).encode(),
        json.dumps({"amounts": {pool: 0.5}}).encode(),
        json.dumps({"amounts": {pool: True}}).encode(),
        json.dumps({"amounts": {pool: "1"}}).encode(),
        json.dumps({"amounts": {pool: 10**30}}).encode(),
        json.dumps({"amounts": {pool: 1, "x": -50}}).encode(),
        json.dumps({"amounts": {"other": 1}}).encode(),
        json.dumps({"holder": "crafter"}).encode(),
        b"\xff\xfe{ not json",
        b"[" * 5000,
        b"",
        json.dumps({"amounts": {pool: 1}, "holder": "crafter"}).encode(),  # well-formed
    ]


# --------------------------------------------------------------------------------------------
# the crafter


@dataclass
class Crafter:
    """Writes crafted entries into the tenant's queues; deletes its own after a while."""

    t: Transport
    ks: Keyspace
    slots: list[Slot]
    rng: random.Random
    live: dict[bytes, tuple[int, float]] = field(default_factory=dict)  # key -> (create, due)
    deleting: set[bytes] = field(default_factory=set)  # own keys being deleted
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    serial: int = 0

    def _queue(self, pool: bytes) -> bytes:
        return self.ks.quotas_prefix() + b"queue/" + pool + b"/"

    def _name(self) -> bytes:
        self.serial += 1
        return b"evil-%d" % self.serial

    def _held(self) -> list[dict]:
        """Reservations workers reported admitted and not yet released."""
        out = []
        for s in self.slots:
            released = {e["wid"] for e in s.of("released")}
            out.extend(e for e in s.of("admitted") if e["wid"] not in released)
        return out

    def _squat_names(self) -> list[str]:
        """Names a worker may take next: ones it released, and its next fresh ones."""
        names = [e["rid"] for s in self.slots for e in s.of("released")][-20:]
        top: dict[str, int] = {}
        for s in self.slots:
            for e in s.of("admitted"):
                lease, _, n = e["rid"].rpartition("-")
                top[lease] = max(top.get(lease, 0), int(n))
        names += [f"{lease}-{n + k}" for lease, n in top.items() for k in (1, 2)]
        return names

    async def _delete(self, key: bytes, created: int) -> None:
        self.deleting.add(key)
        await self.t.txn([Compare.create_revision(key) == created], [Op.delete(key)])
        del self.live[key]

    async def _put_new(self, key: bytes, value: bytes, what: str) -> None:
        res = await self.t.txn([Compare.create_revision(key) == 0], [Op.put(key, value)])
        if res.succeeded:
            self.live[key] = (res.revision, time.monotonic() + self.rng.uniform(*CRAFTED_LIFETIME))
            self.counts[what] += 1

    async def step(self) -> None:
        rng = self.rng
        now = time.monotonic()
        for key, (created, due) in list(self.live.items()):
            if due <= now:
                await self._delete(key, created)
        if len(self.live) >= 6:
            return
        pool = rng.choice(list(LIMITS))
        action = rng.choices(
            ["append", "batch", "rewrite", "squat", "no-pool"], weights=[40, 10, 20, 15, 15]
        )[0]
        if action == "append":
            value = rng.choice(crafted_values(pool))
            await self._put_new(self._queue(pool.encode()) + self._name(), value, "append")
        elif action == "batch":
            keys = [self._queue(pool.encode()) + self._name() for _ in range(rng.randint(2, 4))]
            values = [rng.choice(crafted_values(pool)) for _ in keys]
            res = await self.t.txn([], [Op.put(k, v) for k, v in zip(keys, values, strict=True)])
            due = time.monotonic() + rng.uniform(*CRAFTED_LIFETIME)
            for k in keys:
                self.live[k] = (res.revision, due)
            self.counts["batch"] += 1
        elif action == "rewrite":
            held = self._held()
            if not held:
                return
            ev = rng.choice(held)
            target = rng.choice(sorted(ev["amounts"]))
            key = self._queue(target.encode()) + ev["rid"].encode()
            value = rng.choice(
                [json.dumps({"amounts": {target: 1}}).encode(), *crafted_values(target)[:3]]
            )
            res = await self.t.txn(
                [Compare.create_revision(key) == ev["token"]], [Op.put(key, value)]
            )
            self.counts["rewrite"] += res.succeeded
        elif action == "squat":  # create-only: a name in use is not touched
            names = self._squat_names()
            for name in rng.sample(names, min(4, len(names))):
                key = self._queue(pool.encode()) + name.encode()
                if key not in self.live:
                    await self._put_new(key, rng.choice(crafted_values(pool)), "squat")
        else:
            bad = rng.choice([b"\xff\xfe", b"bad pool", b"_system", b"@ghost"])
            value = json.dumps({"amounts": {pool: -1000}}).encode()
            await self._put_new(self._queue(bad) + self._name(), value, "no-pool")
            if rng.random() < 0.3:  # a key with no pool segment at all
                await self._put_new(
                    self.ks.quotas_prefix() + b"queue/" + pool.encode(), value, "no-pool"
                )

    async def run(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            with anyio.move_on_after(self.rng.uniform(*CRAFT_EVERY)):
                await stop.wait()
            await self.step()

    async def cleanup(self) -> None:
        """Delete every crafted entry still there (once no crafting task runs)."""
        for key, (created, _) in list(self.live.items()):
            await self._delete(key, created)

    async def squat_released(self, observer: Observer, board: Board, stop: anyio.Event) -> None:
        """Right after a worker's key is deleted, sometimes take its name (create-only).

        The worker reuses the name for its next reservation a round trip later: when the
        squat wins the race, that reserve must leave the squat alone and take a fresh name.
        """
        queue = self.ks.quotas_prefix() + b"queue/"
        worker_name = re.compile(rb"(cpu|mem)/[0-9a-f]+-[0-9]+")
        seen = len(observer.events)
        while not stop.is_set():
            await board.wait(lambda n=seen: len(observer.events) > n or stop.is_set(), 1.0)
            new, seen = observer.events[seen:], len(observer.events)
            for e in new:
                if e.kind is not EventType.DELETE or not e.key.startswith(queue):
                    continue
                if e.key in self.deleting:
                    self.deleting.discard(e.key)  # the crafter's own squat going away
                    continue
                if worker_name.fullmatch(e.key[len(queue) :]) is None:
                    continue
                if len(self.live) < 8 and self.rng.random() < 0.1 and not stop.is_set():
                    pool = e.key[len(queue) :].partition(b"/")[0].decode()
                    value = self.rng.choice(crafted_values(pool))
                    await self._put_new(e.key, value, "squat-on-release")


# --------------------------------------------------------------------------------------------
# the checker: its own model of the rule


_ID = re.compile(r"(?!\.\.?$)[A-Za-z0-9.:-][A-Za-z0-9._:-]{0,127}")


def is_pool(name: str) -> bool:
    if name.startswith("@"):
        node, sep, resource = name[1:].partition("@")
        return bool(sep and _ID.fullmatch(node) and _ID.fullmatch(resource))
    return _ID.fullmatch(name) is not None


def model_amount(value: bytes, version: int, pool: str) -> int | None:
    """What the model counts for an entry of ``pool``: its amount, or ``None`` (blocks)."""
    if version != 1 or len(value) > 64 * 1024:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return None
    amounts = doc.get("amounts") if isinstance(doc, dict) else None
    if not isinstance(amounts, dict) or not amounts:
        return None
    for name, amount in amounts.items():
        if not is_pool(name) or type(amount) is not int or not 1 <= amount <= MAX_AMOUNT:
            return None
    return amounts.get(pool)


@dataclass
class Held:
    """A reservation a worker reported admitted."""

    node: str
    rid: str
    token: int
    amounts: dict[str, int]
    learned: int
    keys: dict[bytes, str] = field(default_factory=dict)  # key -> pool
    start: int | None = None  # first revision the model admits it
    end: int | None = None  # revision its keys were deleted


@dataclass
class Outcome:
    violations: list[tuple[int | None, str]] = field(default_factory=list)
    revisions: int = 0
    max_held: dict[str, int] = field(default_factory=dict)
    blocked_revisions: int = 0  # (revision, worker key) pairs queued behind a crafted entry
    rewritten: int = 0

    def fail(self, revision: int | None, message: str) -> None:
        self.violations.append((revision, message))


def check_history(events: list[Seen], ks: Keyspace, slots: list[Slot]) -> Outcome:
    out = Outcome()
    queue_prefix = ks.quotas_prefix() + b"queue/"
    limit_keys = {ks.quota_limit(r): r for r in LIMITS}
    held: list[Held] = []
    by_key: dict[tuple[bytes, int], Held] = {}  # (key, token) -> its reservation
    for s in slots:
        for ev in s.of("admitted"):
            h = Held(
                s.node, ev["rid"], ev["token"], ev["amounts"], max(ev["token"], ev["view_rev"])
            )
            for pool in h.amounts:
                key = ks.quota_queue_prefix(pool) + h.rid.encode()
                h.keys[key] = pool
                by_key[(key, h.token)] = h
            held.append(h)

    live: dict[bytes, tuple[int, int, bytes]] = {}  # key -> (create revision, version, value)
    limits: dict[str, int] = {}
    by_rev: dict[int, list[Seen]] = defaultdict(list)
    for e in events:
        by_rev[e.revision].append(e)
    for rev in sorted(by_rev):
        out.revisions += 1
        touched = False
        for e in by_rev[rev]:
            if e.key in limit_keys:
                if e.kind is EventType.PUT:
                    limits[limit_keys[e.key]] = int(json.loads(e.value)["limit"])
                touched = True
            if not e.key.startswith(queue_prefix):
                continue
            touched = True
            if e.kind is EventType.PUT:
                old = live.get(e.key)
                version = 1 if old is None else old[1] + 1
                if old is not None and old[0] != e.create_revision:
                    out.fail(rev, f"{e.key!r}: create revision changed without a delete")
                live[e.key] = (e.create_revision, version, e.value)
                owner = by_key.get((e.key, e.create_revision))
                if owner is not None and version > 1:
                    out.rewritten += 1
                if owner is None and (e.key, rev) in by_key:
                    out.fail(rev, f"{e.key!r}: a reserve overwrote a key it did not create")
            else:
                gone = live.pop(e.key, None)
                owner = None if gone is None else by_key.get((e.key, gone[0]))
                if owner is not None:
                    if owner.end is None:
                        owner.end = rev
                    elif owner.end != rev:
                        out.fail(rev, f"{owner.rid}@{owner.token}: keys deleted at two revisions")
        if not touched:
            continue

        # the model's admitted keys at this revision
        queues: dict[str, list[tuple[int, bytes, int | None]]] = defaultdict(list)
        for key, (create, version, value) in live.items():
            segment, sep, _ = key[len(queue_prefix) :].partition(b"/")
            try:
                pool = segment.decode("ascii")
            except UnicodeDecodeError:
                continue
            if not sep or not is_pool(pool):
                continue
            queues[pool].append((create, key, model_amount(value, version, pool)))
        admitted_keys: set[bytes] = set()
        for pool, q in queues.items():
            q.sort()
            limit = limits.get(pool)
            total, blocked, crafted_ahead = 0, False, False
            for create, key, amount in q:
                if amount is None:
                    crafted_ahead = True  # blocks everything behind it
                elif (
                    not blocked
                    and not crafted_ahead
                    and limit is not None
                    and total + amount <= limit
                ):
                    total += amount
                    admitted_keys.add(key)
                    continue
                blocked = True  # FIFO: nothing behind the first that does not fit
                if crafted_ahead and (key, create) in by_key:
                    out.blocked_revisions += 1
        for h in held:
            if (
                h.start is None
                and h.token <= rev <= h.learned
                and h.end is None
                and all(k in admitted_keys and live[k][0] == h.token for k in h.keys)
            ):
                h.start = rev

    # held use per pool: intervals [start, end) swept in revision order
    for pool, limit in LIMITS.items():
        marks: list[tuple[int, int, str]] = []
        for h in held:
            if pool not in h.amounts:
                continue
            if h.start is None:
                out.fail(
                    h.learned,
                    f"{h.node}: {h.rid}@{h.token} reported admitted (learned at {h.learned}) "
                    "but the model never admits it before that",
                )
            if h.end is None:
                out.fail(None, f"{h.node}: {h.rid}@{h.token} never deleted")
                continue
            start = h.learned if h.start is None else h.start
            marks.append((start, 1, f"{h.rid}@{h.token}"))
            marks.append((h.end, 0, f"{h.rid}@{h.token}"))
        use = 0
        amounts = {f"{h.rid}@{h.token}": h.amounts.get(pool, 0) for h in held}
        for rev, starting, rid in sorted(marks):  # at one revision, ends (0) before starts
            use += amounts[rid] if starting else -amounts[rid]
            out.max_held[pool] = max(out.max_held.get(pool, 0), use)
            if use > limit:
                out.fail(rev, f"{pool}: reported held use {use} over the limit {limit}")
    if limits != LIMITS:
        out.fail(None, f"limits in etcd {limits}, expected {LIMITS}")
    leftover = [k for k in live if k.startswith(queue_prefix)]
    if leftover:
        out.fail(None, f"queue keys left at the end: {leftover[:5]}")

    for s in slots:
        errors = s.of("error")
        if errors:
            out.fail(None, f"{s.node} task failed: {errors[0]['error']}\n{errors[0]['trace']}")
        admitted_wids = {e["wid"] for e in s.of("admitted")}
        starved = [e["wid"] for e in s.of("waiting") if e["wid"] not in admitted_wids]
        if starved:
            out.fail(None, f"{s.node}: waits never admitted: {starved}")
        if not s.of("stopped"):
            out.fail(None, f"{s.node} did not stop cleanly: {s.exit_message[-2000:]}")
    return out


# --------------------------------------------------------------------------------------------
# the test


@pytest.mark.timeout(RUN_SECONDS + 90)
async def test_crafted_entries_never_admit_more_than_the_limit(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker
) -> None:
    seed = int(os.environ.get("QUOTA_CRAFTED_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nquota crafted: seed={seed} (replay with QUOTA_CRAFTED_SEED={seed})")
    rng = random.Random(seed)
    cfg = Config(endpoints=etcd_config.endpoints, namespace=etcd_config.namespace, ttl=TTL)
    ks = cfg.keyspace
    board = Board()
    slots: list[Slot] = []
    t0 = time.time()
    crafter: Crafter | None = None

    with anyio.fail_after(RUN_SECONDS + 75):
        async with open_transport(cfg) as t, open_transport(cfg) as evil:
            start = (await t.status()).revision + 1
            observer = Observer(t, f"/{cfg.namespace}/".encode(), start, board)
            async with anyio.create_task_group() as tg:
                try:
                    await tg.start(observer.run)
                    for resource, limit in LIMITS.items():
                        await t.put(ks.quota_limit(resource), json.dumps({"limit": limit}).encode())
                    for i in range(WORKERS):
                        node = f"quota-user-{i}"
                        worker = spawn_worker(
                            WORKER_MODULE,
                            ",".join(etcd_endpoints),
                            cfg.namespace,
                            node,
                            str(rng.randrange(2**32)),
                            str(TASKS),
                            str(TTL),
                        )
                        slots.append(Slot(node, worker))
                        tg.start_soon(pump, slots[-1], board)
                    ready = await board.wait(
                        lambda: all(s.of("ready") or s.done.is_set() for s in slots),
                        READY_TIMEOUT,
                    )
                    for s in slots:
                        assert ready and s.of("ready"), f"{s.node} not ready: {s.exit_message}"

                    crafter = Crafter(evil, ks, slots, random.Random(rng.randrange(2**32)))
                    stop = anyio.Event()
                    run_start = time.time()
                    async with anyio.create_task_group() as crafting:
                        crafting.start_soon(crafter.run, stop)
                        crafting.start_soon(crafter.squat_released, observer, board, stop)
                        await anyio.sleep(RUN_SECONDS)  # the run's length, not a wait
                        stop.set()
                    await crafter.cleanup()
                    stop_at = time.time()

                    for s in slots:
                        assert not s.done.is_set(), f"{s.node} died: {s.exit_message}"
                        s.worker.signal(signal.SIGTERM)
                    drained = await board.wait(
                        lambda: all(s.done.is_set() for s in slots), DRAIN_TIMEOUT
                    )
                    assert drained, [s.node for s in slots if not s.done.is_set()]
                    final = await t.put(ks.key("crafted-end"), b"1")
                    assert await board.wait(lambda: observer.revision >= final.revision, 10)
                    tg.cancel_scope.cancel()
                finally:
                    for s in slots:
                        if s.worker.proc.poll() is None:
                            s.worker.proc.kill()

    out = check_history(observer.events, ks, slots)
    admissions = [e for s in slots for e in s.of("admitted")]
    in_run = [e for e in admissions if run_start <= e["t"] <= stop_at]
    assert crafter is not None
    run = max(stop_at - run_start, 1e-9)
    # a worker has at most TASKS reservations at once: a name beyond that was taken fresh
    # because a squat held the one it would have reused
    fresh = sum(int(e["rid"].rpartition("-")[2]) > TASKS for e in admissions)
    print(
        f"  seed={seed} revisions={out.revisions} admissions={len(admissions)} "
        f"({len(in_run) / run:.1f}/s during {run:.1f} s)\n"
        f"  crafted: {dict(crafter.counts)}; held keys rewritten (seen): {out.rewritten}; "
        f"worker keys blocked behind crafted ones: {out.blocked_revisions} (key x revision); "
        f"admissions under names beyond {TASKS} per worker (squats hit): {fresh}\n"
        f"  max held use {out.max_held} (limits {LIMITS}); wall time {time.time() - t0:.1f} s"
    )
    if out.violations:
        shown = [m for _, m in out.violations[:8]]
        raise AssertionError(
            f"seed={seed}: {len(out.violations)} violation(s); first ones:\n" + "\n".join(shown)
        )
    assert in_run, "no admissions during the run"
    for what in ("append", "batch", "rewrite", "squat", "squat-on-release", "no-pool"):
        assert crafter.counts[what] > 0, f"the crafter never managed a {what}"
    assert out.blocked_revisions > 0, "no worker reservation was ever queued behind a crafted entry"
    assert fresh > 0, "no squat ever took a name a worker was about to reuse"
