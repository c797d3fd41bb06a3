"""Leader election with a fencing token: only the current leader's writes are accepted.

Run against any etcd: FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379 python examples/election.py
"""

import anyio

import foundation_etcd as fe
from foundation_etcd.lowlevel import Op


async def main() -> None:
    cfg = fe.Config.from_env()
    async with fe.connect(cfg, node_id="example-leader") as cluster:
        election = cluster.election("example")
        target = cfg.keyspace.key("example", "owner")
        async with election.campaign(b"example-leader") as lead:
            print("leader with fencing token", lead.fencing_token)
            await lead.put(target, b"written by the leader")  # carries the fencing compare
            print("current leader:", await election.leader())
            stale_guard = lead.guard
        # after resigning, a write guarded by the old token is refused by etcd itself
        res = await cluster.transport.txn([stale_guard], [Op.put(target, b"stale")])
        print("stale write accepted?", res.succeeded)
        async with cluster.lock("example-lock").acquire() as held:
            print("holding the lock with token", held.fencing_token)


if __name__ == "__main__":
    anyio.run(main)
