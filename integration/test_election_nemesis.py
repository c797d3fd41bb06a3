"""Elections and locks among worker processes under a nemesis, checked on etcd's history.

The workers (``integration/workers/campaigner.py`` and ``locker.py``) write to one target
key through the fenced API. A nemesis freezes them past their TTL (SIGSTOP ... SIGCONT),
kills and replaces them (SIGKILL), and kills and restarts etcd members, one at a time.
Afterwards the whole history of the test's namespace is read back with a watch from
revision 1 (compaction is off) and checked:

* every accepted write carries the token of the owner at its revision (the owner being the
  candidate key with the lowest create revision), and names that owner as its writer;
* tokens of accepted writes never decrease;
* no write from a process is accepted while it is frozen or after it was killed: the
  nemesis writes a mark key once a process is stopped (plus a grace for requests already
  on the wire) and another just before it continues, so the frozen span is a revision span;
* every write a worker saw accepted is in the history at that revision, and no write it
  saw refused is;
* progress: owners changed, and accepted writes never paused for long.

Set ``NEMESIS_SEED`` to replay a nemesis schedule; each test prints the seed it used.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from foundation_etcd import Config, Election, EtcdError, open_session
from foundation_etcd.lowlevel import (
    EventType,
    KeyValue,
    Op,
    Transport,
    WatchEvent,
    open_transport,
    prefix_end,
)
from foundation_etcd.testing import EtcdCluster

# the nemesis tests kill etcd members and load both cores: never two at once (make test:
# --dist loadgroup puts them on one worker, one after the other)
pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.xdist_group("nemesis")]

CAMPAIGNER = "integration.workers.campaigner"
LOCKER = "integration.workers.locker"
GRACE = 1.0  # a stopped process's requests already on the wire land within this (1 s covers
# a raft election: a write sent just before the freeze may commit under the next raft leader)
MARKS = "marks"
# Longest wait for an accepted write under this nemesis: a killed owner's key outlives it by
# a TTL, the next in line may be frozen (TTL + 1.5 s) or lose its lease when the raft leader
# dies (ttl=3 leaves no room for a raft election), and a write whose proposal died with the
# raft leader hangs for request_timeout (5 s).
PROGRESS_GAP = 18.0


# --------------------------------------------------------------------------------------------
# worker processes


@dataclass
class Proc:
    """One worker process, as the nemesis and the checkers know it."""

    writer: str
    worker: Any  # conftest.Worker
    stops: list[tuple[float, float]] = field(default_factory=list)  # wall clock
    killed_at: float | None = None
    exited: bool = False
    interrupted: bool = False  # asked to exit (SIGINT)

    @property
    def pid(self) -> int:
        return self.worker.proc.pid

    @property
    def alive(self) -> bool:
        return self.killed_at is None and not self.exited


class Fleet:
    """Worker processes whose events are read continuously into one list."""

    def __init__(self, spawn: Callable, tg: TaskGroup, module: str, args: Callable) -> None:
        self._spawn, self._tg, self._module, self._args = spawn, tg, module, args
        self.procs: dict[str, Proc] = {}
        self.events: list[dict] = []
        self._changed = anyio.Event()

    def spawn(self, writer: str) -> Proc:
        proc = Proc(writer, self._spawn(self._module, *self._args(writer)))
        self.procs[writer] = proc
        self._tg.start_soon(self._pump, proc)
        return proc

    async def _pump(self, proc: Proc) -> None:
        try:
            while True:
                ev = await proc.worker.next_event(None, None)
                ev["writer"] = proc.writer
                ev["rx"] = time.time()
                self.events.append(ev)
                self._notify()
        except AssertionError as exc:  # the worker exited
            proc.exited = True
            if proc.killed_at is None and not proc.interrupted:
                ev = {"event": "exited", "writer": proc.writer, "why": str(exc)[-2000:]}
                self.events.append(ev)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def live(self) -> list[Proc]:
        return [p for p in self.procs.values() if p.alive]

    async def wait_for(self, pred: Callable[[dict], bool], limit: float, since: int = 0) -> dict:
        """The first event from index ``since`` on that satisfies ``pred``, waiting for it."""
        seen = since
        with anyio.fail_after(limit):
            while True:
                changed = self._changed
                for ev in self.events[seen:]:
                    if pred(ev):
                        return ev
                seen = len(self.events)
                await changed.wait()

    def kill_all(self) -> None:
        """SIGKILL every worker still running (stopped ones included), so the pumps end."""
        for proc in self.procs.values():
            if proc.worker.proc.poll() is None:
                proc.worker.proc.kill()
                proc.killed_at = proc.killed_at or time.time()

    async def shutdown(self, limit: float = 15) -> None:
        """SIGINT every live worker (a clean exit: resign, revoke) and wait until all exited."""
        for proc in self.live():
            proc.interrupted = True
            proc.worker.signal(signal.SIGINT)
        with anyio.fail_after(limit):
            while any(not p.exited for p in self.procs.values()):
                await self._changed.wait()


def wait_stopped(pid: int, limit: float = 2.0) -> None:
    """Wait (bounded) until the kernel shows ``pid`` stopped: SIGSTOP is asynchronous."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("T", "t"):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop")


# --------------------------------------------------------------------------------------------
# the nemesis


class Nemesis:
    """Freezes, kills and replaces workers; kills and restarts etcd members. Logs it all."""

    def __init__(
        self,
        seed: int,
        fleet: Fleet,
        t: Transport,
        cfg: Config,
        queue_prefix: bytes,
        cluster: EtcdCluster | None = None,
    ) -> None:
        self.seed, self.fleet, self.t, self.cfg = seed, fleet, t, cfg
        self.queue_prefix = queue_prefix
        self.cluster = cluster
        self.log: list[str] = []
        self._marks = 0
        self._start = time.time()

    def note(self, text: str) -> None:
        line = f"{time.time() - self._start:6.2f}s {text}"
        self.log.append(line)
        print("nemesis:", line, flush=True)

    async def mark(self, kind: str, writer: str) -> int:
        """Write a mark key, retried until etcd takes it; return its revision.

        A put whose proposal died with a raft leader hangs until its deadline, so each try
        gets one second. An abandoned try may still land, later: the checker keeps the
        first revision of each mark, which is after the mark was first sent (a stop) and
        before the process was continued (a cont: only a successful try lets it go on).
        """
        self._marks += 1
        key = self.cfg.keyspace.key(MARKS, f"{self._marks:03d}-{kind}-{writer}")
        with anyio.fail_after(20):
            while True:
                with anyio.move_on_after(1.0):
                    try:
                        return (await self.t.put(key, b"")).revision
                    except EtcdError:
                        await anyio.sleep(0.1)

    async def owner(self) -> str | None:
        """The writer id of the current leader or holder, if etcd answers."""
        with anyio.move_on_after(1.0):
            try:
                res = await self.t.range(
                    Op.get(self.queue_prefix, prefix=True, limit=1, sort_by_create=True)
                )
            except EtcdError:
                return None
            return None if res.first is None else res.first.value.decode()
        return None

    async def freeze(self, proc: Proc, seconds: float) -> None:
        proc.worker.signal(signal.SIGSTOP)
        wait_stopped(proc.pid)
        stopped = time.time()
        self.note(f"SIGSTOP {proc.writer} for {seconds:.1f}s")
        await anyio.sleep(GRACE)
        await self.mark("stop", proc.writer)
        await anyio.sleep(max(0.0, seconds - GRACE))
        await self.mark("cont", proc.writer)
        proc.worker.signal(signal.SIGCONT)
        proc.stops.append((stopped, time.time()))
        self.note(f"SIGCONT {proc.writer}")

    async def kill(self, proc: Proc) -> Proc:
        proc.worker.signal(signal.SIGKILL)
        proc.killed_at = time.time()
        self.note(f"SIGKILL {proc.writer}")
        await anyio.sleep(GRACE)
        await self.mark("kill", proc.writer)
        slot, incarnation = proc.writer.split(".")
        fresh = self.fleet.spawn(f"{slot}.{int(incarnation) + 1}")
        self.note(f"spawned {fresh.writer}")
        return fresh

    async def processes(self, until: float, ttl: float) -> None:
        rng = random.Random(f"{self.seed}-processes")
        while time.monotonic() < until - ttl:
            await anyio.sleep(rng.uniform(0.5, 1.5))
            live = sorted(self.fleet.live(), key=lambda p: p.writer)
            owner = await self.owner()
            by_name = {p.writer: p for p in live}
            proc = by_name[owner] if owner in by_name and rng.random() < 0.6 else rng.choice(live)
            self.note(
                f"next victim {proc.writer} ({'the' if proc.writer == owner else 'not the'} owner)"
            )
            if rng.random() < 0.65:
                await self.freeze(proc, ttl + rng.uniform(0.5, 1.5))
            else:
                await self.kill(proc)

    async def members(self, until: float) -> None:
        rng = random.Random(f"{self.seed}-members")
        cluster = self.cluster
        assert cluster is not None
        while True:
            await anyio.sleep(rng.uniform(3.0, 6.0))
            if time.monotonic() > until - 6:
                return
            leader = await anyio.to_thread.run_sync(cluster.leader_index)
            followers = [m for m in range(3) if m != leader]
            i = leader if leader is not None and rng.random() < 0.4 else rng.choice(followers)
            cluster.kill(i)
            self.note(f"etcd member {i} killed (raft leader: {leader})")
            await anyio.sleep(rng.uniform(0.5, 2.0))
            await anyio.to_thread.run_sync(cluster.restart, i)
            await anyio.to_thread.run_sync(cluster.wait_healthy)
            self.note(f"etcd member {i} restarted, cluster healthy")


def nemesis_seed() -> int:
    seed = int(os.environ.get("NEMESIS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"nemesis seed: {seed} (replay with NEMESIS_SEED={seed})", flush=True)
    return seed


# --------------------------------------------------------------------------------------------
# history


async def read_history(t: Transport, prefix: bytes, until: int) -> list[WatchEvent]:
    """Every change under ``prefix`` from revision 1 to ``until``, read with a watch."""
    events: list[WatchEvent] = []
    nxt = 1
    with anyio.fail_after(30):
        while nxt <= until:
            stream = t.open_watch()
            try:
                await stream.create(prefix, prefix_end(prefix), nxt, progress_notify=False)
                while nxt <= until:
                    resp = await stream.read()
                    assert not resp.compact_revision, "history compacted"
                    assert not resp.canceled, resp.cancel_reason
                    events.extend(resp.events)
                    if resp.events:
                        nxt = resp.events[-1].revision + 1
            except EtcdError:
                await anyio.sleep(0.1)
            finally:
                stream.close()
    return events


async def end_of_history(t: Transport, cfg: Config) -> int:
    """Write a last mark and return its revision."""
    with anyio.fail_after(20):
        while True:
            try:
                return (await t.put(cfg.keyspace.key(MARKS, "end"), b"")).revision
            except EtcdError:
                await anyio.sleep(0.1)


@dataclass(frozen=True)
class Write:
    """A write to the target key that etcd accepted."""

    revision: int
    writer: str
    token: int
    seq: int
    sent: float


@dataclass
class Checked:
    """What :func:`check_history` found."""

    writes: list[Write] = field(default_factory=list)
    owners: list[tuple[int, int, str]] = field(default_factory=list)  # (revision, token, writer)
    marks: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def owner_changes(self) -> int:
        return sum(1 for _, token, _ in self.owners[1:] if token)


def check_history(
    events: Iterable[WatchEvent], queue_prefix: bytes, target: bytes, marks_prefix: bytes
) -> Checked:
    """Replay a history: fenced writes against the owner of the queue, token order, marks.

    The owner at a revision is the queue key with the lowest create revision in the state
    *before* that revision (a transaction's compares see that state).
    """
    out = Checked()
    queue: dict[bytes, KeyValue] = {}
    by_revision: dict[int, list[WatchEvent]] = defaultdict(list)
    for ev in events:
        by_revision[ev.revision].append(ev)

    def owner() -> KeyValue | None:
        return min(queue.values(), key=lambda kv: kv.create_revision, default=None)

    for rev in sorted(by_revision):
        current = owner()
        for ev in by_revision[rev]:
            key = ev.kv.key
            if key == target and ev.type is EventType.PUT:
                body = json.loads(ev.kv.value)
                w = Write(rev, body["writer"], body["token"], body["seq"], body["t"])
                if current is None:
                    out.problems.append(f"rev {rev}: {w} accepted with no owner")
                elif (w.token, w.writer) != (current.create_revision, current.value.decode()):
                    out.problems.append(
                        f"rev {rev}: {w} accepted while the owner was "
                        f"{current.value.decode()} with token {current.create_revision}"
                    )
                if out.writes and w.token < out.writes[-1].token:
                    out.problems.append(f"rev {rev}: token went down: {out.writes[-1]} then {w}")
                out.writes.append(w)
            elif key.startswith(queue_prefix):
                if ev.type is EventType.PUT:
                    queue[key] = ev.kv
                else:
                    queue.pop(key, None)
            elif key.startswith(marks_prefix) and ev.type is EventType.PUT:
                out.marks.setdefault(key[len(marks_prefix) :].decode(), rev)  # first try
        now = owner()
        if (now.create_revision if now else 0) != (current.create_revision if current else 0):
            out.owners.append(
                (rev, now.create_revision, now.value.decode()) if now else (rev, 0, "")
            )

    last_seq: dict[str, int] = {}
    for w in out.writes:
        if w.seq <= last_seq.get(w.writer, 0):
            out.problems.append(
                f"rev {w.revision}: {w} repeats or reorders seq {last_seq[w.writer]}"
            )
        last_seq[w.writer] = w.seq
    out.problems += frozen_writes(out)
    return out


def frozen_writes(checked: Checked) -> list[str]:
    """Writes accepted while their writer was stopped (between marks) or after it was killed."""
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    pending: dict[str, int] = {}
    for name, rev in sorted(checked.marks.items()):
        if name == "end":
            continue
        _, kind, writer = name.split("-", 2)
        if kind == "stop":
            pending[writer] = rev
        elif kind == "cont":
            spans[writer].append((pending.pop(writer), rev))
        elif kind == "kill":
            spans[writer].append((rev, 1 << 62))
    return [
        f"rev {w.revision}: {w} accepted while {w.writer} was stopped or dead (revs {a}..{b})"
        for w in checked.writes
        for a, b in spans.get(w.writer, ())
        if a < w.revision < b
    ]


def worker_views(fleet: Fleet, checked: Checked) -> list[str]:
    """Each worker's own account against etcd: accepted writes are there, refused ones not."""
    by_key = {(w.writer, w.seq): w for w in checked.writes}
    problems = []
    for ev in fleet.events:
        found = by_key.get((ev["writer"], ev.get("seq")))
        # (put() returns 0 while Ownership.txn returns the nested result's empty header:
        # see test_fenced_put_returns_its_revision; compare revisions once it is non-zero)
        if ev["event"] == "write-ok" and (
            found is None or ev["revision"] not in (0, found.revision)
        ):
            problems.append(f"{ev} reported accepted; history has {found}")
        if ev["event"] == "write-refused" and found is not None:
            problems.append(f"{ev} reported refused; history has {found}")
    return problems


def progress_gaps(checked: Checked, start: float, end: float, limit: float) -> list[str]:
    """Spans longer than ``limit`` seconds without an accepted write (by send time)."""
    times = [start, *sorted(w.sent for w in checked.writes if start <= w.sent <= end), end]
    return [
        f"no accepted write for {b - a:.1f}s from {a - start:.1f}s"
        for a, b in itertools.pairwise(times)
        if b - a > limit
    ]


async def leftover_keys(t: Transport, prefix: bytes) -> list[KeyValue]:
    return (await t.get_prefix(prefix)).kvs


def dump(path: Path, seed: int, nemesis: Nemesis | None, fleet: Fleet, checked: Checked) -> None:
    """Keep everything for a post-mortem: in ``$NEMESIS_HISTORY_DIR`` if set (pytest keeps
    only its last three base temporary directories), else in the test's ``tmp_path``."""
    if os.environ.get("NEMESIS_HISTORY_DIR"):
        path = Path(os.environ["NEMESIS_HISTORY_DIR"]) / f"{path.parent.name}-{seed}.json"
    data = {
        "seed": seed,
        "nemesis": nemesis.log if nemesis else [],
        "writes": [asdict(w) for w in checked.writes],
        "owners": checked.owners,
        "marks": checked.marks,
        "problems": checked.problems,
        "events": fleet.events,
    }
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"history written to {path}", flush=True)


def report(seed: int, problems: list[str]) -> str:
    return f"seed {seed}: {len(problems)} problems:\n" + "\n".join(problems[:30])


# --------------------------------------------------------------------------------------------
# the checkers themselves (no etcd): each violation is caught


def _put(key: bytes, value: bytes | str, create: int, mod: int) -> WatchEvent:
    value = value.encode() if isinstance(value, str) else value
    return WatchEvent(EventType.PUT, KeyValue(key, value, create, mod, 1))


def _write(writer: str, token: int, seq: int, rev: int) -> WatchEvent:
    body = {"writer": writer, "token": token, "seq": seq, "t": float(rev)}
    return _put(b"/n/t/target", json.dumps(body), 3, rev)


def _check(events: list[WatchEvent]) -> list[str]:
    return check_history(events, b"/n/t/q/", b"/n/t/target", b"/n/t/marks/").problems


def test_checkers_catch_violations() -> None:
    a, b = b"/n/t/q/a", b"/n/t/q/b"
    good = [
        _put(a, "A", 2, 2),
        _write("A", 2, 1, 3),
        _put(b, "B", 4, 4),
        _write("A", 2, 2, 5),
        WatchEvent(EventType.DELETE, KeyValue(a, b"", 0, 6, 0)),
        _write("B", 4, 1, 7),
    ]
    checked = check_history(good, b"/n/t/q/", b"/n/t/target", b"/n/t/marks/")
    assert checked.problems == [] and checked.owners == [(2, 2, "A"), (6, 4, "B")]
    assert [w.revision for w in checked.writes] == [3, 5, 7]

    assert "owner was B with token 4" in _check([*good, _write("A", 2, 3, 8)])[0]  # stale
    assert "owner was B" in _check([*good, _write("A", 4, 3, 8)])[0]  # not the owner's key
    gone = WatchEvent(EventType.DELETE, KeyValue(b, b"", 0, 8, 0))
    assert "no owner" in _check([*good, gone, _write("B", 4, 2, 9)])[0]
    down = _check([*good, _write("A", 2, 3, 8)])
    assert any("token went down" in p for p in down)
    assert "repeats" in _check([*good, _write("B", 4, 1, 8)])[0]
    marks = [_put(b"/n/t/marks/001-stop-B", "", 8, 8), _put(b"/n/t/marks/002-cont-B", "", 10, 10)]
    assert "stopped or dead" in _check([*good, marks[0], _write("B", 4, 2, 9), marks[1]])[0]
    assert _check([*good, marks[0], marks[1], _write("B", 4, 2, 11)]) == []
    kill = _put(b"/n/t/marks/001-kill-B", "", 8, 8)
    assert "stopped or dead" in _check([*good, kill, _write("B", 4, 2, 9)])[0]

    first = Holding("A", 2, enter=1.0, end=3.0, excused=False)
    second = Holding("B", 4, enter=2.0, end=4.0, excused=False)
    assert "still inside" in overlapping([first, second], checked)[0]
    excused = Holding("A", 2, enter=1.0, end=3.0, excused=True)
    assert overlapping([excused, second], checked) == []
    late = Checked(writes=[Write(9, "A", 2, 1, 0.0), *checked.writes])  # A wrote after B
    assert "interleaved" in overlapping([excused, second], late)[0]
    assert progress_gaps(checked, 0.0, 20.0, 5.0) == ["no accepted write for 13.0s from 7.0s"]


# --------------------------------------------------------------------------------------------
# tests


async def test_frozen_leader_is_fenced(
    etcd_config: Config, etcd_endpoints: list[str], spawn_worker, tmp_path: Path
) -> None:
    """Freeze the leader past its TTL: a successor leads with a higher token; on SIGCONT the
    old leader reports its leadership lost and etcd never took a write of its token after
    the successor's election."""
    ttl = 2.0
    cfg = etcd_config.with_options(ttl=ttl)
    ks = cfg.keyspace
    prefix, target = ks.election_prefix("e"), ks.key("target")
    args = [",".join(etcd_endpoints), cfg.namespace, "e", target.decode(), str(ttl)]
    checked = Checked()
    async with open_transport(cfg) as t, anyio.create_task_group() as tg:
        fleet = Fleet(spawn_worker, tg, CAMPAIGNER, lambda w: [*args, w])
        nemesis = Nemesis(0, fleet, t, cfg, prefix)
        try:
            for i in range(3):
                fleet.spawn(f"c{i}.1")
            first = await fleet.wait_for(lambda e: e["event"] == "elected", 20)
            old, t1 = fleet.procs[first["writer"]], first["token"]
            await fleet.wait_for(lambda e: e["event"] == "write-ok" and e["seq"] >= 3, 5)

            old.worker.signal(signal.SIGSTOP)
            wait_stopped(old.pid)
            stopped = time.time()
            await anyio.sleep(GRACE)
            await nemesis.mark("stop", old.writer)
            since = len(fleet.events)
            new = await fleet.wait_for(lambda e: e["event"] == "elected", ttl + 5, since)
            assert new["writer"] != old.writer and new["token"] > t1, new
            assert new["t"] - stopped > ttl - cfg.safe_keepalive_interval - 0.2, "too early"
            await fleet.wait_for(
                lambda e: e["event"] == "write-ok" and e["token"] == new["token"], 5
            )
            await nemesis.mark("cont", old.writer)
            old.worker.signal(signal.SIGCONT)
            resumed = time.time()
            old.stops.append((stopped, resumed))

            lost = await fleet.wait_for(
                lambda e: e["event"] == "lost" and e["writer"] == old.writer, 5
            )
            assert lost["token"] == t1 and lost["error"] == "LeadershipLostError", lost
            # it campaigns again, behind the others
            again = await fleet.wait_for(
                lambda e: (
                    e["event"] == "lease" and e["writer"] == old.writer and e["generation"] == 2
                ),
                5,
            )
            assert again["t"] >= lost["t"] - 1
            await anyio.sleep(0.5)  # let a late write of the old leader show, if any
            await fleet.shutdown()
            end = await end_of_history(t, cfg)
            history = await read_history(t, ks.prefix, end)
            checked = check_history(history, prefix, target, ks.key(MARKS, ""))
        finally:
            fleet.kill_all()
        dump(tmp_path / "history.json", 0, nemesis, fleet, checked)

    problems = checked.problems + worker_views(fleet, checked)
    assert not problems, report(0, problems)
    handover = next(rev for rev, token, _ in checked.owners if token == new["token"])
    assert handover > max(w.revision for w in checked.writes if w.token == t1)
    late = [w for w in checked.writes if w.token == t1 and w.revision > handover]
    assert not late, late
    assert any(w.token == new["token"] and w.revision > handover for w in checked.writes)
    # nor did the old leader believe a write of its own went through after it woke up
    assert not [
        e
        for e in fleet.events
        if e["writer"] == old.writer
        and e["event"] == "write-ok"
        and e["token"] == t1
        and e["t"] > resumed
    ]


async def test_fenced_put_returns_its_revision(etcd_config: Config) -> None:
    key = etcd_config.keyspace.key("target")
    async with (
        open_transport(etcd_config) as t,
        open_session(t) as s,
        Election(s, "e").campaign() as lead,
    ):
        rev = await lead.put(key, b"v")
        kv = await t.get(key)
        assert kv is not None and rev == kv.mod_revision


# --------------------------------------------------------------------------------------------
# under the nemesis


async def run_nemesis(nemesis: Nemesis, duration: float, ttl: float) -> tuple[float, float]:
    """Run the nemesis lanes for ``duration`` seconds; return its wall-clock start and end."""
    start = time.time()
    until = time.monotonic() + duration
    with anyio.fail_after(duration + 45):
        async with anyio.create_task_group() as lanes:
            lanes.start_soon(nemesis.processes, until, ttl)
            lanes.start_soon(nemesis.members, until)
    return start, time.time()


REVOKE_GRACE = 3.0  # seconds etcd may take to apply the revocation of an expired lease


async def live_lease_keys(t: Transport, prefix: bytes) -> list[str]:
    """Keys under ``prefix`` whose lease etcd no longer knows (it should have deleted them).

    An expired lease is revoked by the raft leader on its own time (a proposal, in batches,
    and later after a leader change), so a key whose lease has just expired is given
    ``REVOKE_GRACE`` seconds to go before it counts as left behind.
    """
    problems = []
    for kv in await leftover_keys(t, prefix):
        info = await t.lease_time_to_live(kv.lease)
        if info.ttl > 0:
            continue
        gone = False
        for _ in range(int(REVOKE_GRACE / 0.1)):  # polled: bounded, as etcd's own revoke
            again = await t.get(kv.key)
            if again is None or again.create_revision != kv.create_revision:
                gone = True
                break
            await anyio.sleep(0.1)
        if not gone:
            problems.append(
                f"{kv.key!r} left behind under dead lease {kv.lease:x} (ttl {info.ttl}), "
                f"still there {REVOKE_GRACE:g}s later"
            )
    return problems


async def after_shutdown(t: Transport, fleet: Fleet, prefix: bytes, ttl: float) -> list[str]:
    """Workers exited cleanly, revoking their current lease: none of its keys may remain, and
    whatever else remains (killed workers', lost leases') must go with its lease."""
    current: dict[str, int] = {}
    for e in fleet.events:
        if e["event"] == "lease":
            current[e["writer"]] = e["lease"]
    revoked = {lease for w, lease in current.items() if fleet.procs[w].interrupted}
    problems = [
        f"{kv.key!r} of lease {kv.lease:x} left behind by a worker that exited cleanly"
        for kv in await leftover_keys(t, prefix)
        if kv.lease in revoked
    ]
    left: list[KeyValue] = []
    for _ in range(int((ttl + 3) / 0.1)):  # polled: etcd expires leases on its own time
        left = await leftover_keys(t, prefix)
        if not left:
            break
        await anyio.sleep(0.1)
    return problems + [f"{kv.key!r} still there {ttl + 3:g}s after its lease" for kv in left]


def unexpected(fleet: Fleet) -> list[str]:
    """Workers that died on their own, and errors that are not etcd being unavailable."""
    expected = {"EtcdUnavailableError", "NoLeaderError", "AmbiguousResultError"}
    return [
        f"{e}"
        for e in fleet.events
        if e["event"] == "exited"
        or (e["event"] == "error" and e.get("reason", "").split("(")[0] not in expected)
    ]


@pytest.mark.timeout(170)
async def test_election_under_nemesis(
    etcd_cluster: EtcdCluster, etcd_namespace: str, spawn_worker, tmp_path: Path
) -> None:
    """5 campaigners on a 3-member cluster for 60 s of freezes, crashes and member loss."""
    seed = nemesis_seed()
    ttl, duration = 3.0, 60.0
    cfg = Config(endpoints=tuple(etcd_cluster.endpoints), namespace=etcd_namespace, ttl=ttl)
    ks = cfg.keyspace
    prefix, target = ks.election_prefix("e"), ks.key("target")
    args = [",".join(cfg.endpoints), cfg.namespace, "e", target.decode(), str(ttl)]
    checked, problems = Checked(), []
    nemesis: Nemesis | None = None
    async with open_transport(cfg) as t, anyio.create_task_group() as tg:
        fleet = Fleet(spawn_worker, tg, CAMPAIGNER, lambda w: [*args, w])
        try:
            for i in range(5):
                fleet.spawn(f"c{i}.1")
            await fleet.wait_for(lambda e: e["event"] == "write-ok", 30)
            nemesis = Nemesis(seed, fleet, t, cfg, prefix, etcd_cluster)
            start, end = await run_nemesis(nemesis, duration, ttl)
            # a leader writes again once the faults stop
            await fleet.wait_for(lambda e: e["event"] == "write-ok" and e["t"] > end, PROGRESS_GAP)
            problems += await live_lease_keys(t, prefix)
            await fleet.shutdown()
            problems += await after_shutdown(t, fleet, prefix, ttl)
            last = await end_of_history(t, cfg)
            history = await read_history(t, ks.prefix, last)
            checked = check_history(history, prefix, target, ks.key(MARKS, ""))
        finally:
            fleet.kill_all()
        dump(tmp_path / "history.json", seed, nemesis, fleet, checked)

    problems += checked.problems + worker_views(fleet, checked) + unexpected(fleet)
    problems += progress_gaps(checked, start, end, PROGRESS_GAP)
    changes = checked.owner_changes()
    print(f"seed {seed}: {len(checked.writes)} accepted writes, {changes} leader changes")
    assert not problems, report(seed, problems)
    assert changes >= 3, f"seed {seed}: only {changes} leader changes"
    assert len(checked.writes) >= duration, f"seed {seed}: {len(checked.writes)} writes"


# --------------------------------------------------------------------------------------------
# locks


@dataclass(frozen=True)
class Holding:
    """One turn of a worker inside the lock, by its own clock (wall time)."""

    writer: str
    token: int
    enter: float
    end: float
    excused: bool  # frozen around it or killed in it: it may outlive its lock


def holdings(fleet: Fleet, shutdown_at: float, ttl: float) -> list[Holding]:
    out = []
    for proc in fleet.procs.values():
        inside: dict | None = None
        for e in fleet.events:
            if e["writer"] != proc.writer:
                continue
            if e["event"] == "enter":
                inside = e
            elif (
                e["event"] in ("exit", "lost", "error") and inside and e["token"] == inside["token"]
            ):
                out.append((proc, inside, e.get("body_end") or e["t"]))
                inside = None
        if inside is not None:
            out.append((proc, inside, proc.killed_at or shutdown_at))
    result = []
    for proc, enter, end in out:
        # a process frozen just before it said "enter" may have been granted the lock long
        # before, so a freeze up to 2 TTLs earlier excuses it too
        frozen = any(a < end and b > enter["t"] - 2 * ttl for a, b in proc.stops)
        killed = proc.killed_at is not None and proc.killed_at <= end + 0.5
        result.append(Holding(proc.writer, enter["token"], enter["t"], end, frozen or killed))
    return sorted(result, key=lambda h: (h.token, h.enter))


def overlapping(hs: list[Holding], checked: Checked) -> list[str]:
    """Holders inside at once: only an excused one may be, and never both with accepted writes
    interleaved."""
    revs: dict[tuple[str, int], list[int]] = defaultdict(list)
    for w in checked.writes:
        revs[w.writer, w.token].append(w.revision)
    problems = []
    for i, a in enumerate(hs):
        for b in hs[i + 1 :]:
            if b.token == a.token or not (b.enter < a.end and a.enter < b.end):
                continue
            if not a.excused:
                problems.append(f"{a} was still inside when {b} entered (not frozen, not killed)")
            ra, rb = revs.get((a.writer, a.token)), revs.get((b.writer, b.token))
            if ra and rb and max(ra) > min(rb):
                problems.append(f"overlapping {a} and {b} both made accepted writes, interleaved")
    return problems


@pytest.mark.timeout(140)
async def test_locks_under_nemesis(
    etcd_cluster: EtcdCluster, etcd_namespace: str, spawn_worker, tmp_path: Path
) -> None:
    """4 lockers on a 3-member cluster for 30 s of freezes, crashes and member loss."""
    seed = nemesis_seed()
    ttl, duration = 3.0, 30.0
    cfg = Config(endpoints=tuple(etcd_cluster.endpoints), namespace=etcd_namespace, ttl=ttl)
    ks = cfg.keyspace
    prefix, target = ks.lock_prefix("l"), ks.key("target")
    args = [",".join(cfg.endpoints), cfg.namespace, "l", target.decode(), str(ttl)]
    checked, problems = Checked(), []
    nemesis: Nemesis | None = None
    async with open_transport(cfg) as t, anyio.create_task_group() as tg:
        fleet = Fleet(spawn_worker, tg, LOCKER, lambda w: [*args, w, f"{seed}-{w}"])
        try:
            for i in range(4):
                fleet.spawn(f"l{i}.1")
            await fleet.wait_for(lambda e: e["event"] == "write-ok", 30)
            nemesis = Nemesis(seed, fleet, t, cfg, prefix, etcd_cluster)
            start, end = await run_nemesis(nemesis, duration, ttl)
            await fleet.wait_for(lambda e: e["event"] == "write-ok" and e["t"] > end, PROGRESS_GAP)
            problems += await live_lease_keys(t, prefix)
            shutdown_at = time.time()
            await fleet.shutdown()
            problems += await after_shutdown(t, fleet, prefix, ttl)
            last = await end_of_history(t, cfg)
            history = await read_history(t, ks.prefix, last)
            checked = check_history(history, prefix, target, ks.key(MARKS, ""))
        finally:
            fleet.kill_all()
        dump(tmp_path / "history.json", seed, nemesis, fleet, checked)

    hs = holdings(fleet, shutdown_at, ttl)
    problems += checked.problems + worker_views(fleet, checked) + unexpected(fleet)
    problems += overlapping(hs, checked) + progress_gaps(checked, start, end, PROGRESS_GAP)
    print(f"seed {seed}: {len(hs)} holdings, {len(checked.writes)} accepted writes")
    assert not problems, report(seed, problems)
    assert checked.owner_changes() >= 20, f"seed {seed}: {checked.owner_changes()} handovers"
