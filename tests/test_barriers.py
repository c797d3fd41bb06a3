"""Barrier and DoubleBarrier against real etcd: histories in process and in etcd's own log."""

import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from foundation_etcd import (
    Barrier,
    BarrierError,
    Config,
    DoubleBarrier,
    EtcdError,
    InvalidIdError,
    LeaseLostError,
    Session,
    open_session,
)
from foundation_etcd.lowlevel import Transport, open_transport, prefix_end
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


@asynccontextmanager
async def sessions_of(cfg: Config, n: int) -> AsyncIterator[tuple[Transport, list[Session]]]:
    # a long TTL: on a loaded machine a starved event loop can miss its keepalives, and lease
    # loss is not what most tests here are about (those that are revoke the lease themselves)
    cfg = cfg.with_options(ttl=10.0)
    async with AsyncExitStack() as stack:
        t = await stack.enter_async_context(open_transport(cfg))
        ss = [await stack.enter_async_context(open_session(t)) for _ in range(n)]
        yield t, ss


def _count(t: Transport, prefix: bytes, n: int = 1):
    """A predicate for wait_until: at least ``n`` participant keys exist."""

    async def check() -> bool:
        return len((await t.get_prefix(prefix + b"w/")).kvs) >= n

    return check


class Observer:
    """Every change under a prefix, in etcd's order, from a watch of its own."""

    def __init__(self, t: Transport, prefix: bytes) -> None:
        self.t, self.prefix = t, prefix
        self.events: list[tuple[str, bytes, bytes, int, int]] = []  # kind, key, value, cr, rev
        self.revision = 0
        self.gone: dict[int, int] = {}  # round -> revision its last member's key went

    async def run(self, start: int) -> None:
        stream = self.t.open_watch()
        try:
            end = prefix_end(self.prefix)
            await stream.create(self.prefix, end, start, progress_notify=False)
            while True:
                resp = await stream.read()
                for ev in resp.events:
                    kv = ev.kv
                    self.events.append(
                        (ev.type.value, kv.key, kv.value, kv.create_revision, ev.revision)
                    )
                    self.revision = ev.revision
        finally:
            stream.close()

    async def caught_up(self) -> None:
        """Wait for every change so far (the tests write nothing outside the prefix)."""
        rev = await self.t.revision()
        await wait_until(lambda: self.revision >= rev)

    def rounds(self, count: int) -> dict[int, set[bytes]]:
        """Replay etcd's log: check each formation, return each round's member keys."""
        record = self.prefix + b"round"
        live: dict[bytes, int] = {}
        rounds: dict[int, set[bytes]] = {}
        number = last = 0
        for kind, key, value, cr, rev in self.events:
            if key != record:
                if kind == "delete":
                    if live.pop(key) <= last:
                        self.gone[number] = rev
                else:
                    assert key not in live, "a participant key was rewritten"
                    live[key] = cr
                continue
            assert kind == "put", "the round record was deleted"
            data = json.loads(value)
            if data["round"] == number:  # a withdrawal's rewrite: unchanged
                assert data["last"] == last
                continue
            assert data["round"] == number + 1, (data, number)
            assert not [k for k, c in live.items() if c <= last], f"round {number} still inside"
            members = {k for k, c in live.items() if c <= data["last"]}
            assert len(members) == count, (rev, data, members)
            assert live[max(members, key=live.__getitem__)] == data["last"]
            number, last = data["round"], data["last"]
            rounds[number] = members
        return rounds


@asynccontextmanager
async def observing(t: Transport, prefix: bytes) -> AsyncIterator[Observer]:
    obs = Observer(t, prefix)
    start = await t.revision() + 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(obs.run, start)
        yield obs
        tg.cancel_scope.cancel()


# ----------------------------------------------------------------------------------- Barrier
async def test_barrier_set_remove_wait(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (t, (a, b)):
        gate, other = Barrier(a, "gate"), Barrier(b, "gate")
        assert not await other.is_set()
        with anyio.fail_after(5):
            await other.wait()  # not set: returns at once
        assert await gate.set() is True
        assert await other.set() is False  # already set: this call did not set it
        assert await other.is_set()
        assert (await t.get(gate.key)).lease == 0
        history: list[str] = []

        async def waiter() -> None:
            await other.wait()
            history.append("released")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.3)  # room for an early return (none must happen)
                assert history == []
                history.append("remove")
                assert await gate.remove() is True
        assert history == ["remove", "released"]
        assert await gate.remove() is False
        assert not await gate.is_set()


async def test_barrier_hold_released_when_setter_session_closes(etcd_config: Config) -> None:
    async with open_transport(etcd_config) as t, open_session(t) as watcher:
        history: list[str] = []
        other = Barrier(watcher, "held")

        async def waiter() -> None:
            await other.wait()
            history.append("released")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async with open_session(t) as setter:
                    assert await Barrier(setter, "held").set(hold=True)
                    assert (await t.get(other.key)).lease == setter.lease.id
                    tg.start_soon(waiter)
                    await anyio.sleep(0.3)
                    assert history == []
                    history.append("close")
        assert history == ["close", "released"]
        assert not await other.is_set()


async def test_barrier_wait_survives_other_writes(etcd_config: Config) -> None:
    """Puts of the key (a set that refreshes it) wake nothing; only the removal does."""
    async with sessions_of(etcd_config, 1) as (t, (a,)):
        gate = Barrier(a, "rewritten")
        await gate.set()
        done = anyio.Event()

        async def waiter() -> None:
            await gate.wait()
            done.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                for i in range(5):
                    await t.put(gate.key, str(i))
                await anyio.sleep(0.2)
                assert not done.is_set()
                await gate.remove()
                await done.wait()


# ------------------------------------------------------------------------ DoubleBarrier input
async def test_double_barrier_validates_before_sending(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 1) as (t, (a,)):
        before = await t.revision()
        for bad in (0, -1, 1001, True, 2.0, "3", None):
            with pytest.raises(ValueError, match="count must be"):
                DoubleBarrier(a, "ok", bad)  # type: ignore[arg-type]
        for name in ("", "a/b", "_x", "x" * 129, 3):
            with pytest.raises(InvalidIdError):
                DoubleBarrier(a, name, 2)  # type: ignore[arg-type]
            with pytest.raises(InvalidIdError):
                Barrier(a, name)  # type: ignore[arg-type]
        DoubleBarrier(a, "ok", 1)
        DoubleBarrier(a, "ok", 1000)
        assert await t.revision() == before


async def test_double_barrier_protocol_misuse(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (t, (a, b)):
        prefix = etcd_config.keyspace.double_barrier_prefix("misuse")
        one = DoubleBarrier(a, "misuse", 2)
        with pytest.raises(BarrierError, match="without enter"):
            await one.leave()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one.enter)
                await wait_until(_count(t, prefix))  # one is waiting in enter
                with pytest.raises(BarrierError, match="another task"):
                    await one.enter()
                with pytest.raises(BarrierError, match="another task"):
                    await one.leave()
                two = DoubleBarrier(b, "misuse", 2)
                await two.enter()
            assert one.round == two.round == 1
            with pytest.raises(BarrierError, match="twice"):
                await one.enter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(one.leave)
                tg.start_soon(two.leave)
        assert one.round is None
        with pytest.raises(BarrierError, match="without enter"):
            await one.leave()


async def test_a_crafted_round_record_lets_nobody_through(etcd_config: Config) -> None:
    """A round record whose last member comes after the record itself was not written here."""
    async with sessions_of(etcd_config, 1) as (t, (a,)):
        prefix = etcd_config.keyspace.double_barrier_prefix("crafted")
        await t.put(prefix + b"round", json.dumps({"round": 1, "last": 10**9}).encode())
        with anyio.fail_after(10), pytest.raises(BarrierError, match="round record"):
            await DoubleBarrier(a, "crafted", 3).enter()  # alone, never let through
        assert [kv.key for kv in (await t.get_prefix(prefix)).kvs] == [prefix + b"round"]


# ---------------------------------------------------------------------- DoubleBarrier rounds
def check_in_process(history: list[tuple[str, str, int]], count: int) -> None:
    """Per round: every member called enter before any returned, and leave likewise."""
    rounds_of: dict[str, list[int]] = {}  # a participant's k-th call-enter is its k-th round
    for ev, who, rnd in history:
        if ev == "entered":
            rounds_of.setdefault(who, []).append(rnd)
    first: dict[tuple[int, str], int] = {}
    last: dict[tuple[int, str], int] = {}
    seen: Counter[tuple[int, str]] = Counter()
    nth: Counter[str] = Counter()
    for i, (ev, who, _) in enumerate(history):
        nth[who] += ev == "call-enter"
        at = (rounds_of[who][nth[who] - 1], ev)
        first.setdefault(at, i)
        last[at] = i
        seen[at] += 1
    for rnd in {r for rs in rounds_of.values() for r in rs}:
        assert all(seen[rnd, ev] == count for ev in ("call-enter", "entered", "left")), rnd
        assert last[rnd, "call-enter"] < first[rnd, "entered"], f"round {rnd}: early enter"
        assert last[rnd, "call-leave"] < first[rnd, "left"], f"round {rnd}: early leave"


async def test_five_sessions_never_pass_early(etcd_config: Config) -> None:
    """5 sessions, 15 rounds with random delays: both the in-process and etcd histories."""
    rng = random.Random(18)
    rounds = 15
    async with sessions_of(etcd_config, 5) as (t, ss):
        prefix = etcd_config.keyspace.double_barrier_prefix("five")
        history: list[tuple[str, str, int]] = []
        keys: dict[int, set[bytes]] = {}
        left_at: dict[int, list[int]] = {}

        async def participant(s: Session, who: str) -> None:
            b = DoubleBarrier(s, "five", 5)
            for _ in range(rounds):
                await anyio.sleep(rng.uniform(0, 0.03))
                history.append(("call-enter", who, 0))
                await b.enter()
                rnd = b.round
                assert rnd is not None and b.key is not None
                history.append(("entered", who, rnd))
                keys.setdefault(rnd, set()).add(b.key)
                await anyio.sleep(rng.uniform(0, 0.03))
                history.append(("call-leave", who, rnd))
                await b.leave()
                history.append(("left", who, rnd))
                left_at.setdefault(rnd, []).append(await t.revision())

        async with observing(t, prefix) as obs:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i, s in enumerate(ss):
                        tg.start_soon(participant, s, f"p{i}")
                await obs.caught_up()
        check_in_process(history, 5)
        formed = obs.rounds(5)
        assert sorted(formed) == list(range(1, rounds + 1))
        for rnd, members in formed.items():
            assert members == keys[rnd], rnd
            assert all(rev >= obs.gone[rnd] for rev in left_at[rnd]), f"round {rnd} left early"
        assert (await t.get_prefix(prefix + b"w/")).kvs == []


@pytest.mark.once
@pytest.mark.parametrize("n", [3, 5])
async def test_thousand_rounds_no_spurious_pass(etcd_config: Config, n: int) -> None:
    rounds = 1000 if n == 3 else 100
    async with sessions_of(etcd_config, n) as (t, ss):
        prefix = etcd_config.keyspace.double_barrier_prefix("many")
        history: list[tuple[str, str, int]] = []
        keys: dict[int, set[bytes]] = {}

        async def participant(s: Session, who: str) -> None:
            b = DoubleBarrier(s, "many", n)
            for _ in range(rounds):
                history.append(("call-enter", who, 0))
                await b.enter()
                rnd = b.round
                assert rnd is not None and b.key is not None
                keys.setdefault(rnd, set()).add(b.key)
                history.append(("entered", who, rnd))
                history.append(("call-leave", who, rnd))
                await b.leave()
                history.append(("left", who, rnd))

        async with observing(t, prefix) as obs:
            started = time.monotonic()
            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for i, s in enumerate(ss):
                        tg.start_soon(participant, s, f"p{i}")
            took = time.monotonic() - started
            with anyio.fail_after(10):
                await obs.caught_up()
        print(f"{rounds} rounds of {n}: {took:.1f} s")
        check_in_process(history, n)
        formed = obs.rounds(n)
        assert sorted(formed) == list(range(1, rounds + 1))
        assert all(formed[r] == keys[r] for r in formed)


async def test_late_joiners_wait_for_the_next_round(etcd_config: Config) -> None:
    """count 3, 5 enter: the 3 oldest keys pass; a 6th arriving while they are inside makes 3
    candidates, who pass only once round 1 has left."""
    async with sessions_of(etcd_config, 6) as (t, ss):
        prefix = etcd_config.keyspace.double_barrier_prefix("late")
        bs = [DoubleBarrier(s, "late", 3) for s in ss]
        go = [anyio.Event() for _ in bs]
        history: list[tuple[str, int, int]] = []
        keys: dict[int, bytes] = {}

        async def run(i: int) -> None:
            await bs[i].enter()
            rnd, keys[i] = bs[i].round or 0, bs[i].key or b""
            history.append(("entered", i, rnd))
            await go[i].wait()
            history.append(("call-leave", i, rnd))
            await bs[i].leave()
            history.append(("left", i, rnd))

        def entered(rnd: int) -> list[int]:
            return [i for ev, i, r in history if ev == "entered" and r == rnd]

        async with observing(t, prefix) as obs:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for i in range(5):
                        tg.start_soon(run, i)
                    await wait_until(lambda: len(entered(1)) == 3)
                    first = entered(1)
                    await obs.caught_up()
                    puts = sorted((cr, k) for kind, k, _, cr, _ in obs.events if kind == "put")
                    oldest = [k for _, k in puts if k.startswith(prefix + b"w/")][:3]
                    assert {keys[i] for i in first} == set(oldest)
                    tg.start_soon(run, 5)
                    await anyio.sleep(0.5)  # room for a spurious pass: none may happen
                    assert len(history) == 3
                    for i in first:
                        go[i].set()
                    await wait_until(lambda: len(entered(2)) == 3)
                    second = entered(2)
                    assert sorted(first + second) == list(range(6))
                    for i in second:
                        go[i].set()
                await obs.caught_up()
        last_call = max(n for n, (ev, _, r) in enumerate(history) if ev == "call-leave" and r == 1)
        first_pass = min(n for n, (ev, _, r) in enumerate(history) if ev == "entered" and r == 2)
        assert last_call < first_pass, history
        assert obs.rounds(3) == {1: {keys[i] for i in first}, 2: {keys[i] for i in second}}


async def test_cancelled_enter_removes_its_key_and_never_counts(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 3) as (t, (a, b, c)):
        prefix = etcd_config.keyspace.double_barrier_prefix("cancel")
        early = DoubleBarrier(a, "cancel", 2)
        async with observing(t, prefix) as obs:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.5):
                    await early.enter()
            assert (await t.get_prefix(prefix + b"w/")).kvs == []
            assert early.round is None
            x, y = DoubleBarrier(b, "cancel", 2), DoubleBarrier(c, "cancel", 2)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(x.enter)
                    tg.start_soon(y.enter)
            assert x.round == y.round == 1
            with anyio.fail_after(10):
                await obs.caught_up()
            assert obs.rounds(2) == {1: {x.key, y.key}}
            # cancelled again, now while a round is inside: still not counted, key gone
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    await early.enter()
            assert {kv.key for kv in (await t.get_prefix(prefix + b"w/")).kvs} == {x.key, y.key}
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(x.leave)
                    tg.start_soon(y.leave)


async def test_cancelled_leave_has_left(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (t, (a, b)):
        prefix = etcd_config.keyspace.double_barrier_prefix("quit")
        x, y = DoubleBarrier(a, "quit", 2), DoubleBarrier(b, "quit", 2)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(x.enter)
                tg.start_soon(y.enter)
        with pytest.raises(TimeoutError), anyio.fail_after(0.3):
            await x.leave()  # y is still inside
        assert x.round is None
        assert [kv.key for kv in (await t.get_prefix(prefix + b"w/")).kvs] == [y.key]
        with anyio.fail_after(5):
            await y.leave()  # x has left: nothing to wait for


async def test_cancellations_racing_formation(etcd_config: Config) -> None:
    """6 participants of count 3 enter with random short timeouts: every round etcd formed
    had 3 live members, those that timed out left no key, and every pass is a member."""
    rng = random.Random(7)
    async with sessions_of(etcd_config, 6) as (t, ss):
        prefix = etcd_config.keyspace.double_barrier_prefix("race")
        passed: dict[int, set[bytes]] = {}

        async def participant(s: Session) -> None:
            b = DoubleBarrier(s, "race", 3)
            for _ in range(15):
                try:
                    with anyio.fail_after(rng.uniform(0.01, 0.2)):
                        await b.enter()
                except TimeoutError:
                    assert b.round is None
                    continue
                assert b.round is not None and b.key is not None
                passed.setdefault(b.round, set()).add(b.key)
                with anyio.move_on_after(rng.uniform(0, 0.3)):  # leave with a timeout too
                    await b.leave()
                assert b.round is None  # a cancelled leave has left all the same

        async with observing(t, prefix) as obs:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for s in ss:
                        tg.start_soon(participant, s)
                await obs.caught_up()
        formed = obs.rounds(3)
        assert set(passed) <= set(formed)
        for rnd, keys in passed.items():
            assert keys <= formed[rnd]
        assert (await t.get_prefix(prefix + b"w/")).kvs == []


async def test_spurious_wakeups_never_release(etcd_config: Config) -> None:
    """Events that look like progress (the record rewritten, a foreign key that makes the
    count for a moment) only lead to reads: nobody passes before the real third one."""
    async with sessions_of(etcd_config, 3) as (t, (a, b, c)):
        prefix = etcd_config.keyspace.double_barrier_prefix("spurious")
        x, y = DoubleBarrier(a, "spurious", 3), DoubleBarrier(b, "spurious", 3)
        history: list[str] = []

        async def enter(d: DoubleBarrier, who: str) -> None:
            await d.enter()
            history.append(who)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(enter, x, "x")
                tg.start_soon(enter, y, "y")
                await wait_until(_count(t, prefix, 2))
                await t.put(prefix + b"round", json.dumps({"round": 0, "last": 0}))
                await t.put(prefix + b"w/intruder", b"")  # three keys, but no participant's
                await t.delete(prefix + b"w/intruder")
                await t.put(prefix + b"round", json.dumps({"round": 0, "last": 0}))
                await anyio.sleep(0.3)  # room for a spurious pass: none may happen
                assert history == []
                history.append("z")
                z = DoubleBarrier(c, "spurious", 3)
                await z.enter()
        assert history[0] == "z" and sorted(history[1:]) == ["x", "y"]
        assert x.round == y.round == z.round == 1


async def test_participants_sharing_one_session(etcd_config: Config) -> None:
    """Objects are participants: three on one session (one lease) make a round of 3."""
    async with sessions_of(etcd_config, 1) as (_, (a,)):
        bs = [DoubleBarrier(a, "shared", 3) for _ in range(3)]
        with anyio.fail_after(10):
            for _ in range(2):
                async with anyio.create_task_group() as tg:
                    for b in bs:
                        tg.start_soon(b.enter)
                assert len({b.key for b in bs}) == 3 and {b.round for b in bs} in ({1}, {2})
                async with anyio.create_task_group() as tg:
                    for b in bs:
                        tg.start_soon(b.leave)


async def test_entered_block_and_its_failure(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (t, (a, b)):
        prefix = etcd_config.keyspace.double_barrier_prefix("block")
        x, y = DoubleBarrier(a, "block", 2), DoubleBarrier(b, "block", 2)
        seen: list[int | None] = []

        async def ok(d: DoubleBarrier) -> None:
            async with d.entered() as inside:
                seen.append(inside.round)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ok, x)
                tg.start_soon(ok, y)
        assert seen == [1, 1] and x.round is None

        async def fails() -> None:
            async with x.entered():
                raise KeyError("body")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(y.enter)
                with pytest.raises(KeyError):
                    await fails()  # withdraws: y's leave is not held up by x
                await wait_until(lambda: y.round == 2)
                await y.leave()
        assert (await t.get_prefix(prefix + b"w/")).kvs == []


async def test_lease_loss_while_entering_raises(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (t, (a, b)):
        prefix = etcd_config.keyspace.double_barrier_prefix("lost")
        x = DoubleBarrier(a, "lost", 2)
        caught: list[BaseException] = []

        async def enter() -> None:
            try:
                await x.enter()
            except LeaseLostError as exc:
                caught.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(enter)
                await wait_until(_count(t, prefix))  # x is waiting in enter
                await t.lease_revoke(a.lease.id)
        assert len(caught) == 1 and x.round is None
        # the lost participant does not count: a new one alone does not pass
        y = DoubleBarrier(b, "lost", 2)
        with pytest.raises(TimeoutError), anyio.fail_after(0.5):
            await y.enter()


async def test_lease_loss_while_leaving_raises_and_expiry_releases(etcd_config: Config) -> None:
    """x waits in leave; y's lease is lost: x is released. z waits; its own lease is lost:
    LeaseLostError."""
    async with sessions_of(etcd_config, 3) as (t, (a, b, c)):
        x, y = DoubleBarrier(a, "out", 2), DoubleBarrier(b, "out", 2)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(x.enter)
                tg.start_soon(y.enter)
        history: list[str] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def leave() -> None:
                    await x.leave()
                    history.append("x left")

                tg.start_soon(leave)
                await anyio.sleep(0.3)
                assert history == []
                history.append("revoke y")
                await t.lease_revoke(b.lease.id)
        assert history == ["revoke y", "x left"]
        with pytest.raises(LeaseLostError):
            await y.leave()
        # z waits in leave for w; z's own lease is lost meanwhile
        z, w = DoubleBarrier(c, "out", 2), DoubleBarrier(a, "out", 2)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(z.enter)
                tg.start_soon(w.enter)
        caught: list[BaseException] = []

        async def leave_z() -> None:
            try:
                await z.leave()
            except LeaseLostError as exc:
                caught.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(leave_z)
                await wait_until(lambda: z.round is None)  # its key is deleted: waiting
                await t.lease_revoke(c.lease.id)
        assert len(caught) == 1
        with anyio.fail_after(10):
            await w.leave()


async def test_enter_with_its_member_paused_fails_bounded_then_works(
    etcd_factory, etcd_namespace: str
) -> None:
    """A paused member holds the watch open and answers nothing: ``enter`` does not wait
    for it without bound; once the member answers, the same participant enters."""
    server = etcd_factory()
    cfg = Config(endpoints=(server.endpoint,), namespace=etcd_namespace, request_timeout=0.5)
    async with sessions_of(cfg, 1) as (t, (s,)):
        b = DoubleBarrier(s, "paused", 1)
        server.pause()
        try:
            t0 = anyio.current_time()
            with anyio.fail_after(5), pytest.raises(EtcdError):
                await b.enter()
            assert anyio.current_time() - t0 < 2.0
        finally:
            server.resume()
        assert b.round is None
        with anyio.fail_after(10):
            await b.enter()
            assert b.round is not None
            await b.leave()
        assert (await t.get_prefix(cfg.keyspace.double_barrier_prefix("paused") + b"w/")).kvs == []
