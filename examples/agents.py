"""Spawned agents with state: placed on a node, restored after a move.

Run against any etcd: FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379 python examples/agents.py
This module is also what `foundation-etcd node run --agents examples.agents` hosts.
"""

import anyio

import foundation_etcd as fe


@fe.clustered("example-counter", critical=True, resources={"cpu": 1})
class Counter:
    """Counts, checkpointing its state; restarted elsewhere if its node dies."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def restore_state(self, state: dict[str, int]) -> None:
        self.value = state["value"]

    def get_state(self) -> dict[str, int]:
        return {"value": self.value}

    async def run(self, ctx: fe.AgentRunContext) -> None:
        while True:
            self.value += 1
            await ctx.save_state(self.get_state())
            await anyio.sleep(0.1)


async def main() -> None:
    cfg = fe.Config.from_env()
    async with (
        fe.connect(cfg, node_id="example-a", capacity={"cpu": 4}) as a,
        fe.connect(cfg, node_id="example-b", capacity={"cpu": 4}) as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(a.serve)
        tg.start_soon(b.serve)
        ref = await a.spawn(Counter, "counter-1", args={"start": 10}, placement="pinned:example-a")
        print("placed on", ref.node_id)
        await anyio.sleep(1)
        print("moved:", await a.drain("example-a"))
        await anyio.sleep(1)
        for status in await a.agents():
            print(status.agent_id, status.state, "on", status.node_id)
        await a.despawn("counter-1")
        await a.uncordon("example-a")  # drain left it cordoned: the next run places there
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
