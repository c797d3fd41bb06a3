from contextlib import asynccontextmanager

import anyio
import pytest

from foundation_etcd import Config, Lock, LockBusyError, LockLostError, Session, open_session
from foundation_etcd.lowlevel import Op, open_transport

pytestmark = pytest.mark.etcd


@asynccontextmanager
async def sessions_of(cfg: Config, n: int):
    async with (
        open_transport(cfg) as t,
        open_session(t) as a,
        open_session(t) as b,
        open_session(t) as c,
    ):
        yield [a, b, c][:n]


async def test_mutual_exclusion_and_fifo(etcd_config: Config) -> None:
    """9 tasks over 3 sessions: never two inside, tokens increase, history checked."""
    history: list[tuple[str, str, int]] = []
    inside: set[str] = set()

    async def worker(s: Session, name: str) -> None:
        for _ in range(3):
            async with Lock(s, "m").acquire() as held:
                assert not inside, f"{name} entered while {inside} inside"
                inside.add(name)
                history.append(("enter", name, held.fencing_token))
                await anyio.sleep(0.005)
                history.append(("exit", name, held.fencing_token))
                inside.discard(name)

    async with sessions_of(etcd_config, 3) as ss:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i, s in enumerate(ss):
                    for j in range(3):
                        tg.start_soon(worker, s, f"s{i}w{j}")
    assert len(history) == 54
    for k in range(0, 54, 2):  # strictly alternating enter/exit of the same holder
        assert history[k][0] == "enter" and history[k + 1][0] == "exit"
        assert history[k][1:] == history[k + 1][1:]
    tokens = [tok for ev, _, tok in history if ev == "enter"]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_acquire_nowait(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (a, b):
        prefix = a.config.keyspace.lock_prefix("nw")
        async with Lock(a, "nw").acquire_nowait() as held:
            rev_before = (await a.transport.status()).revision
            with pytest.raises(LockBusyError) as info:
                async with Lock(b, "nw").acquire_nowait():
                    raise AssertionError("body ran without the lock")
            assert info.value.holder_token == held.fencing_token
            # nothing was written by the refused attempt
            assert (await a.transport.status()).revision == rev_before
            with pytest.raises(LockBusyError):  # same process, other task: busy too
                async with Lock(a, "nw").acquire_nowait():
                    pass
        assert (await a.transport.get_prefix(prefix)).kvs == []


async def test_timeout_leaves_no_key_and_body_never_runs(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 2) as (a, b):
        prefix = a.config.keyspace.lock_prefix("to")
        ran = False
        async with Lock(a, "to").acquire():
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    async with Lock(b, "to").acquire():
                        ran = True
            assert [kv.lease for kv in (await a.transport.get_prefix(prefix)).kvs] == [a.lease.id]
        assert not ran


async def test_fenced_write_after_loss(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 1) as (a,):
        k = etcd_config.keyspace.key("guarded")
        kept = []
        with anyio.fail_after(10), pytest.raises(LockLostError):
            async with Lock(a, "f").acquire() as held:
                kept.append(held)
                await held.put(k, b"1")
                await a.transport.delete(held.key)
                await anyio.sleep(10)
        res = await a.transport.txn([kept[0].guard], [Op.put(k, b"late")])
        assert not res.succeeded
        assert (await a.transport.get(k)).value == b"1"


@pytest.mark.once
async def test_thousand_cycles_leak_no_lease(etcd_config: Config) -> None:
    async with sessions_of(etcd_config, 1) as (a,):
        before = set(await a.transport.lease_ids())
        lock = Lock(a, "cycles")
        with anyio.fail_after(60):
            for _ in range(1000):
                async with lock.acquire():
                    pass
        assert set(await a.transport.lease_ids()) == before
        assert (await a.transport.get_prefix(a.config.keyspace.lock_prefix("cycles"))).kvs == []
