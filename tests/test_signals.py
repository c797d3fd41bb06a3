"""Signals and actions against a real etcd: send, dedupe, bounds, delivery, calls, tools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
import jsonschema
import pytest

import foundation_etcd as fe
from foundation_etcd import Config, connect
from foundation_etcd.testing import wait_until

pytestmark = pytest.mark.etcd


@fe.clustered("sig-counter", subscribe=["orders.*.created", "audit.**"])
class Counter:
    """Counts what it is sent."""

    def __init__(self) -> None:
        self.total = 0
        self.seen: list[str] = []
        self.fail_next = 0

    def get_state(self) -> dict[str, Any]:
        return {"total": self.total, "seen": self.seen}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.total, self.seen = state["total"], list(state["seen"])

    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.total += int((signal.data or {}).get("n", 1))
        self.seen.append(signal.id)
        if signal.type == "poison":
            raise RuntimeError("cannot handle this")
        if signal.type == "forward":
            ctx.send(signal.data["to"], "count", {"n": 1})

    @fe.action
    async def add(self, n: Annotated[int, "how much to add"], note: str = "") -> int:
        """Add ``n`` to the total and return it.

        Args:
            n: ignored here: the Annotated description wins.
            note: a free-form note.
        """
        self.total += n
        return self.total

    @fe.action
    def boom(self, kind: Literal["value", "key"]) -> None:
        """Raise an error of the named kind (the total is changed first, then undone)."""
        self.total += 1000
        if kind == "value":
            raise ValueError("no such value")
        raise KeyError("no such key")


@asynccontextmanager
async def two_nodes(cfg: Config) -> AsyncIterator[tuple[fe.Cluster, fe.Cluster]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(connect(cfg, node_id="sa"))
        b = await stack.enter_async_context(connect(cfg, node_id="sb"))
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(a.serve)
        tg.start_soon(b.serve)
        yield a, b
        tg.cancel_scope.cancel()


def hosted(c: fe.Cluster, agent_id: str) -> Any:
    assert c.runtime is not None
    h = c.runtime.hosted.get(agent_id)
    return h is not None and h.status == "running"


async def state_of(c: fe.Cluster, agent_id: str) -> dict[str, Any]:
    kv = await c.transport.get(c.keyspace.agent_state(agent_id))
    if kv is None:
        return {"total": 0, "seen": []}
    state: dict[str, Any] = json.loads(kv.value)["state"]
    return state


async def test_send_is_durable_idempotent_and_delivered_in_order(etcd_config: Config) -> None:
    async with two_nodes(etcd_config) as (a, b):
        await a.spawn(Counter, "c1", placement="pinned:sb")
        ids = [f"s{i}" for i in range(20)]
        with anyio.fail_after(20):
            for sid in ids:
                r = await a.send("c1", "count", {"n": 1}, signal_id=sid)
                assert not r.duplicate
            again = await a.send("c1", "count", {"n": 1}, signal_id="s3")
            assert again.duplicate
            await wait_until(lambda: hosted(b, "c1"))

            async def done() -> bool:
                return (await state_of(a, "c1"))["total"] == 20

            await wait_until(done)
            st = await state_of(a, "c1")
            assert st["seen"] == ids  # commit order, each once
            # a handled id is remembered: sending it again delivers nothing
            assert (await a.send("c1", "count", {"n": 1}, signal_id="s0")).duplicate
            assert await a.inbox("c1") == []


async def test_send_to_unknown_agent_and_bad_input_fail_before_io(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="lonely") as c:
        with pytest.raises(fe.AgentNotFoundError):
            await c.send("nobody", "count", {})
        with pytest.raises(fe.InvalidIdError):
            await c.send("bad/id", "count", {})
        with pytest.raises(fe.InvalidIdError):
            await c.send("x", "bad type!", {})
        with pytest.raises(fe.SerializationError):
            await c.send("x", "count", {"x": object()})
        with pytest.raises(fe.RequestTooLargeError):
            await c.send("x", "count", "a" * (etcd_config.signal_max_bytes + 1))


async def test_full_inbox_refuses_and_writes_nothing(etcd_config: Config) -> None:
    cfg = etcd_config.with_options(signal_inbox_limit=5)
    async with connect(cfg, node_id="nohost", hosts_agents=True) as c:
        await c.spawn(Counter, "c2")  # placed here, but nobody serves: signals wait
        for i in range(5):
            await c.send("c2", "count", {}, signal_id=f"f{i}")
        before = await c.transport.revision()
        with pytest.raises(fe.InboxFullError) as info:
            await c.send("c2", "count", {}, signal_id="f5")
        assert info.value.waiting == 5 and info.value.limit == 5
        assert await c.transport.revision() == before  # nothing written
        # a second sender with no window learnt yet is refused as well
        async with connect(cfg, node_id="other", hosts_agents=False) as d:
            with pytest.raises(fe.InboxFullError):
                await d.send("c2", "count", {}, signal_id="f6")
        assert [s.id for s in await c.inbox("c2")] == [f"f{i}" for i in range(5)]


async def test_dead_letters_after_failures_and_redrive(etcd_config: Config) -> None:
    cfg = etcd_config.with_options(signal_max_attempts=3)
    async with two_nodes(cfg) as (a, _b):
        await a.spawn(Counter, "c3", placement="pinned:sa")
        with anyio.fail_after(30):
            await a.send("c3", "poison", {"n": 1}, signal_id="p1")
            await a.send("c3", "count", {"n": 1}, signal_id="after")

            async def dead() -> bool:
                return len(await a.dead_letters("c3")) == 1

            await wait_until(dead)
            (letter,) = await a.dead_letters("c3")
            assert letter.signal_id == "p1" and letter.attempts == 3
            assert "RuntimeError" in letter.reason

            async def handled_after() -> bool:
                return (await state_of(a, "c3"))["seen"] == ["after"]

            await wait_until(handled_after)  # the failed handler's effects were undone
            # sending the dead id again is a duplicate; redrive puts it back
            assert (await a.send("c3", "poison", {}, signal_id="p1")).duplicate
            await a.redrive("c3", "p1")

            async def dead_again() -> bool:
                letters = await a.dead_letters("c3")
                return len(letters) == 1 and letters[0].revision > letter.revision

            await wait_until(dead_again)
            with pytest.raises(KeyError):
                await a.redrive("c3", "nope")


async def test_call_results_errors_and_outbox_across_nodes(etcd_config: Config) -> None:
    async with two_nodes(etcd_config) as (a, b):
        await a.spawn(Counter, "c4", placement="pinned:sb")
        await a.spawn(Counter, "c5", placement="pinned:sa")
        with anyio.fail_after(20):
            assert await a.call("c4", "add", {"n": 5}) == 5
            assert await b.call("c4", "add", {"n": 2}) == 7
            with pytest.raises(ValueError, match="no such value") as info:
                await a.call("c4", "boom", {"kind": "value"})
            assert isinstance(info.value, fe.ActionError)
            assert info.value.error_type == "ValueError"
            with pytest.raises(fe.ActionError):
                await a.call("c4", "boom", {"kind": "key"})
            with pytest.raises(fe.ActionError) as bad:
                await a.call("c4", "add", {"m": 1})
            assert bad.value.error_type == "TypeError"
            # a value its parameter's type does not take: refused before the action runs
            with pytest.raises(TypeError, match="argument 'n': expected integer, got string"):
                await a.call("c4", "add", {"n": "5"})
            with pytest.raises(TypeError, match="argument 'note': expected string, got integer"):
                await a.call("c4", "add", {"n": 1, "note": 5})  # would have run and added 1
            with pytest.raises(fe.ActionError) as unknown:
                await a.call("c4", "nope", {})
            assert unknown.value.error_type == "UnknownAction"
            assert await a.call("c4", "add", {"n": 0}) == 7  # failed actions kept no effect
            assert (await state_of(a, "c4"))["total"] == 7  # nor wrote any state
            # the same call id returns the one outcome, not a second run
            assert await a.call("c4", "add", {"n": 1}, call_id="once") == 8
            assert await a.call("c4", "add", {"n": 1}, call_id="once") == 8
            # an emitted signal goes out with the handling
            await a.send("c4", "forward", {"to": "c5"}, signal_id="fw")

            async def forwarded() -> bool:
                return (await state_of(a, "c5"))["total"] == 1

            await wait_until(forwarded)


async def test_calls_share_one_pair_of_watches_per_agent(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls to an agent wait on its two shared prefix watches, closed once idle."""
    monkeypatch.setattr("foundation_etcd._agents.replies.IDLE", 0.3)
    strict = etcd_config.with_options(require_signed_signals=True)  # refuses a's calls
    async with two_nodes(etcd_config) as (a, b), connect(strict, node_id="sc") as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.serve)
            await a.spawn(Counter, "c8", placement="pinned:sb")
            await a.spawn(Counter, "c9", placement="pinned:sb")
            await a.spawn(Counter, "c10", placement="pinned:sc")
            replies, bells = a.signals.replies, a.doorbells
            assert bells is not None
            before = len(bells)
            with anyio.fail_after(20):
                assert await a.call("c8", "add", {"n": 1}) == 1  # a desk for c8
                assert len(replies) == 1 and len(bells) == before + 2
                results: dict[str, list[Any]] = {"many": [], "twin": []}

                async def one(kind: str, call_id: str | None) -> None:
                    results[kind].append(await a.call("c8", "add", {"n": 1}, call_id=call_id))

                async with anyio.create_task_group() as calls:
                    for _ in range(5):
                        calls.start_soon(one, "many", None)
                    for _ in range(2):  # the same id twice at once: one run, one outcome
                        calls.start_soon(one, "twin", "twin")
                outcomes = sorted(results["many"] + results["twin"][:1])
                assert outcomes == [2, 3, 4, 5, 6, 7] and len(set(results["twin"])) == 1
                assert len(replies) == 1 and len(bells) == before + 2  # still the one desk
                assert await b.call("c9", "add", {"n": 3}) == 3  # b's own desks
                assert len(replies) == 1
                with pytest.raises(fe.ActionError) as dead:  # a dead letter, on the dead watch
                    await a.call("c10", "add", {"n": 1})
                assert dead.value.error_type == "DeadLetter"
                assert len(replies) == 2
                # idle: both desks close, and their watches with them
                await wait_until(lambda: len(replies) == 0 and len(bells) == before)
                assert await a.call("c8", "add", {"n": 0}) == 7  # a desk again
                assert (await state_of(a, "c8"))["total"] == 7
            tg.cancel_scope.cancel()


async def test_a_call_whose_reply_was_compacted_while_cut_off_reads_it(
    etcd_config: Config, etcd_endpoints: list[str], fault_proxy_factory: Any
) -> None:
    """The caller is cut off while the reply commits, and etcd compacts past it meanwhile.

    Its shared reply watch cannot resume from where it was (compacted): the doorbells say
    changes may have been missed, and the waiting call reads its keys instead.
    """
    proxy = fault_proxy_factory(etcd_endpoints[0])
    cut = etcd_config.with_options(endpoints=(proxy.endpoint,), request_timeout=2.0)
    async with two_nodes(etcd_config) as (a, _b), connect(cut, node_id="cut") as c:
        await a.spawn(Tiny, "sl", placement="pinned:sb")
        with anyio.fail_after(40):
            assert await c.call("sl", "bump", {"seconds": 0}) == 1  # c's desk is open
            bells = c.doorbells
            assert bells is not None
            before = bells.reconnects
            result: list[int] = []

            async def slow_call() -> None:
                result.append(await c.call("sl", "bump", {"seconds": 2.0}, call_id="late"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)

                async def started() -> bool:  # the send committed: the call is in the inbox
                    return await a.inbox("sl") != []

                await wait_until(started)
                proxy.blackhole()

                async def replied() -> bool:
                    done = a.keyspace.signal_done("sl", "late")
                    return await a.transport.get(done) is not None

                await wait_until(replied)
                for i in range(5):  # later revisions, then compact past the reply
                    await a.transport.put(a.keyspace.key(f"filler-{i}"), b"x")
                await a.transport.compact(await a.transport.revision())
                proxy.pass_()
            assert result == [2]
            assert bells.reconnects > before  # the stream was replaced, the watch re-made
            assert await c.call("sl", "bump", {"seconds": 0}) == 3  # the desk still works


def losing_sends(
    monkeypatch: pytest.MonkeyPatch, c: fe.Cluster, agent_id: str, *, times: int, applied: bool
) -> list[float]:
    """The next ``times`` sends to ``agent_id`` from ``c`` lose their answer (applied or
    not, in etcd); returns when each was made."""
    inbox = c.keyspace.inbox_prefix(agent_id)
    cls: Any = type(c.transport)
    real_txn = cls.txn
    made: list[float] = []

    async def txn(self: Any, compare: Any, success: Any = (), failure: Any = ()) -> Any:
        puts = [getattr(op, "key", b"") for op in success if getattr(op, "value", None)]
        if self is c.transport and len(made) < times and any(k.startswith(inbox) for k in puts):
            made.append(anyio.current_time())
            if applied:
                await real_txn(self, compare, success, failure)
            raise fe.AmbiguousResultError("txn: answer lost (test)", operation="txn")
        return await real_txn(self, compare, success, failure)

    monkeypatch.setattr(cls, "txn", txn)
    return made


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
async def test_a_call_whose_send_lost_its_answer_runs_once(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    """The send's answer is lost (applied or not): the call sends it again, the action runs
    once, and the caller gets its result instead of ``AmbiguousResultError``."""
    async with two_nodes(etcd_config) as (a, _b), connect(etcd_config, node_id="lossy") as c:
        await a.spawn(Counter, "c11", placement="pinned:sb")
        lost = losing_sends(monkeypatch, c, "c11", times=1, applied=applied)
        with anyio.fail_after(20):
            assert await c.call("c11", "add", {"n": 5}, call_id="once") == 5
            assert len(lost) == 1
            assert await a.call("c11", "add", {"n": 0}) == 5  # it ran once


async def test_a_call_whose_sends_keep_losing_their_answers_gives_up(
    etcd_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a deadline, the sends again end after the window: ``AmbiguousResultError``."""
    from foundation_etcd._agents.calls import resend_window

    cfg = etcd_config.with_options(request_timeout=0.3)
    assert resend_window(cfg) == pytest.approx(1.5)
    async with connect(cfg, node_id="lossy2") as c:
        await c.spawn(Counter, "c12")  # nobody serves it: nothing would answer anyway
        sends = losing_sends(monkeypatch, c, "c12", times=10**6, applied=False)
        with anyio.fail_after(10), pytest.raises(fe.AmbiguousResultError):
            await c.call("c12", "add", {"n": 1})
        assert len(sends) > 2 and 1.5 <= sends[-1] - sends[0] < 4, sends


async def test_a_call_cancelled_by_its_task_group_is_no_timeout(etcd_config: Config) -> None:
    """Only the caller's own deadline makes ``CallTimeoutError``; a cancellation stays one."""
    async with connect(etcd_config, node_id="idle2") as c:
        await c.spawn(Counter, "c13")  # nobody serves it
        seen: list[str] = []

        async def caller() -> None:
            try:
                await c.call("c13", "add", {"n": 1})
            except fe.CallTimeoutError:
                seen.append("timeout")
                raise
            except anyio.get_cancelled_exc_class():
                seen.append("cancelled")
                raise

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await wait_until(lambda: c.signals.replies._desks.get("c13") is not None)
                tg.cancel_scope.cancel()
        assert seen == ["cancelled"]
        with pytest.raises(fe.InvalidIdError):  # checked before any watch is opened
            await c.call(None, "add", {})  # type: ignore[arg-type]
        assert None not in c.signals.replies._desks


async def test_call_timeout_says_may_still_run(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="idle") as c:
        await c.spawn(Counter, "c6")  # nobody serves it
        with pytest.raises(fe.CallTimeoutError) as info:
            with anyio.fail_after(0.5):
                await c.call("c6", "add", {"n": 1}, call_id="late")
        assert isinstance(info.value, TimeoutError)
        assert "may still run" in str(info.value)
        assert [s.id for s in await c.inbox("c6")] == ["late"]


async def test_tools_are_valid_json_schema_and_route_across_nodes(etcd_config: Config) -> None:
    async with two_nodes(etcd_config) as (a, _b):
        await a.spawn(Counter, "c7", placement="pinned:sb")
        tools = await a.tools()
        names = {t["name"] for t in tools}
        assert {"c7__add", "c7__boom"} <= names
        for tool in tools:
            jsonschema.Draft202012Validator.check_schema(tool["parameters"])
            assert tool["description"]
        add = next(t for t in tools if t["name"] == "c7__add")
        assert add["parameters"]["required"] == ["n"]
        assert add["parameters"]["properties"]["n"]["description"] == "how much to add"
        jsonschema.validate({"n": 3}, add["parameters"])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"n": "x"}, add["parameters"])
        with anyio.fail_after(20):
            assert await a.call_tool("c7__add", {"n": 3}) == 3


async def test_publish_reaches_matching_subscribers(etcd_config: Config) -> None:
    async with two_nodes(etcd_config) as (a, _b):
        for agent, node in (("p1", "sa"), ("p2", "sb"), ("p3", "sb")):
            await a.spawn(Counter, agent, placement=f"pinned:{node}")
        await a.subscribe("p3", ["billing.**"])  # replaces the declared patterns
        with anyio.fail_after(20):
            r = await a.publish("orders.eu.created", "count", {"n": 1}, signal_id="o1")
            assert sorted(r.delivered) == ["p1", "p2"]
            r2 = await a.publish("orders.eu.created", "count", {"n": 1}, signal_id="o1")
            assert sorted(r2.duplicates) == ["p1", "p2"] and not r2.delivered
            r3 = await a.publish("billing.x.y", "count", {"n": 1})
            assert r3.delivered == ("p3",)
            assert (await a.publish("orders.eu", "count", {})).delivered == ()

            async def all_counted() -> bool:
                totals = [(await state_of(a, x))["total"] for x in ("p1", "p2", "p3")]
                return totals == [1, 1, 1]

            await wait_until(all_counted)


@fe.clustered("sig-bad-state")
class BadState:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def get_state(self) -> dict[str, Any]:
        return {"items": self.items}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.items = list(state["items"])

    def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.items.append(object() if signal.type == "unencodable" else signal.id)


async def test_a_handling_that_cannot_commit_fails_like_a_handler(etcd_config: Config) -> None:
    cfg = etcd_config.with_options(signal_max_attempts=2)
    async with two_nodes(cfg) as (a, _b):
        await a.spawn(BadState, "bs", placement="pinned:sa")
        with anyio.fail_after(20):
            await a.send("bs", "unencodable", None, signal_id="u1")
            await a.send("bs", "fine", None, signal_id="ok1")

            async def settled() -> bool:
                kv = await a.transport.get(a.keyspace.agent_state("bs"))
                return kv is not None and json.loads(kv.value)["state"]["items"] == ["ok1"]

            await wait_until(settled)
            (letter,) = await a.dead_letters("bs")
            assert letter.signal_id == "u1" and "SerializationError" in letter.reason


@fe.clustered("sig-tiny")
class Tiny:
    def __init__(self) -> None:
        self.n = 0

    def get_state(self) -> int:
        return self.n

    def restore_state(self, state: int) -> None:
        self.n = state

    @fe.action
    async def bump(self, seconds: float) -> int:
        """Wait ``seconds`` (a fault can land meanwhile), add one, return the count."""
        await anyio.sleep(seconds)
        self.n += 1
        return self.n

    def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        self.n += 1


@pytest.mark.once
async def test_one_node_serves_many_agents_on_one_watch_stream(etcd_config: Config) -> None:
    count = 300  # 1,000 in scripts/bench.py --only signals (spawning them is the slow part)
    async with connect(etcd_config, node_id="big") as c, anyio.create_task_group() as tg:
        tg.start_soon(c.serve)
        with anyio.fail_after(90):
            for i in range(count):
                await c.spawn(Tiny, f"t{i}")
            await wait_until(
                lambda: (
                    sum(h.status == "running" for h in c.runtime.hosted.values()) == count
                    if c.runtime
                    else False
                )
            )
            assert c.doorbells is not None
            doorbells = c.doorbells  # each deliverer registers after its (threaded) get_state
            await wait_until(lambda: len(doorbells) >= count)
            assert doorbells.reconnects == 0
            for i in (0, count // 2, count - 1):
                await c.send(f"t{i}", "tick", None)

            async def ticked() -> bool:
                for i in (0, count // 2, count - 1):
                    kv = await c.transport.get(c.keyspace.agent_state(f"t{i}"))
                    if kv is None or json.loads(kv.value)["state"] != 1:
                        return False
                return True

            await wait_until(ticked)
        tg.cancel_scope.cancel()


async def test_a_registered_agent_is_reachable_and_handles_signals(etcd_config: Config) -> None:
    async with connect(etcd_config, node_id="host1") as a, connect(etcd_config, node_id="x") as b:
        counter = Counter()
        async with a.host(counter, agent_id="local-1"):
            with anyio.fail_after(20):
                r = await b.send("local-1", "count", {"n": 2}, signal_id="l1")
                assert not r.duplicate
                await wait_until(lambda: counter.total == 2)
                assert await b.call("local-1", "add", {"n": 3}) == 5
                assert (await state_of(b, "local-1"))["total"] == 5
        with pytest.raises(fe.AgentNotFoundError):
            await b.send("never-there", "count", {})


async def test_crafted_inbox_entries_go_to_dead_letters_and_delivery_goes_on(
    etcd_config: Config,
) -> None:
    async with two_nodes(etcd_config) as (a, _b):
        await a.spawn(Counter, "cr", placement="pinned:sa")
        ks = a.keyspace
        prefix = ks.inbox_prefix("cr")
        marker = ks.signal_inflight("cr")
        with anyio.fail_after(20):
            await a.transport.put(prefix + b"junk", b"not json")  # another client's doing
            await a.transport.put(prefix + b"bad id!", b"{}")
            await a.transport.put(prefix + b"\xff\xfe", b"[]")
            forged = json.dumps(
                {"id": "other", "type": "count", "source": "x", "subject": "cr", "time": 0}
            )
            await a.transport.put(prefix + b"forged", forged.encode())
            await a.transport.put(marker, b'{"rev": "x", "attempt": "many"}')
            await a.send("cr", "count", {"n": 1}, signal_id="real")

            async def handled() -> bool:
                return (await state_of(a, "cr"))["seen"] == ["real"]

            await wait_until(handled)

            async def four_dead() -> bool:
                return len(await a.dead_letters("cr")) == 4

            await wait_until(four_dead)
            reasons = sorted(d.reason for d in await a.dead_letters("cr"))
            assert reasons.count("undecodable") == 3
            assert "envelope does not match its key" in reasons
            assert await a.inbox("cr") == []


async def test_a_respawned_agent_still_refuses_ids_its_restored_state_holds(
    etcd_config: Config,
) -> None:
    async with two_nodes(etcd_config) as (a, _b):
        await a.spawn(Counter, "rs", placement="pinned:sa")
        with anyio.fail_after(30):
            await a.send("rs", "count", {"n": 1}, signal_id="once")

            async def counted() -> bool:
                return (await state_of(a, "rs"))["total"] == 1

            await wait_until(counted)
            await a.despawn("rs")
            await wait_until(lambda: a.runtime is not None and "rs" not in a.runtime.hosted)
            await a.spawn(Counter, "rs", placement="pinned:sa")
            assert (await a.send("rs", "count", {"n": 1}, signal_id="once")).duplicate
            await a.send("rs", "count", {"n": 1}, signal_id="twice")

            async def both() -> bool:
                return (await state_of(a, "rs"))["seen"] == ["once", "twice"]

            await wait_until(both)


@pytest.mark.parametrize("retention", [60, 600])
async def test_done_records_live_the_whole_retention(etcd_config: Config, retention: int) -> None:
    """The last record put under a retention lease still has ``retention`` seconds left."""
    import time

    from foundation_etcd._agents.handlers import RetentionLease
    from foundation_etcd.lowlevel import open_transport

    async with open_transport(etcd_config) as t:
        leases = RetentionLease(t, retention)
        lease = await leases.get()
        info = await t.lease_time_to_live(lease)
        use_left = leases._until - time.monotonic()  # records still go under it this long
        assert 0 < use_left <= retention / 24
        # etcd rounds the TTL down to whole seconds: one second of slack
        assert info.ttl - use_left >= retention - 1, (info, use_left)
        assert info.granted_ttl <= retention * 25 / 24 + 1
        await t.lease_revoke(lease)


@fe.clustered("bound-sink")
class BoundSink:
    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        pass


async def test_the_inbox_bound_holds_after_a_foreign_entry_is_dead_lettered(
    etcd_config: Config,
) -> None:
    """Dead-lettering an entry no ``send`` counted in does not count one out."""
    cfg = etcd_config.with_options(signal_inbox_limit=2)
    ks = cfg.keyspace
    async with connect(cfg, node_id="host") as a, connect(cfg, node_id="sender") as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.serve)
            await a.spawn(BoundSink, "sink", placement="pinned:host")
            for junk in (b"not a signal", json.dumps({"id": "other", "type": "t"}).encode()):
                await a.transport.put(ks.inbox("sink", f"junk-{len(junk)}"), junk)

            async def both_dead() -> bool:
                return len(await s.dead_letters("sink")) == 2

            with anyio.fail_after(10):
                await wait_until(both_dead)
            tg.cancel_scope.cancel()  # the node stops hosting: signals now wait
        accepted = []
        for i in range(4):
            try:
                await s.send("sink", "t", {"i": i}, signal_id=f"s{i}")
                accepted.append(i)
            except fe.InboxFullError:
                pass
        assert accepted == [0, 1]
        assert [x.id for x in await s.inbox("sink")] == ["s0", "s1"]


@fe.clustered("big-news", subscribe=["news.**"])
class NewsReader:
    async def handle_signal(self, signal: fe.Signal, ctx: fe.SignalContext) -> None:
        pass


async def test_publish_of_large_signals_to_many_subscribers_is_batched_by_size(
    etcd_config: Config,
) -> None:
    """30 signals of 60 KB are within each one's limit, not within one etcd request."""
    async with connect(etcd_config, node_id="n", hosts_agents=False) as c:
        async with connect(etcd_config, node_id="host") as h:
            for i in range(30):
                await h.spawn(NewsReader, f"reader-{i:02d}")
        data = {"blob": "x" * 60_000}
        res = await c.publish("news.big", "news", data, signal_id="p1")
        assert sorted(res.delivered) == [f"reader-{i:02d}" for i in range(30)]
        assert (await c.publish("news.big", "news", data, signal_id="p1")).duplicates


@pytest.mark.parametrize(
    "bad",
    [{"type": "bad type!"}, {"data": {"x": float("nan")}}, {"signal_id": ""}],
    ids=["type", "nan", "empty-id"],
)
async def test_a_bad_publish_is_refused_before_anything_is_read(
    etcd_config: Config, bad: dict[str, Any]
) -> None:
    async with connect(etcd_config, node_id="n", hosts_agents=False) as c:
        args: dict[str, Any] = {"type": "t", "data": None, **bad}
        with pytest.raises((fe.InvalidIdError, fe.SerializationError, ValueError)):
            await c.publish("nobody.listens", args.pop("type"), args.pop("data"), **args)
        before = await c.transport.revision()
        with pytest.raises(ValueError, match="expires_in"):  # True is no number of seconds
            await c.send("someone", "t", None, expires_in=True)
        assert await c.transport.revision() == before


async def test_an_inbox_listing_says_how_many_entries_are_no_signal(
    etcd_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    ks = etcd_config.keyspace
    async with connect(etcd_config, node_id="n", hosts_agents=False) as c:
        await c.transport.put(ks.inbox("quiet", "junk-1"), b"not a signal")
        await c.transport.put(ks.inbox("quiet", "junk-2"), b"[]")
        with caplog.at_level("WARNING", logger="foundation_etcd.signals"):
            assert await c.inbox("quiet") == []
        assert "2 of 2 entries are no signal" in caplog.text, caplog.text


async def test_redriving_a_dead_letter_with_no_readable_signal_says_so(
    etcd_config: Config,
) -> None:
    ks = etcd_config.keyspace
    async with connect(etcd_config, node_id="n", hosts_agents=False) as c:
        await c.transport.put(ks.dead_letter("quiet", "d1"), b"not a dead letter")
        with pytest.raises(fe.SignalError, match="no readable signal") as info:
            await c.redrive("quiet", "d1")
        assert "delete it with etcdctl" in str(info.value)


async def test_an_inbox_entry_put_again_after_its_id_was_handled_is_never_applied(
    etcd_config: Config,
) -> None:
    """Another client puts a handled signal's exact bytes back (a replay): no second effect."""
    ks = etcd_config.keyspace
    async with connect(etcd_config, node_id="host", hosts_agents=True) as a:
        await a.spawn(Counter, "c1", placement="pinned:host")
        await a.send("c1", "count", {"n": 5}, signal_id="pay1")
        original = await a.transport.get(ks.inbox("c1", "pay1"))  # nobody serves yet
        assert original is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.serve)

            async def handled() -> bool:
                return (await state_of(a, "c1"))["seen"] == ["pay1"]

            async def dead() -> bool:
                return [d.signal_id for d in await a.dead_letters("c1")] == ["pay1"]

            with anyio.fail_after(10):
                await wait_until(handled)
                await a.transport.put(ks.inbox("c1", "pay1"), original.value)  # the replay
                await wait_until(dead)
            st = await state_of(a, "c1")
            assert st == {"total": 5, "seen": ["pay1"]}, st  # once
            assert a.runtime is not None
            agent = a.runtime.hosted["c1"]  # and in memory too (restored after the refusal)
            assert agent.status == "running"
            (letter,) = await a.dead_letters("c1")
            assert "handled already" in letter.reason
            await a.send("c1", "count", {"n": 1}, signal_id="next")  # it goes on, once each

            async def next_handled() -> bool:
                return (await state_of(a, "c1"))["seen"] == ["pay1", "next"]

            with anyio.fail_after(10):
                await wait_until(next_handled)
            assert (await state_of(a, "c1"))["total"] == 6
            tg.cancel_scope.cancel()
