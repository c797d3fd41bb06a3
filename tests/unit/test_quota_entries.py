"""Queue entries the library did not write: they may block, they never admit more.

White-box: the two judges of ``_core/admission`` (the reserving transaction's read,
``judge_read``, and the view's per-pool ``Queue``) fed with queues of genuine and crafted
entries, checked against a reference model of the rule and against the safety property
itself.
"""

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation_etcd._core.admission import (
    MAX_RESERVATION_BYTES,
    QUEUE_READ,
    Queue,
    entry_amount,
    judge_read,
    queue_pool,
)
from foundation_etcd._core.amounts import BLOCKING, MAX_AMOUNT
from foundation_etcd.lowlevel import KeyValue

POOL = "cpu"
PREFIX = b"/ns/_system/quotas/t/queue/cpu/"


def genuine(amount: int, pool: str = POOL) -> bytes:
    """A value exactly as ``reserve`` writes it."""
    return json.dumps({"amounts": {pool: amount}, "holder": "n1"}, separators=(",", ":")).encode()


def kv(i: int, value: bytes, version: int = 1) -> KeyValue:
    return KeyValue(PREFIX + b"k%d" % i, value, i, i + version - 1, version, 0)


CRAFTED_VALUES = [
    json.dumps({"amounts": {POOL: -100}}).encode(),
    json.dumps({"amounts": {POOL: 0}}).encode(),
    json.dumps({"amounts": {POOL: 1.0}}).encode(),
    json.dumps({"amounts": {POOL: 0.5}}).encode(),
    json.dumps({"amounts": {POOL: True}}).encode(),
    json.dumps({"amounts": {POOL: "2"}}).encode(),
    json.dumps({"amounts": {POOL: None}}).encode(),
    json.dumps({"amounts": {POOL: MAX_AMOUNT + 1}}).encode(),
    json.dumps({"amounts": {POOL: 10**400}}).encode(),
    b'{"amounts": {"cpu": 1' + b"0" * 5000 + b"}}",  # more digits than int() parses
    json.dumps({"amounts": {"mem": 1}}).encode(),  # another pool's amounts in a cpu key
    json.dumps({"amounts": {POOL: 1, "mem": -5}}).encode(),
    json.dumps({"amounts": {POOL: 1, "bad pool": 1}}).encode(),
    json.dumps({"amounts": {}}).encode(),
    json.dumps({"amounts": [[POOL, 1]]}).encode(),
    json.dumps({"holder": "n1"}).encode(),
    json.dumps([1, 2]).encode(),
    b'{"amounts": {"cpu": NaN}}',
    b'{"amounts": {"cpu": -Infinity}}',
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
    b"\xff\xfe not json",
    b"",
    b"null",
    b'{"amounts": {"cpu": 1}' + b" " * MAX_RESERVATION_BYTES + b"}",  # larger than reserve writes
]


@pytest.mark.parametrize("value", CRAFTED_VALUES, ids=range(len(CRAFTED_VALUES)))
def test_crafted_entries_block(value: bytes) -> None:
    assert entry_amount(kv(1, value), POOL) == BLOCKING


def test_genuine_entries_count_their_amount_and_rewrites_block() -> None:
    assert entry_amount(kv(1, genuine(3)), POOL) == 3
    assert entry_amount(kv(1, genuine(3, "@n1@cpu")), "@n1@cpu") == 3
    # reserve puts each key once: a rewritten key (even to a plausible value) is not its own
    assert entry_amount(kv(1, genuine(1), version=2), POOL) == BLOCKING
    assert entry_amount(kv(1, genuine(3)), "mem") == BLOCKING  # the key's pool is not in it


def test_queue_keys_outside_every_pool_are_ignored() -> None:
    qp = b"/ns/_system/quotas/t/queue/"
    assert queue_pool(qp + b"cpu/x", len(qp)) == "cpu"
    assert queue_pool(qp + b"@n1@cpu/x", len(qp)) == "@n1@cpu"
    assert queue_pool(qp + b"cpu/a/b", len(qp)) == "cpu"  # the same key set as a range read
    for bad in (b"cpu", b"\xff/x", b"bad pool/x", b"_x/y", b"@n1/x", b"/x"):
        assert queue_pool(qp + bad, len(qp)) is None, bad


# -- the rule, as a reference model ---------------------------------------------------------


@dataclass
class Entry:
    value: bytes
    version: int = 1
    amount: int | None = None  # what a library holder takes; None: not the library's

    def kv(self, i: int) -> KeyValue:
        return kv(i, self.value, self.version)


entries = st.one_of(
    st.integers(1, 12).map(lambda a: Entry(genuine(a), amount=a)),
    st.sampled_from(CRAFTED_VALUES[:-3]).map(Entry),
    st.binary(max_size=24).map(Entry),
    st.integers(1, 12).map(lambda a: Entry(genuine(a), version=2)),  # a rewrite
)


def reference_prefix(queue: list[Entry], limit: int) -> int:
    """How many entries the rule admits: the longest genuine prefix that fits the limit."""
    total = 0
    for n, e in enumerate(queue):
        if e.amount is None or e.version != 1 or total + e.amount > limit:
            return n
        total += e.amount
    return len(queue)


@settings(max_examples=400, deadline=None)
@given(st.lists(entries, max_size=80), st.integers(0, 100))
def test_view_and_transaction_admit_exactly_the_rule(queue: list[Entry], limit: int) -> None:
    kvs = [e.kv(i + 1) for i, e in enumerate(queue)]
    q = Queue()
    for x in kvs:
        q.add(x.create_revision, x.key, entry_amount(x, POOL))
    n = reference_prefix(queue, limit)

    # the view: its frontier is the reference prefix, and that prefix fits the limit
    frontier = q.frontier(limit)
    admitted = [e for e, x in zip(queue, kvs, strict=True) if x.create_revision <= frontier]
    assert len(admitted) == n
    assert all(e.amount is not None for e in admitted)
    assert sum(e.amount or 0 for e in admitted) <= limit
    used, _, malformed = q.usage(limit)
    assert used <= limit
    assert malformed == sum(e.amount is None or e.version != 1 for e in queue)

    # the reserving transaction: each genuine entry judged when it was the newest key,
    # from the first min(QUEUE_READ, limit) keys, agrees with the rule or defers
    for i, e in enumerate(queue):
        if e.amount is None or e.version != 1 or not 1 <= e.amount <= limit:
            continue  # reserve writes only amounts it could admit
        read = kvs[: i + 1][: min(QUEUE_READ, limit)]
        verdict, ahead = judge_read(read, POOL, kvs[i].key, limit)
        in_rule = i < reference_prefix(queue[: i + 1], limit)
        if verdict is None:
            assert limit > QUEUE_READ and i >= QUEUE_READ
        else:
            assert verdict == in_rule, (i, verdict, in_rule)
        assert 0 <= ahead <= limit


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), entries),
        st.tuples(st.just("delete"), st.integers(0, 40)),
        st.tuples(st.just("rewrite"), st.integers(0, 40), entries),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 12))
def test_held_reservations_never_exceed_the_limit(program: list[tuple], limit: int) -> None:
    """Holders keep what they were admitted with; crafted appends and rewrites free nothing.

    A delete stands for a release by the holder (the one change that may free room).
    """
    q = Queue()
    live: dict[bytes, tuple[int, Entry]] = {}  # key -> (create revision, entry)
    held: dict[bytes, int] = {}  # key of an admitted library reservation -> its amount
    rev = 0
    for op in program:
        rev += 1
        if op[0] == "append":
            entry = op[1]
            x = entry.kv(rev)
            live[x.key] = (rev, entry)
        else:
            keys = sorted(live)
            if not keys:
                continue
            key = keys[op[1] % len(keys)]
            if op[0] == "delete":
                del live[key]
                held.pop(key, None)
                q.remove(key)
                continue
            created, old = live[key]
            # a rewrite keeps the create revision and bumps the version
            entry = Entry(op[2].value, version=old.version + 1, amount=op[2].amount)
            live[key] = (created, entry)
            x = KeyValue(key, entry.value, created, rev, entry.version, 0)
        q.add(x.create_revision, x.key, entry_amount(x, POOL))
        frontier = q.frontier(limit)
        for key, (created, entry) in live.items():
            if created <= frontier and key not in held:
                assert entry.amount is not None and entry.version == 1, "admitted a crafted entry"
                held[key] = entry.amount
        assert sum(held.values()) <= limit, (held, limit)


@given(
    st.lists(st.sampled_from([1, 2, BLOCKING]), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_keys_of_one_revision_show_the_same_usage_in_any_order(amounts: list[int], rnd) -> None:
    """A crafted transaction's keys, listed (key order) or seen as events (its order)."""
    entries = [(b"k%d" % i, a) for i, a in enumerate(amounts)]
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    one, other = Queue(), Queue()
    one.add(5, b"before", 1)
    other.add(5, b"before", 1)
    for key, amount in entries:
        one.add(7, key, amount)
    for key, amount in shuffled:
        other.add(7, key, amount)
    one.add(9, b"after", 1)
    other.add(9, b"after", 1)
    for limit in (1, 2, 3, 5, 100):
        assert one.usage(limit) == other.usage(limit)
        assert one.sum_through(9) == other.sum_through(9)
