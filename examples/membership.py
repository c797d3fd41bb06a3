"""Membership and the registry: join, host an agent, find it by capability.

Run against any etcd: FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379 python examples/membership.py
"""

import anyio

import foundation_etcd as fe


@fe.clustered("greeter", capabilities=["greet"])
class Greeter:
    """An ordinary class: @clustered only records settings."""

    def greet(self, name: str) -> str:
        return f"hello {name}"


async def main() -> None:
    cfg = fe.Config.from_env()
    async with fe.connect(cfg, node_id="example-node", capacity={"cpu": 2}) as cluster:
        async with cluster.host(Greeter(), "greeter-1"):
            found = await cluster.registry.lookup("greeter-1")  # linearizable
            print("registered:", found.agent_id, "on", found.node_id, "as", found.incarnation)
            await cluster.registry.wait_for((await cluster.transport.status()).revision)
            print("greeters:", [a.agent_id for a in cluster.registry.find("greet")])
            print("nodes:", sorted(cluster.nodes()))
    print("Greeter still works alone:", Greeter().greet("world"))


if __name__ == "__main__":
    anyio.run(main)
