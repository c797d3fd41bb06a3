"""Quotas: reservations that a crashed holder frees by itself.

Run against any etcd: FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379 python examples/quotas.py
"""

import anyio

import foundation_etcd as fe


async def main() -> None:
    cfg = fe.Config.from_env()
    async with fe.connect(cfg, node_id="example-quotas") as cluster:
        await cluster.quotas.set_limit("gpu", 2)  # an administrative write
        async with cluster.quotas.reserve({"gpu": 2}) as r:
            print("reserved", r.amounts, "at revision", r.token)
            try:
                async with cluster.quotas.reserve_nowait({"gpu": 1}):
                    pass
            except fe.QuotaExceededError as exc:
                print("no room:", exc)
        usage = await cluster.quotas.open_usage("gpu")
        print(f"after release: {usage.used} of {usage.limit} used")


if __name__ == "__main__":
    anyio.run(main)
